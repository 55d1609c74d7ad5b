"""SD-1.5 from a single LDM file or a diffusers folder, checked against the models it was written from
and against diffusers' own from_single_file."""

import hashlib
import json
import time

import pytest
import torch
from livephoto_core.testing.ldm_layout import sd15_to_ldm, synthetic_clip_bpe, write_tiny_sd15_file
from safetensors.torch import save_file
from livephoto_core.testing.tiny import TinySD15, randomize_, tiny_sd15_models

from livephoto_core.errors import ModelFileError
from livephoto_core.loading.files import load_state_dict
from livephoto_core.loading.folder_configs import SCHEDULER
from livephoto_core.loading.sd15 import (
    infer_text_encoder_config,
    infer_unet_config,
    infer_vae_config,
    load_sd15,
    shipped_config,
    unet_from_ldm,
)
from livephoto_core.loading.tokenizer import clip_vocab_and_merges

# Different memory alignment of loaded tensors changes float summation order in oneDNN; nothing more.
ATOL = 1e-5


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd15") / "tiny.safetensors"
    return path, write_tiny_sd15_file(path, seed=3)


def _assert_same_outputs(loaded, source, atol=ATOL, sample_size=8, text_width=64, vocab=1000):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, sample_size, sample_size, generator=generator)
    context = torch.randn(2, 7, text_width, generator=generator)
    image = torch.rand(1, 3, 8 * sample_size, 8 * sample_size, generator=generator) * 2 - 1
    ids = torch.randint(0, vocab, (1, 77), generator=generator)
    with torch.no_grad():
        for timestep in (1, 500, 999):
            assert torch.allclose(
                loaded.unet(latents, timestep, context).sample,
                source.unet(latents, timestep, context).sample,
                atol=atol,
                rtol=0,
            )
        assert torch.allclose(
            loaded.vae.encode(image).latent_dist.mean, source.vae.encode(image).latent_dist.mean, atol=atol, rtol=0
        )
        assert torch.allclose(
            loaded.vae.decode(latents[:1]).sample, source.vae.decode(latents[:1]).sample, atol=atol, rtol=0
        )
        assert torch.allclose(
            loaded.text_encoder(ids).last_hidden_state, source.text_encoder(ids).last_hidden_state, atol=atol, rtol=0
        )


def _assert_same_weights(model, reference):
    mine, theirs = model.state_dict(), reference.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[key], theirs[key]) for key in theirs)


def test_tiny_single_file_round_trip(tiny_file):
    path, source = tiny_file
    loaded = load_sd15(path)
    _assert_same_weights(loaded.unet, source.unet)
    _assert_same_weights(loaded.vae, source.vae)
    _assert_same_weights(loaded.text_encoder, source.text_encoder)
    _assert_same_outputs(loaded, source)
    assert loaded.source == str(path)
    assert loaded.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.scheduler_config == shipped_config("scheduler")
    assert not loaded.unet.training and not loaded.vae.training and not loaded.text_encoder.training


def test_inferred_configs_are_the_source_configs(tiny_file):
    path, source = tiny_file
    loaded = load_sd15(path)
    for ours, theirs in ((loaded.unet.config, source.unet.config), (loaded.vae.config, source.vae.config)):
        for key in (
            "in_channels",
            "out_channels",
            "block_out_channels",
            "layers_per_block",
            "down_block_types",
            "up_block_types",
            "cross_attention_dim",
            "attention_head_dim",
            "latent_channels",
            "scaling_factor",
        ):
            if key in theirs:
                assert (
                    list(ours[key]) == list(theirs[key])
                    if isinstance(theirs[key], (list, tuple))
                    else ours[key] == theirs[key]
                ), key
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "hidden_act",
    ):
        assert getattr(loaded.text_encoder.config, key) == getattr(source.text_encoder.config, key), key


def test_matches_diffusers_from_single_file(tiny_file, tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        create_diffusers_clip_model_from_ldm,
        load_single_file_checkpoint,
    )
    from transformers import CLIPTextModel

    path, source = tiny_file
    configs = tmp_path / "configs"
    source.unet.save_config(configs / "unet")
    source.vae.save_config(configs / "vae")
    source.text_encoder.config.save_pretrained(configs / "text_encoder")
    loaded = load_sd15(path)
    unet = UNet2DConditionModel.from_single_file(
        str(path), config=str(configs), subfolder="unet", local_files_only=True
    )
    vae = AutoencoderKL.from_single_file(str(path), config=str(configs), subfolder="vae", local_files_only=True)
    text_encoder = create_diffusers_clip_model_from_ldm(
        CLIPTextModel,
        load_single_file_checkpoint(str(path), local_files_only=True),
        config=str(configs),
        subfolder="text_encoder",
        local_files_only=True,
    )
    _assert_same_weights(loaded.unet, unet)
    _assert_same_weights(loaded.vae, vae)
    _assert_same_weights(loaded.text_encoder, text_encoder)


