"""Files whose structure is wrong in ways a type check catches (issue 15, class 2).

Every config LivePhoto reads is checked against a declared schema (``loading/schema.py``,
``loading/folder_configs.py``, ``config.SCHEMA``, ``tokenizer.TOKENIZER_CONFIG``) and every JSON text is
parsed with a depth limit. The first tests hold each case the issue reported; the hypothesis tests build
valid configs, headers and vocabularies and break their structure (a list for a number, a number for a
list, text for a bool, null, nesting, huge numbers, NaN, zero and negative sizes, wrong-rank shapes), and
assert that every reader either accepts the file or refuses it with a LivePhotoError.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livephoto_core.config import SCHEMA as LIVEPHOTO_SCHEMA
from livephoto_core.config import LivePhotoConfig
from livephoto_core.errors import LivePhotoError, ModelFileError
from livephoto_core.loading.assemble import DEMO_MODEL_DIR
from livephoto_core.loading.checkpoint import read_livephoto_config
from livephoto_core.loading.detect import detect_path
from livephoto_core.loading.folder_configs import SCHEDULER, TEXT_ENCODER, VAE, read_config
from livephoto_core.loading.schema import MAX_JSON_DEPTH, Int, List, Schema, expect_shape, json_depth_exceeds, parse_json
from livephoto_core.loading.sd15 import infer_text_encoder_config, infer_unet_config, infer_vae_config, shipped_config
from livephoto_core.loading.tokenizer import load_clip_tokenizer


def fuzz(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def write_safetensors(path: Path, shapes: dict[str, list[int]], metadata: dict[str, str] | None = None,
                      raw_header: str | None = None) -> Path:
    """A .safetensors of F32 zeros with these shapes (or exactly ``raw_header`` with no data)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4
        for n in shape:
            size *= n
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = (raw_header if raw_header is not None else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * (0 if raw_header is not None else offset))
    return path


def refused_or_read(read, *args) -> str:
    try:
        read(*args)
    except LivePhotoError:
        return "refused"
    return "read"


def demo_config() -> dict:
    return json.loads(LivePhotoConfig().to_json())


# --- the facility ------------------------------------------------------------------------------------


def test_depth_is_counted_outside_strings_and_the_limit_is_exact():
    assert not json_depth_exceeds("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    assert json_depth_exceeds("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    brackets_in_text = json.dumps({"a": "[" * 1000 + '\\"{' * 1000})
    assert not json_depth_exceeds(brackets_in_text)
    assert json.loads(brackets_in_text)  # the text really is valid JSON with those brackets inside a string


def test_a_million_brackets_are_refused_quickly_without_recursion():
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match=f"nests arrays or objects more than {MAX_JSON_DEPTH} deep"):
        parse_json("[" * 10**6, "deep.json")
    assert time.perf_counter() - start < 2


def test_numbers_beyond_int_conversion_are_invalid_json_not_a_value_error():
    with pytest.raises(ModelFileError, match="big.json is not valid JSON"):
        parse_json("9" * 5000, "big.json")


def test_a_schema_error_names_the_file_the_field_what_was_found_what_is_expected_and_the_fix():
    schema = Schema("the test config", {"sizes": List(Int(1, 8), 1, 4)}, fix="rewrite it")
    with pytest.raises(ModelFileError) as error:
        schema.check({"sizes": [1, 2, "3"]}, "folder/config.json")
    assert str(error.value) == (
        "folder/config.json: the test config field 'sizes[2]' is \"3\"; expected a whole number from 1 to 8; rewrite it"
    )
    assert schema.check({"sizes": [1], "other": object()}, "x") == {"sizes": [1]}  # undeclared fields dropped


@pytest.mark.parametrize("shape", [(), (4,), (4, 4, 3), (4, 0, 3, 3)])
def test_expect_shape_refuses_a_wrong_rank_or_an_empty_dimension(shape):
    with pytest.raises(ModelFileError, match="'conv.weight' has shape .* 4 dimensions, none 0"):
        expect_shape({"conv.weight": shape}, "conv.weight", 4)
    assert expect_shape({"conv.weight": (4, 4, 3, 3)}, "conv.weight", 4) == (4, 4, 3, 3)


def test_every_field_of_the_livephoto_config_is_declared():
    assert set(LIVEPHOTO_SCHEMA.fields) == set(demo_config())


# --- the cases of the issue ----------------------------------------------------------------------------


def test_deep_safetensors_header_and_embedded_config_are_refused(tmp_path):
    deep = write_safetensors(tmp_path / "deep.safetensors", {}, raw_header='{"a": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ModelFileError, match="the header of deep.safetensors nests .* more than 64 deep"):
        detect_path(deep)
    config = '{"format_version": 1, "extra": ' + "[" * 5000 + "]" * 5000 + "}"
    embedded = write_safetensors(tmp_path / "embedded.safetensors", {"x": [1]}, {"livephoto_config": config})
    assert detect_path(embedded).description == "LivePhoto checkpoint with an unreadable config"
    with pytest.raises(ModelFileError, match="embedded.safetensors: the LivePhoto config nests"):
        read_livephoto_config(embedded)


@pytest.mark.parametrize("shapes", [
    {"model.diffusion_model.input_blocks.0.0.weight": [320]},  # detection reads in_channels = shape[1]
    {"conv_in.weight": [], "time_embedding.linear_1.weight": [4, 4]},
    {"embeddings.cls_token": [1, 1, 8], "encoder.layer.0.layer_scale1.lambda1": [8],
     "embeddings.patch_embeddings.projection.weight": [8, 3], "embeddings.position_embeddings": [1, 5, 8]},
    {"down_blocks.0.motion_modules.0.norm.weight": []},
    {"encoder.conv_in.weight": [4, 3, 3, 3], "decoder.conv_in.weight": [4, 4, 3, 3], "post_quant_conv.weight": [4]},
    {"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
     "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320]},
], ids=["ldm-unet", "diffusers-unet", "dinov2", "motion", "vae", "context"])
def test_shapes_of_the_wrong_rank_where_detection_indexes_them_are_refused(tmp_path, shapes):
    path = write_safetensors(tmp_path / "rank.safetensors", shapes)
    with pytest.raises(ModelFileError, match="rank.safetensors: tensor .* has shape"):
        detect_path(path)


def folder_with_config(folder: Path, config: dict, name: str = "config.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(config))
    return folder


def dinov2_config() -> dict:
    return json.loads((DEMO_MODEL_DIR / "dinov2" / "config.json").read_text())


def motion_config() -> dict:
    return {"_class_name": "MotionAdapter", "block_out_channels": [32, 64], "motion_max_seq_length": 32,
            "use_motion_mid_block": True, "motion_layers_per_block": 1, "motion_num_attention_heads": 8,
            "motion_norm_num_groups": 32}


def pipeline_folder(folder: Path, unet: dict | None = None, scheduler: dict | None = None) -> Path:
    base = DEMO_MODEL_DIR / "base"
    folder_with_config(folder / "unet", unet or json.loads((base / "unet" / "config.json").read_text()))
    folder_with_config(folder / "scheduler", scheduler or shipped_config("scheduler"), "scheduler_config.json")
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    return folder


@pytest.mark.parametrize("kind, field, value, expected", [
    ("dinov2", "hidden_size", [768], "a whole number from 1 to 16384"),
    ("dinov2", "patch_size", 0, "a whole number from 1 to 4096"),
    ("motion", "block_out_channels", 320, "a list of 1 to 8 items"),
    ("motion", "motion_max_seq_length", "32", "a whole number from 1 to 4096"),
    ("unet", "cross_attention_dim", [], "null or a whole number from 1 to 16384 or a list of 1 to 8 items"),
    ("unet", "in_channels", 4.5, "a whole number from 1 to 1024"),
    ("unet", "use_linear_projection", "false", "true or false"),
], ids=lambda value: str(value))
def test_model_folder_config_fields_of_the_wrong_type_are_refused(tmp_path, kind, field, value, expected):
    if kind == "unet":
        unet = json.loads((DEMO_MODEL_DIR / "base" / "unet" / "config.json").read_text())
        folder = pipeline_folder(tmp_path / "model", unet={**unet, field: value})
    else:
        config = dinov2_config() if kind == "dinov2" else motion_config()
        folder = folder_with_config(tmp_path / "model", {**config, field: value})
    with pytest.raises(ModelFileError, match=f"config.json: the .* config field '{field}' is .*; expected {expected}"):
        detect_path(folder)


@pytest.mark.parametrize("schedule", ["sigmoid", "exp", "cosine", 3])
def test_an_unknown_beta_schedule_is_refused_when_the_base_is_read(tmp_path, schedule):
    folder = pipeline_folder(tmp_path / "model", scheduler={**shipped_config("scheduler"), "beta_schedule": schedule})
    with pytest.raises(ModelFileError, match="scheduler_config.json: the scheduler config field 'beta_schedule' is .*; "
                                             "expected one of \"linear\", \"scaled_linear\", \"squaredcos_cap_v2\""):
        detect_path(folder)


@pytest.mark.parametrize("field, value, match", [
    ("beta_end", 0.0001, "beta_start 0.00085 is not below beta_end 0.0001"),
    ("num_train_timesteps", 10, "'num_train_timesteps' is 10; expected a whole number from 1000"),
    ("timestep_spacing", "random", "'timestep_spacing' is \"random\""),
    ("beta_start", float("nan"), "'beta_start' is NaN; expected a finite number above 0"),
])
def test_scheduler_numbers_are_finite_and_ranged(tmp_path, field, value, match):
    path = folder_with_config(tmp_path / "scheduler", {**shipped_config("scheduler"), field: value},
                              "scheduler_config.json") / "scheduler_config.json"
    with pytest.raises(ModelFileError, match=match):
        read_config(path, SCHEDULER)


def tokenizer_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DEMO_MODEL_DIR / "base" / "tokenizer", tmp_path / "tokenizer"))


def demo_vocab() -> dict:
    return json.loads((DEMO_MODEL_DIR / "base" / "tokenizer" / "vocab.json").read_text())


@pytest.mark.parametrize("vocab, match", [
    (["a", "b"], "vocab.json does not hold a JSON object"),
    ({"a": "1"}, "token 'a' has id \"1\""),
    ({**demo_vocab(), "zzz": 5}, "share the id 5"),
    ({**demo_vocab(), "zzz": -1}, "token 'zzz' has id -1"),
    ({**demo_vocab(), "zzz": {"id": 1}}, "token 'zzz' has id {\"id\": 1}"),
    ({k: v for k, v in demo_vocab().items() if k != "<|endoftext|>"}, "lacks the special token '<|endoftext|>'"),
], ids=["list", "text-id", "duplicate", "negative", "object", "no-end-token"])
def test_a_malformed_vocab_is_refused_naming_the_entry(tmp_path, vocab, match):
    folder = tokenizer_copy(tmp_path)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ModelFileError, match=match):
        load_clip_tokenizer(folder)