def test_ckpt_with_state_dict_wrapper_and_position_ids(tiny_file, tmp_path):
    path, source = tiny_file
    state, _ = load_state_dict(path)
    # Old checkpoints also saved CLIP's position_ids buffer; it must be accepted and ignored.
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 1}, ckpt)
    loaded = load_sd15(ckpt)
    _assert_same_weights(loaded.unet, source.unet)
    _assert_same_weights(loaded.text_encoder, source.text_encoder)


def test_unet_from_bare_ldm_keys(tiny_file):
    path, source = tiny_file
    state, _ = load_state_dict(path)
    prefix = "model.diffusion_model."
    bare = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    _assert_same_weights(unet_from_ldm(bare, source="ComfyUI MODEL"), source.unet)


def test_half_precision(tiny_file):
    path, source = tiny_file
    loaded = load_sd15(path, dtype=torch.float16)
    for model in (loaded.unet, loaded.vae, loaded.text_encoder):
        assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert torch.equal(loaded.unet.conv_in.weight, source.unet.conv_in.weight.half())


def test_two_transformer_layers_per_block(tmp_path):
    path = tmp_path / "deep.safetensors"
    source = write_tiny_sd15_file(path, seed=5, transformer_layers_per_block=2)
    loaded = load_sd15(path)
    assert loaded.unet.config.transformer_layers_per_block == 2
    _assert_same_outputs(loaded, source)


def test_missing_component_and_stray_key(tiny_file, tmp_path):
    path, _ = tiny_file
    state, _ = load_state_dict(path)
    no_vae = tmp_path / "no_vae.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("first_stage_model.")}, str(no_vae))
    with pytest.raises(
        ModelFileError, match="no_vae.safetensors has no VAE weights; --base needs a full SD-1.5 checkpoint"
    ):
        load_sd15(no_vae)
    stray = tmp_path / "stray.safetensors"
    save_file({**state, "model.diffusion_model.input_blocks.1.1.extra_gate.weight": torch.ones(3)}, str(stray))
    with pytest.raises(
        ModelFileError,
        match=r"the UNet of stray.safetensors does not fit .*1 unexpected \(e.g. down_blocks.0.attentions.0.extra",
    ):
        load_sd15(stray)
    torn = tmp_path / "torn.safetensors"
    save_file({k: v for k, v in state.items() if not k.endswith("attn1.to_q.weight")}, str(torn))
    with pytest.raises(
        ModelFileError, match=r"the UNet of torn.safetensors does not fit .*missing \(e.g. .*attn1.to_q.weight"
    ):
        load_sd15(torn)


def test_wrong_kinds_are_refused(tmp_path):
    path = tmp_path / "xl.safetensors"
    write_tiny_sd15_file(path, cross_attention_dim=2048)
    with pytest.raises(
        ModelFileError, match=r"xl.safetensors is an SDXL checkpoint \(context dim 2048\); --base needs an SD-1.5"
    ):
        load_sd15(path)
    mixed = tmp_path / "mixed.safetensors"
    write_tiny_sd15_file(mixed, cross_attention_dim=32)
    with pytest.raises(ModelFileError, match="the UNet attends to 32-d text but the text encoder gives 64-d"):
        load_sd15(mixed)


def _tokenizer_folder(folder, words):
    vocab, merges = clip_vocab_and_merges(synthetic_clip_bpe(words))
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def test_diffusers_folder(tmp_path):
    source = tiny_sd15_models(seed=7)
    folder = tmp_path / "tiny-sd15"
    source.unet.save_pretrained(folder / "unet")
    source.vae.save_pretrained(folder / "vae", variant="fp16")  # only the fp16 variant present
    source.text_encoder.save_pretrained(folder / "text_encoder")
    _tokenizer_folder(folder / "tokenizer", ["a", "cat"])
    scheduler = {**shipped_config("scheduler"), "_class_name": "PNDMScheduler", "skip_prk_steps": True}
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))

    loaded = load_sd15(folder)
    _assert_same_outputs(loaded, source, atol=0)
    # The declared noise-schedule fields only: the class name and PNDM's own switch are not handed on.
    assert loaded.scheduler_config == {key: value for key, value in scheduler.items() if key in SCHEDULER.fields}
    assert "_class_name" not in loaded.scheduler_config and loaded.scheduler_config["beta_end"] == 0.012
    assert loaded.tokenizer("a cat").input_ids[1:3] == [loaded.tokenizer.get_vocab()[w] for w in ("a</w>", "cat</w>")]
    assert len(loaded.content_hash) == 64

    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ModelFileError, match=r"unet cannot be loaded \(.*\); download it again"):
        load_sd15(folder)
    (folder / "text_encoder" / "config.json").unlink()
    with pytest.raises(ModelFileError, match="tiny-sd15 has no text_encoder/config.json"):
        load_sd15(folder)