@pytest.mark.parametrize("merges", ["#version: 0.2\na r x\n", "#version: 0.2\nar\n", "#version: 0.2\nq\u00e9 zz\n"])
def test_a_malformed_merges_file_is_refused_naming_the_line(tmp_path, merges):
    folder = tokenizer_copy(tmp_path)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    with pytest.raises(ModelFileError, match="merges.txt line 2 is"):
        load_clip_tokenizer(folder)


@pytest.mark.parametrize("field, value", [("model_max_length", [77]), ("bos_token", 5), ("eos_token", {"x": 1})])
def test_a_tokenizer_config_field_of_the_wrong_type_is_refused(tmp_path, field, value):
    folder = tokenizer_copy(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ModelFileError, match=f"the tokenizer config field '{field}'"):
        load_clip_tokenizer(folder)


@pytest.mark.parametrize("field, value, match", [
    ("dinov2_patch_size", 0, "'dinov2_patch_size' is 0; expected a whole number from 1"),
    ("fps", 0, "'fps' is 0; expected a whole number from 1 to 60"),
    ("fps", -8, "'fps' is -8"),
    ("fps", 8.5, "'fps' is 8.5"),
    ("num_frames", [8], r"'num_frames' is \[8\] \(a list\)"),
    ("unet_block_out_channels", 320, "'unet_block_out_channels' is 320; expected a list"),
    ("text_film", "yes", "'text_film' is \"yes\"; expected true or false"),
    ("reweighter_heads", 7, "7 reweighter heads do not divide width 768"),
    ("height", 260, "size 256x260 is not a multiple of 8"),
])
def test_checkpoint_config_zero_sizes_and_wrong_types_are_refused_at_read_time(tmp_path, field, value, match):
    path = write_safetensors(tmp_path / "bad.safetensors", {"x": [1]},
                             {"livephoto_config": json.dumps({**demo_config(), field: value})})
    with pytest.raises(ModelFileError, match=f"bad.safetensors: .*{match}"):
        read_livephoto_config(path)


@pytest.mark.parametrize("infer, shapes, match", [
    (infer_text_encoder_config, {"embeddings.token_embedding.weight": [10, 64], "encoder.layers.0.mlp.fc1.weight":
                                 [128, 64], "embeddings.position_embedding.weight": [16, 64]},
     "'max_position_embeddings' is 16; expected a whole number from 77"),
    (infer_vae_config, {"encoder.conv_in.weight": [8, 3, 3, 3], "decoder.conv_out.weight": [3, 8, 3, 3],
                        "encoder.down.0.block.0.conv2.weight": [8, 8, 3, 3], "decoder.conv_in.weight": [8, 4, 3, 3]},
     "32 norm groups do not divide the block width 8"),
], ids=["text-encoder", "vae"])
def test_configs_read_from_a_single_files_shapes_go_through_the_same_schemas(infer, shapes, match):
    schema = TEXT_ENCODER if infer is infer_text_encoder_config else VAE
    with pytest.raises(ModelFileError, match=match):
        schema.check(infer(shapes), "file")


# --- structure-aware fuzzing ---------------------------------------------------------------------------

# What a field of the wrong structure may hold instead: each kind the issue lists.
hostile = st.one_of(
    st.none(), st.booleans(), st.text(max_size=8), st.sampled_from(["1", "true", "null", ""]),
    st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 1, 2**31, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), 0.5, -0.0]),
    st.lists(st.integers(-2, 2**20), max_size=4), st.lists(st.none() | st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4), max_size=3),
    st.integers(1, 3 * MAX_JSON_DEPTH).map(lambda depth: json.loads("[" * depth + "]" * depth)),
)


@st.composite
def mutated(draw, config: dict, extra_keys: tuple[str, ...] = ()) -> dict:
    """``config`` with one to three fields replaced by a hostile value, dropped, or added."""
    config = json.loads(json.dumps(config))
    keys = sorted(config) + list(extra_keys)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(keys))
        if draw(st.integers(0, 5)) == 0:
            config.pop(key, None)
        else:
            config[key] = draw(hostile)
    return config


def test_fuzz_livephoto_config(tmp_path):
    outcomes = []

    @fuzz(200)
    @given(config=mutated(demo_config()))
    def run(config):
        text = json.dumps(config)  # NaN and Infinity too: Python writes them, so a file may hold them
        outcomes.append(refused_or_read(LivePhotoConfig.from_json, text, "fuzz.safetensors"))

    run()
    assert "refused" in outcomes


@pytest.mark.parametrize("kind", ["dinov2", "motion", "unet", "scheduler", "vae"])
def test_fuzz_model_folder_configs(tmp_path, kind):
    base = DEMO_MODEL_DIR / "base"
    valid = {
        "dinov2": dinov2_config(),
        "motion": motion_config(),
        "unet": json.loads((base / "unet" / "config.json").read_text()),
        "scheduler": json.loads((base / "scheduler" / "scheduler_config.json").read_text()),
        "vae": json.loads((base / "vae" / "config.json").read_text()),
    }[kind]
    outcomes = []

    @fuzz(150)
    @given(config=mutated(valid, extra_keys=("cross_attention_dim", "trained_betas")))
    def run(config):
        folder = tmp_path / "model"
        shutil.rmtree(folder, ignore_errors=True)
        if kind == "unet":
            pipeline_folder(folder, unet=config)
        elif kind == "scheduler":
            pipeline_folder(folder, scheduler=config)
        elif kind == "vae":
            folder_with_config(folder, {**config, "_class_name": "AutoencoderKL"})
        else:
            folder_with_config(folder, config)
        outcomes.append(refused_or_read(detect_path, folder))
        if kind in ("scheduler", "vae"):  # what load_sd15 reads of a pipeline folder
            file = folder / ("scheduler/scheduler_config.json" if kind == "scheduler" else "config.json")
            outcomes.append(refused_or_read(read_config, file, SCHEDULER if kind == "scheduler" else VAE))

    run()
    assert "refused" in outcomes and "read" in outcomes