def test_tokenizer_larger_than_the_text_encoder(tiny_file, tmp_path):
    path, _ = tiny_file
    # One long word spelled by 600 merges: 512 + 600 + 2 tokens for a text encoder with 1000.
    folder = _tokenizer_folder(tmp_path / "tok", ["a" * 601])
    with pytest.raises(
        ModelFileError, match="the tokenizer has 1114 tokens but the text encoder of tiny.safetensors only 1000"
    ):
        load_sd15(path, tokenizer_path=folder)


def test_inferred_config_for_real_sd15_shapes():
    """Shapes of the real SD-1.5 file, built on the meta device (no memory): configs must be the shipped ones."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(shipped_config("unet"))
        vae = AutoencoderKL.from_config(shipped_config("vae"))
        text = CLIPTextModel(CLIPTextConfig.from_dict(shipped_config("text_encoder")))
    state = sd15_to_ldm(unet, vae, text)
    shapes = {k: tuple(v.shape) for k, v in state.items()}

    def strip(prefix):
        return {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}

    assert infer_unet_config(strip("model.diffusion_model.")) == shipped_config("unet")
    assert infer_vae_config(strip("first_stage_model.")) == shipped_config("vae")
    assert infer_text_encoder_config(strip("cond_stage_model.transformer.text_model.")) == shipped_config(
        "text_encoder"
    )


@pytest.mark.slow
def test_full_size_sd15_round_trip(tmp_path):
    """Random full-size SD-1.5 in fp32 (about 4.3 GB on disk, about 12 GB of RAM at peak)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    started = time.perf_counter()
    source = TinySD15(
        randomize_(UNet2DConditionModel.from_config(shipped_config("unet")), 11).eval(),
        randomize_(AutoencoderKL.from_config(shipped_config("vae")), 12).eval(),
        randomize_(CLIPTextModel(CLIPTextConfig.from_dict(shipped_config("text_encoder"))), 13).eval(),
    )
    path = tmp_path / "sd15-random.safetensors"
    save_file(
        {k: v.contiguous() for k, v in sd15_to_ldm(source.unet, source.vae, source.text_encoder).items()}, str(path)
    )
    written = time.perf_counter()
    loaded = load_sd15(path)
    load_seconds = time.perf_counter() - written
    for model, component in ((loaded.unet, "unet"), (loaded.vae, "vae")):
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items() if not k.startswith("_")}
        assert {k: v for k, v in config.items() if k in shipped_config(component)} == {
            k: v for k, v in shipped_config(component).items() if not k.startswith("_")
        }
    _assert_same_weights(loaded.unet, source.unet)
    _assert_same_weights(loaded.vae, source.vae)
    _assert_same_weights(loaded.text_encoder, source.text_encoder)
    _assert_same_outputs(loaded, source, atol=1e-4, sample_size=32, text_width=768, vocab=49408)
    print(
        f"\nfull-size SD-1.5: build+write {written - started:.1f} s, load_sd15 {load_seconds:.1f} s "
        f"(hash included), total {time.perf_counter() - started:.1f} s, file {path.stat().st_size / 2**30:.2f} GiB"
    )


def test_comfyui_saved_files_with_clip_text_projection_load(tmp_path):
    """ComfyUI's checkpoint saver writes CLIP's text_projection, which SD-1.5 never reads."""
    path = tmp_path / "comfy_saved.safetensors"
    extra = {"cond_stage_model.transformer.text_projection.weight": torch.zeros(64, 64)}
    models = write_tiny_sd15_file(path, seed=0, extra=extra)
    loaded = load_sd15(path)
    for key, value in models.text_encoder.state_dict().items():
        torch.testing.assert_close(loaded.text_encoder.state_dict()[key], value)