# The tensors each detector and single-file config reader indexes, in families as real files hold them.
FAMILIES = {
    "ldm": {"model.diffusion_model.input_blocks.0.0.weight": [8, 4, 3, 3], "model.diffusion_model.out.2.weight":
            [4, 8, 3, 3], "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [8, 16],
            "model.diffusion_model.input_blocks.1.1.proj_in.weight": [8, 8, 1, 1]},
    "diffusers_unet": {"conv_in.weight": [8, 4, 3, 3], "time_embedding.linear_1.weight": [8, 8],
                       "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": [8, 16]},
    "dinov2": {"embeddings.cls_token": [1, 1, 8], "encoder.layer.0.layer_scale1.lambda1": [8],
               "embeddings.patch_embeddings.projection.weight": [8, 3, 2, 2],
               "embeddings.position_embeddings": [1, 5, 8], "embeddings.register_tokens": [1, 4, 8]},
    "dinov2_facebook": {"cls_token": [1, 1, 8], "blocks.0.ls1.gamma": [8], "patch_embed.proj.weight": [8, 3, 2, 2],
                        "pos_embed": [1, 5, 8]},
    "motion": {"down_blocks.0.motion_modules.0.temporal_transformer.norm.weight": [8],
               "down_blocks.1.motion_modules.0.temporal_transformer.norm.weight": [16],
               "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0"
               ".pos_encoder.pe": [1, 24, 8]},
    "vae": {"first_stage_model.encoder.conv_in.weight": [8, 3, 3, 3],
            "first_stage_model.decoder.conv_in.weight": [8, 4, 3, 3],
            "first_stage_model.post_quant_conv.weight": [4, 4, 1, 1]},
    "lora": {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 768]},
    "clip": {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [10, 8],
             "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": [77, 8],
             "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight": [16, 8]},
}
shape = st.lists(st.integers(0, 3), max_size=5)


@st.composite
def reshaped(draw) -> dict[str, list[int]]:
    """A family's tensors, some of them given a random shape of rank 0 to 5 with dimensions 0 to 3."""
    names = draw(st.lists(st.sampled_from(sorted(FAMILIES)), min_size=1, max_size=2, unique=True))
    shapes = {key: value for name in names for key, value in FAMILIES[name].items()}
    for key in draw(st.lists(st.sampled_from(sorted(shapes)), min_size=1, max_size=3)):
        shapes[key] = draw(shape)
    return shapes


def test_fuzz_shapes_where_detection_and_the_single_file_readers_index_them(tmp_path):
    outcomes = []

    @fuzz(200)
    @given(shapes=reshaped())
    def run(shapes):
        path = write_safetensors(tmp_path / "shapes.safetensors", shapes)
        outcomes.append(refused_or_read(detect_path, path))
        # The configs a single file's shapes give, as the loaders read them (they turn a layout they cannot map,
        # a KeyError or ValueError, into a ModelFileError of their own).
        for prefix, infer, schema in (
            ("model.diffusion_model.", infer_unet_config, None),
            ("first_stage_model.", infer_vae_config, VAE),
            ("cond_stage_model.transformer.text_model.", infer_text_encoder_config, TEXT_ENCODER),
        ):
            inner = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
            try:
                config = infer(inner)
            except (KeyError, ValueError, StopIteration) as layout:
                assert not isinstance(layout, (TypeError, IndexError))
                continue
            except LivePhotoError:
                continue
            if schema is not None:
                refused_or_read(schema.check, config, "fuzz")

    run()
    assert "refused" in outcomes and "read" in outcomes


@st.composite
def broken_vocab(draw) -> dict:
    vocab = demo_vocab()
    kind = draw(st.sampled_from(["value", "drop", "add", "whole"]))
    if kind == "value":
        vocab[draw(st.sampled_from(sorted(vocab)))] = draw(hostile)
    elif kind == "drop":
        del vocab[draw(st.sampled_from(["<|startoftext|>", "<|endoftext|>", "a</w>", "a", "r"]))]
    elif kind == "add":
        vocab[draw(st.text(max_size=6))] = draw(hostile | st.integers(0, 700))
    else:
        return draw(hostile)
    return vocab


@pytest.mark.slow
def test_fuzz_tokenizer_files(tmp_path):
    folder = tokenizer_copy(tmp_path)
    valid_merges = (folder / "merges.txt").read_text()
    outcomes = []

    @fuzz(120)
    @given(vocab=broken_vocab(), merges=st.one_of(
        st.just(valid_merges),
        st.lists(st.text(alphabet="ar o</w>\u00e9 ", max_size=8), max_size=6).map(
            lambda lines: "#version: 0.2\n" + "\n".join(lines))))
    def run(vocab, merges):
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text(merges, encoding="utf-8")
        try:
            tokenizer = load_clip_tokenizer(folder)
        except LivePhotoError:
            outcomes.append("refused")
            return
        tokenizer("a red circle moves left")  # what a render does first with it
        outcomes.append("read")

    run()
    assert "refused" in outcomes and "read" in outcomes
