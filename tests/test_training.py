"""The training engine on toy data: it learns, checkpoints atomically, resumes exactly, exports models
that the CLI loads, and keeps its promises about caches, bad rows and batch splitting."""

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from livephoto_core import cli
from livephoto_core.errors import InvalidInputError, OutputExistsError
from livephoto_core.loading.assemble import load_pipeline
from livephoto_core.loading.checkpoint import read_livephoto_checkpoint, read_livephoto_config
from livephoto_core.encoding import tokenize
from livephoto_core.pipeline import LivePhotoPipeline
from livephoto_core.training import resume, toyworld
from livephoto_core.training.base import build_scratch_base
from livephoto_core.training.recipe import TrainConfig, apply_override, load_train_config
from livephoto_core.training.batching import ClipStream, tokenize_captions
from livephoto_core.training.engine import Trainer, train
from livephoto_core.training.vae import psnr
from livephoto_core.video import read_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "the red circle moves left"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Training runs here take 1 thread (as their configs say): on a busy 2-core machine a second
    thread slows small models down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """16 toy clips of 4 frames at 64 px, plus a missing, an undecodable and a too-short video; 2 held out."""
    root = tmp_path_factory.mktemp("toy")
    index = toyworld.write_dataset(root / "train", num_clips=16, seed=3, size=64, frames=4)
    (root / "train" / "clips" / "garbage.mp4").write_bytes(b"not a video at all" * 50)
    short = toyworld.render_clip(toyworld.clip_spec(3, 99, size=64, frames=2))
    toyworld.write_video_lossless(root / "train" / "clips" / "short.mp4", short, fps=8)
    with open(index, "a", newline="") as handle:
        csv.writer(handle).writerows([("clips/missing.mp4", "gone"), ("clips/garbage.mp4", "broken"),
                                      ("clips/short.mp4", "too short")])
    heldout = toyworld.write_dataset(root / "heldout", num_clips=2, seed=3, size=64, frames=4, split="heldout")
    return {"index": str(index), "validation_index": str(heldout)}


def tiny_config(toy_data, output_dir, **overrides) -> dict:
    values = {
        "output_dir": str(output_dir), "seed": 0, "steps": 10, "batch_size": 2, "lr": 1e-3, "ema_decay": 0.9,
        "log_every": 5, "checkpoint_every": 2, "keep_checkpoints": 2, "cache_latents": True, "torch_threads": 1,
        "data": {**toy_data, "num_frames": 4, "stride": 1, "size": 64},
        "model": {"from_scratch": True, "prediction_type": "v_prediction", "train_text_encoder": True,
                  "livephoto": {"reweighter_layers": 1, "reweighter_heads": 2, "motion_max_seq_length": 8}},
        "scratch": {
            "unet": {"block_out_channels": [32, 32], "attention_head_dim": [2, 2]},
            "vae": {"block_out_channels": [32, 32, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 4,
                    "up_block_types": ["UpDecoderBlock2D"] * 4},
            "text_encoder": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                             "intermediate_size": 64},
            "dinov2": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32,
                       "patch_size": 8},
        },
        "vae": {"steps": 2, "clips_per_batch": 2, "psnr_frames": 8},
        "validation": {"every": 5, "levels": [2, 8], "num_inference_steps": 2, "guidance_scale": 2.0,
                       "loss_clips": 1},
    }
    for key, value in overrides.items():
        apply_override(values, f"{key}={json.dumps(value)}")
    return values


def log_records(output_dir, event=None):
    with open(output_dir / "log.jsonl") as handle:
        records = [json.loads(line) for line in handle]
    return [r for r in records if event is None or r["event"] == event]


def copy_base(source, output_dir):
    """Reuse a from-scratch run's prepared base (the engine skips the VAE stage when base/ exists)."""
    output_dir.mkdir()
    for name in ("base", "dinov2"):
        shutil.copytree(source / name, output_dir / name)


@pytest.fixture(scope="module")
def reference(toy_data, tmp_path_factory):
    """An uninterrupted from-scratch run of 10 steps (crossing into a second epoch)."""
    output_dir = tmp_path_factory.mktemp("reference") / "run"
    trainer = Trainer(TrainConfig.from_dict(tiny_config(toy_data, output_dir)))
    result = trainer.run()
    return trainer, result


# --- the run itself ----------------------------------------------------------------------------------


def test_a_tiny_run_learns_and_leaves_a_complete_run_folder(reference):
    _, result = reference
    out = result.output_dir
    losses = [result.losses[s] for s in range(1, 11)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])

    # Bad rows are skipped and counted; every good one was labelled in this (first) run.
    (data,) = log_records(out, "data")
    assert (data["total"], data["usable"], data["decoded"], data["cached"]) == (19, 16, 18, 0)
    assert (data["missing"], data["undecodable"], data["too_short"]) == (1, 1, 1)
    steps = log_records(out, "step")
    assert [r["step"] for r in steps] == list(range(1, 11)) and all(r["clips_per_s"] > 0 for r in steps)
    assert steps[-1]["epoch"] == 1  # 16 clips / batch 2 = 8 steps per epoch

    # Last-K checkpoints; validation strips with the measured levels; the VAE stage's PSNR.
    assert [s for s, _ in resume.list_checkpoints(out / "checkpoints")] == [8, 10]
    validations = log_records(out, "validation")
    assert [v["step"] for v in validations] == [5, 10]
    assert [r["level"] for r in validations[-1]["levels"]] == [2, 8]
    assert all(1 <= r["measured"] <= 10 for r in validations[-1]["levels"])
    assert np.isfinite(validations[-1]["heldout_loss"])
    strip = Image.open(out / "validation" / "step-000010.png")
    assert strip.height >= 3 * 64 and strip.width >= 4 * 64  # held-out clip + 2 levels, 4 frames each
    (vae,) = log_records(out, "vae_done")
    assert vae["psnr_frames"] == "held-out" and np.isfinite(vae["psnr"]) and vae["scaling_factor"] > 0
    assert vae["psnr"] == log_records(out, "vae")[-1]["psnr"]


def test_the_bundled_export_reproduces_the_trained_model_and_runs_in_the_cli(reference, tmp_path):
    trainer, result = reference
    folder = result.export
    assert folder == result.output_dir / "export" / "step-000010"
    assert {p.name for p in folder.iterdir()} == {"livephoto.safetensors", "base", "dinov2"}
    config, _ = read_livephoto_checkpoint(folder / "livephoto.safetensors")
    assert config.base_model == "bundled" and config.prediction_type == "v_prediction"
    assert config.intensity_thresholds == tuple(trainer.thresholds)

    loaded = load_pipeline(folder / "livephoto.safetensors")  # base/ and dinov2/ found beside it
    photo = toyworld.render_photo(toyworld.clip_spec(5, 0, "heldout", size=64, frames=4))
    settings = dict(num_frames=4, num_inference_steps=3, guidance_scale=3.0, seed=7)
    with trainer.trained_weights():  # the export holds the EMA weights
        trainer.model.eval()
        in_memory = LivePhotoPipeline(
            trainer.model, trainer.vae, trainer.text_encoder, trainer.base.tokenizer, trainer.base.scheduler_config
        )(photo, PROMPT, **settings)
    exported = loaded(photo, PROMPT, **settings)
    torch.testing.assert_close(exported.frames, in_memory.frames, atol=1e-6, rtol=0)

    Image.fromarray(photo).save(tmp_path / "photo.png")
    output = tmp_path / "out.webp"
    status = cli.main(["animate", str(tmp_path / "photo.png"), PROMPT, "--livephoto", str(folder / "livephoto.safetensors"),
                       "--steps", "2", "--seed", "1", "-o", str(output)])
    assert status == 0
    assert read_video(output).frames.shape == (4, 64, 64, 3)


def test_init_from_starts_a_run_from_a_checkpoint_and_keeps_only_new_layers_fresh(toy_data, reference, tmp_path):
    """Fine-tuning: model.init_from copies an export's weights in before step 1; a layer this config adds
    (the text projection of text_time_embedding) keeps its zero initialisation; a checkpoint of another
    shape is refused by name."""
    _, result = reference
    checkpoint = result.export / "livephoto.safetensors"
    _, exported = read_livephoto_checkpoint(checkpoint)
    output_dir = tmp_path / "finetune"
    copy_base(result.output_dir, output_dir)
    config = tiny_config(toy_data, output_dir, **{"model.init_from": str(checkpoint),
                                                  "model.livephoto.text_time_embedding": True})
    trainer = prepared_trainer(config)
    (record,) = log_records(output_dir, "init_from")
    assert record["new_tensors"] == ["unet.time_embedding.cond_proj.weight"]
    state = trainer.model.trainable_state_dict()
    assert not state["unet.time_embedding.cond_proj.weight"].any()
    for name, tensor in exported.items():
        torch.testing.assert_close(state[name], tensor.to(state[name].dtype), atol=0, rtol=0)

    other = tiny_config(toy_data, tmp_path / "other", **{"model.init_from": str(checkpoint),
                                                         "model.livephoto.motion_max_seq_length": 16})
    copy_base(result.output_dir, tmp_path / "other")
    with pytest.raises(InvalidInputError, match="model.init_from .* does not fit this config"):
        prepared_trainer(other)


def prepared_trainer(config: dict) -> Trainer:
    """A trainer with its data and model prepared, before its first step."""
    from accelerate.state import AcceleratorState

    trainer = Trainer(TrainConfig.from_dict(config))
    try:
        trainer.prepare_data()
        trainer.prepare_model()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return trainer


def test_resume_after_sigkill_continues_with_the_same_losses(toy_data, reference, tmp_path):
    _, uninterrupted = reference
    output_dir = tmp_path / "run"
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(tiny_config(toy_data, output_dir)))
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config", str(config_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (output_dir / "log.jsonl").exists() or not log_records(output_dir, "checkpoint"):
            assert process.poll() is None, "the training process ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    resumed = train(TrainConfig.from_dict(tiny_config(toy_data, output_dir)), resume="latest")
    start = log_records(output_dir, "start")[-1]
    resumed_from = int(start["resume"].rsplit("-", 1)[1])
    assert resumed_from < 10 and list(resumed.losses) == list(range(resumed_from + 1, 11))
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(uninterrupted.losses[step], abs=1e-6, rel=0)
    assert log_records(output_dir, "data")[-1]["decoded"] == 0  # the SSIM cache of the killed run was reused


def test_accumulation_splits_a_batch_without_changing_the_step(toy_data, reference, tmp_path):
    """Randomness belongs to the clip, so batch 1 x 2 accumulation steps = batch 2."""
    _, uninterrupted = reference
    copy_base(uninterrupted.output_dir, tmp_path / "run")
    config = tiny_config(toy_data, tmp_path / "run", steps=3, batch_size=1, gradient_accumulation_steps=2,
                         **{"validation.every": 0, "validation.levels": []})
    result = train(TrainConfig.from_dict(config))
    for step in (1, 2, 3):
        assert result.losses[step] == pytest.approx(uninterrupted.losses[step], abs=1e-5, rel=0)


def test_bf16_and_gradient_checkpointing_train(toy_data, reference, tmp_path):
    copy_base(reference[1].output_dir, tmp_path / "run")
    config = tiny_config(toy_data, tmp_path / "run", steps=2, mixed_precision="bf16", gradient_checkpointing=True,
                         **{"validation.levels": [], "validation.loss_clips": 0})
    result = train(TrainConfig.from_dict(config))
    assert sorted(result.losses) == [1, 2] and all(np.isfinite(list(result.losses.values())))
    assert result.export is not None


def test_a_time_limit_stops_with_a_checkpoint_and_an_export(toy_data, reference, tmp_path):
    copy_base(reference[1].output_dir, tmp_path / "run")
    config = tiny_config(toy_data, tmp_path / "run", time_limit_minutes=1e-4, **{"validation.levels": []})
    result = train(TrainConfig.from_dict(config))
    assert result.stopped_early and list(result.losses) == [1]
    assert [s for s, _ in resume.list_checkpoints(tmp_path / "run" / "checkpoints")] == [1]
    assert result.export == tmp_path / "run" / "export" / "step-000001"
    assert log_records(tmp_path / "run", "stop")[-1]["reason"] == "time limit"


def test_a_finished_run_refuses_to_start_over_and_resumes_to_nothing(toy_data, reference, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(reference[1].output_dir, output_dir)
    config = TrainConfig.from_dict(tiny_config(toy_data, output_dir))
    with pytest.raises(OutputExistsError, match="--resume latest"):
        Trainer(config)
    again = train(config, resume="latest")
    assert again.losses == {} and again.step == 10 and again.export == output_dir / "export" / "step-000010"
    train(TrainConfig.from_dict(tiny_config(toy_data, output_dir, log_every=3)), resume="latest")
    assert log_records(output_dir, "config_changed")[-1]["keys"] == ["log_every", "output_dir"]  # the copy moved


def test_export_only_turns_a_picked_checkpoint_into_the_model_the_run_would_have_exported(toy_data, reference,
                                                                                          tmp_path):
    from safetensors.torch import load_file

    output_dir = tmp_path / "run"
    shutil.copytree(reference[1].output_dir, output_dir)
    shutil.rmtree(output_dir / "export")
    config = TrainConfig.from_dict(tiny_config(toy_data, output_dir))
    with pytest.raises(InvalidInputError, match="exporting needs a checkpoint"):
        Trainer(config, export_only=True)
    last = train(config, resume="latest", export_only=True)
    assert last.losses == {} and last.export == output_dir / "export" / "step-000010"
    at_the_end = load_file(reference[1].export / "livephoto.safetensors")
    exported = load_file(last.export / "livephoto.safetensors")
    assert at_the_end.keys() == exported.keys()
    assert all(torch.equal(at_the_end[k], exported[k]) for k in at_the_end)  # the EMA weights, as the run exported
    picked = train(config, resume=str(output_dir / "checkpoints" / "step-000008"), export_only=True)
    assert picked.export == output_dir / "export" / "step-000008"
    recorded = read_livephoto_config(picked.export / "livephoto.safetensors").extra["training"]
    assert recorded["steps"] == 8 and recorded["config"]["steps"] == 10  # the step exported, the run's own schedule
    assert not all(torch.equal(at_the_end[k], v) for k, v in load_file(picked.export / "livephoto.safetensors").items())
    assert len(log_records(output_dir, "step")) == len(log_records(reference[1].output_dir, "step"))  # no training


# --- pretrained mode (the paper's recipe on a tiny SD-1.5-structured base) ---------------------------------


@pytest.fixture(scope="module")
def pretrained_files(tmp_path_factory):
    from livephoto_core.testing.ldm_layout import write_tiny_sd15_file
    from livephoto_core.testing.tiny import WORDS, tiny_dinov2, tiny_motion_adapter

    from livephoto_core.training.word_tokenizer import write_word_tokenizer

    root = tmp_path_factory.mktemp("pretrained")
    write_tiny_sd15_file(root / "base.safetensors", seed=0)
    tiny_dinov2().save_pretrained(root / "dinov2")
    write_word_tokenizer(root / "tokenizer", WORDS)
    tiny_motion_adapter(max_seq_length=16).save_pretrained(root / "motion")
    return root


def pretrained_config(toy_data, files, output_dir, **overrides) -> dict:
    config = tiny_config(toy_data, output_dir, steps=2, **{"validation.every": 0, "validation.levels": [],
                                                            "validation.loss_clips": 0}, **overrides)
    config["model"] = {"base": str(files / "base.safetensors"), "dinov2": str(files / "dinov2"),
                       "tokenizer": str(files / "tokenizer"), "motion_module": str(files / "motion"),
                       "freeze_motion_module": True, "livephoto": {"dinov2_image_size": 28, "reweighter_layers": 1}}
    return config


def test_pretrained_base_stays_frozen_and_exports_a_checkpoint_for_the_cli(toy_data, pretrained_files, tmp_path):
    from livephoto_core.loading.sd15 import load_sd15

    config = TrainConfig.from_dict(pretrained_config(toy_data, pretrained_files, tmp_path / "run", cache_text=True))
    trainer = Trainer(config)
    result = trainer.run()
    base = load_sd15(pretrained_files / "base.safetensors").unet.state_dict()
    trained = trainer.model.unet.motion_unet.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in base.items() if not k.startswith("conv_in."))
    assert not torch.equal(trained["conv_in.weight"][:, 4:], torch.zeros_like(trained["conv_in.weight"][:, 4:]))

    checkpoint = result.export / "livephoto.safetensors"
    assert {p.name for p in result.export.iterdir()} == {"livephoto.safetensors"}
    livephoto_config, tensors = read_livephoto_checkpoint(checkpoint)
    assert livephoto_config.base_model == "sd15" and livephoto_config.motion_weights == "external"
    assert not any(".motion_modules." in k for k in tensors)

    photo = tmp_path / "photo.png"
    Image.fromarray(toyworld.render_photo(toyworld.clip_spec(5, 1, "heldout", size=64, frames=4))).save(photo)
    output = tmp_path / "out.gif"
    status = cli.main(["animate", str(photo), PROMPT, "--livephoto", str(checkpoint),
                       "--base", str(pretrained_files / "base.safetensors"), "--dinov2", str(pretrained_files / "dinov2"),
                       "--tokenizer", str(pretrained_files / "tokenizer"), "--motion-module", str(pretrained_files / "motion"),
                       "--steps", "2", "--frames", "4", "--seed", "1", "-o", str(output)])
    assert status == 0 and read_video(output).frames.shape[0] == 4

    # Memoising latents and text embeddings changes nothing.
    uncached = train(TrainConfig.from_dict(pretrained_config(
        toy_data, pretrained_files, tmp_path / "uncached", cache_text=False, cache_latents=False)))
    assert uncached.losses == result.losses


def test_pretrained_mode_refuses_a_prediction_type_its_frozen_base_does_not_have(toy_data, pretrained_files, tmp_path):
    config = pretrained_config(toy_data, pretrained_files, tmp_path / "run")
    config["model"]["prediction_type"] = "v_prediction"
    with pytest.raises(InvalidInputError, match="prediction_type=epsilon"):
        train(TrainConfig.from_dict(config))


# --- labels of the trained frames, in both modes ------------------------------------------------------


@pytest.fixture(scope="module")
def still_then_moving(tmp_path_factory):
    """Videos of 16 frames at 64 px: a photo held still for 8 frames, then new noise every frame. A
    4-frame clip's level depends on where it starts."""
    root = tmp_path_factory.mktemp("still_then_moving")
    rng = np.random.default_rng(0)
    rows = [("path", "caption")]
    for i in range(4):
        frames = np.repeat(rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8), 16, axis=0)
        frames[8:] = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
        toyworld.write_video_lossless(root / f"v{i}.mp4", frames, fps=8)
        rows.append((f"v{i}.mp4", "the red circle moves to the left"))
    with open(root / "index.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return str(root / "index.csv")


@pytest.mark.parametrize("mode", ["from_scratch", "sd15"])
def test_the_level_a_step_trains_on_is_measured_on_that_step_s_frames(
        mode, toy_data, reference, pretrained_files, still_then_moving, tmp_path, monkeypatch):
    """random_start draws clips from anywhere in the video; the level that conditions the model must be
    that clip's, not the one measured at frame 0 by the labelling pass (issue 13)."""
    from livephoto_core.intensity import DEFAULT_THRESHOLDS, level_from_ssim, mean_adjacent_ssim

    seen = []
    real_loss = Trainer.loss

    def spying_loss(self, batch, generators, text_dropout, module):
        pixels = ((batch["frames"].permute(0, 1, 3, 4, 2) + 1) * 127.5).round().to(torch.uint8).numpy()
        measured = [level_from_ssim(mean_adjacent_ssim(clip), DEFAULT_THRESHOLDS) for clip in pixels]
        seen.append((batch["level"].tolist(), measured))
        return real_loss(self, batch, generators, text_dropout, module)

    monkeypatch.setattr(Trainer, "loss", spying_loss)
    overrides = {"data.index": still_then_moving, "data.thresholds": list(DEFAULT_THRESHOLDS),
                 "data.random_start": True}
    if mode == "from_scratch":
        copy_base(reference[1].output_dir, tmp_path / "run")
        config = tiny_config(toy_data, tmp_path / "run", **overrides,
                             **{"validation.levels": [], "validation.loss_clips": 0})
    else:
        config = pretrained_config(toy_data, pretrained_files, tmp_path / "run", **overrides)
    config["steps"] = 3
    train(TrainConfig.from_dict(config))
    assert len(seen) == 3
    assert all(given == measured for given, measured in seen)
    assert {level for given, _ in seen for level in given} - {1}  # not only clips of the still start


# --- pieces ----------------------------------------------------------------------------------------


def test_config_file_overrides_and_errors(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"output_dir": "runs/x", "data": {"index": "i.csv"}, "model": {"from_scratch": True}}))
    config = load_train_config(path, ["lr=3e-4", "num_frames=8", "data.stride=2", "validation.levels=[3, 9]",
                                      "scratch.unet.block_out_channels=[32, 64]", "output_dir=runs/y"])
    assert (config.lr, config.data.num_frames, config.data.stride) == (3e-4, 8, 2)
    assert config.validation.levels == [3, 9] and config.scratch.unet == {"block_out_channels": [32, 64]}
    assert config.output_dir == "runs/y" and TrainConfig.from_dict(json.loads(config.to_json())) == config
    for override, message in [("lr_typo=1", "unknown config key"), ("data.nframes=8", "unknown config keys"),
                              ("dinov2=x", "ambiguous"), ("steps=1.5", "whole number"), ("lr", "key=value"),
                              ("model.livephoto.num_frames=8", "cannot set"), ("mixed_precision=fp8", "mixed_precision"),
                              ("cache_text=true", "cache_text"), ("model.train_text_encoder=yes", "true or false")]:
        with pytest.raises(InvalidInputError, match=message):
            overrides = [override] + (["model.train_text_encoder=true"] if override == "cache_text=true" else [])
            load_train_config(path, overrides)
    with pytest.raises(InvalidInputError, match="model.base"):
        load_train_config(path, ["model.from_scratch=false"])


def test_the_script_reports_config_errors_in_one_line(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", os.path.join(ROOT, "scripts", "train.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = os.path.join(ROOT, "configs", "train", "demo.json")
    assert script.main(["--config", config, "--set", "lr_typo=1"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown config key 'lr_typo'"
    assert script.main(["--config", str(tmp_path / "missing.json")]) == 2


# The command that unpacks the first demo model (the fine-tune's start) from the commit that shipped it.
FIRST_DEMO_MODEL_ARCHIVE = "git archive 438c65b livephoto_core/demo_model"


@pytest.mark.parametrize("name", ["demo", "demo_finetune", "sd15"])
def test_shipped_recipes_are_valid_configs(name):
    config = load_train_config(os.path.join(ROOT, "configs", "train", f"{name}.json"))
    assert config.model.from_scratch == name.startswith("demo")
    if name == "demo_finetune":  # starts from the first demo model, which docs/demo-model.md says how to unpack
        first = config.scratch.images_from
        assert config.model.init_from == f"{first}/livephoto.safetensors"
        guide = open(os.path.join(ROOT, "docs", "demo-model.md")).read()
        assert f"{FIRST_DEMO_MODEL_ARCHIVE} | tar -x -C {first} --strip-components=2" in guide


def test_captions_are_tokenized_as_the_pipeline_tokenizes_prompts(tmp_path):
    from livephoto_core.testing.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path)
    ids = tokenize_captions(tokenizer, [PROMPT, ""])
    assert torch.equal(ids[0], tokenize(tokenizer, PROMPT)[0][0]) and torch.equal(ids[1], tokenize(tokenizer, "")[0][0])
    long = tokenize_captions(tokenizer, ["red " * 200])
    assert long.shape == (1, 77)


class _Indices(torch.utils.data.Dataset):
    def __init__(self, size):
        self.size, self.epoch = size, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return index


def test_clip_stream_shards_an_epoch_and_resumes_mid_epoch():
    dataset = _Indices(11)
    single = ClipStream(dataset, batch_size=4, seed=1, rank=0, world=1, workers=0)
    ranks = [ClipStream(dataset, batch_size=2, seed=1, rank=r, world=2, workers=0) for r in (0, 1)]
    first = next(single(0))
    halves = [next(rank(0)) for rank in ranks]
    # Same clips and places per step, however they are split over processes.
    assert sorted(first[2].tolist()) == sorted(halves[0][2].tolist() + halves[1][2].tolist())
    assert sorted(first[1]) == sorted(halves[0][1] + halves[1][1]) == [0, 1, 2, 3]
    stream = single(0)
    epoch = [next(stream) for _ in range(2)]  # 11 clips: 2 batches of 4, the rest dropped
    assert {e for e, _, _ in epoch} == {0} and len({i for _, _, b in epoch for i in b.tolist()}) == 8
    assert next(stream)[0] == 1
    resumed = single(1)
    assert next(resumed)[2].tolist() == epoch[1][2].tolist()


def test_psnr_matches_skimage():
    rng = np.random.default_rng(0)
    reference = rng.random((3, 16, 16, 3))
    estimate = np.clip(reference + rng.normal(0, 0.05, reference.shape), 0, 1)
    expected = np.mean([peak_signal_noise_ratio(r, e, data_range=1.0) for r, e in zip(reference, estimate)])
    assert psnr(torch.from_numpy(reference), torch.from_numpy(estimate)) == pytest.approx(expected, abs=1e-9)


def _state(value):
    return {"weight": torch.full((3,), float(value))}


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    resume.save_checkpoint(folder, 1, _state(1), None, {"state": {}, "param_groups": []}, {"rng": []})

    real_save = torch.save

    def disk_full(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\0" * 100)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(resume.torch, "save", disk_full)
    with pytest.raises(OSError) as raised:
        resume.save_checkpoint(folder, 2, _state(2), None, {"state": {}, "param_groups": []}, {"rng": []})
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.setattr(resume.torch, "save", real_save)

    assert [p.name for p in folder.iterdir()] == ["step-000001"]  # no step-2, no temporary folder
    latest = resume.resolve_resume(folder, "latest")
    assert latest.name == "step-000001"
    assert torch.equal(resume.load_checkpoint(latest).trainable["weight"], _state(1)["weight"])
    with pytest.raises(OutputExistsError):
        resume.save_checkpoint(folder, 1, _state(3), None, {"state": {}, "param_groups": []}, {"rng": []})
    assert torch.equal(resume.load_checkpoint(latest).trainable["weight"], _state(1)["weight"])


def test_rng_states_round_trip_through_json():
    import random

    state = json.loads(json.dumps(resume.rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    resume.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# --- the from-scratch stages: resumable VAE, text pretraining, zero-terminal-SNR schedule --------------------


def test_a_time_limit_in_the_vae_stage_resumes_to_the_same_vae(toy_data, tmp_path):
    from safetensors.torch import load_file

    def vae_weights(run):
        return load_file(str(run / "vae" / "diffusion_pytorch_model.safetensors"))

    overrides = {"vae.steps": 4, "vae.checkpoint_every": 2, "steps": 1, "validation.levels": [], "validation.every": 0}
    straight = train(TrainConfig.from_dict(tiny_config(toy_data, tmp_path / "straight", **overrides)))
    assert not straight.stopped_early
    stopped = train(TrainConfig.from_dict(tiny_config(toy_data, tmp_path / "cut", time_limit_minutes=1e-4, **overrides)))
    assert stopped.stopped_early and stopped.export is None and not (tmp_path / "cut" / "vae").exists()
    assert [s for s, _ in resume.list_checkpoints(tmp_path / "cut" / "vae_checkpoints")] == [1]
    config = TrainConfig.from_dict(tiny_config(toy_data, tmp_path / "cut", **overrides))
    with pytest.raises(OutputExistsError, match="--resume latest"):
        Trainer(config)  # a stage begun is never silently continued or restarted
    resumed = train(config, resume="latest")
    assert not resumed.stopped_early and log_records(tmp_path / "cut", "vae_resumed")[0]["step"] == 1
    expected, got = vae_weights(tmp_path / "straight"), vae_weights(tmp_path / "cut")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_text_stage_pretrains_the_text_encoder_and_records_its_word_separation(toy_data, tmp_path):
    from transformers import CLIPTextModel

    run = tmp_path / "run"
    config = tiny_config(toy_data, run, steps=1, **{"text_stage.steps": 3, "text_stage.clips_per_batch": 4,
                                                    "text_stage.log_every": 3, "validation.levels": [],
                                                    "model.train_text_encoder": False, "cache_text": True})
    train(TrainConfig.from_dict(config))
    (record,) = log_records(run, "text_stage")
    assert record["step"] == 3 and np.isfinite(record["loss"])
    assert set(log_records(run, "text_stage_done")[0]["separation"]) == set(record["separation"])
    untrained = build_scratch_base(TrainConfig.from_dict(config)).text_encoder.state_dict()
    trained = CLIPTextModel.from_pretrained(run / "base" / "text_encoder").state_dict()
    assert any(not torch.equal(untrained[k], trained[k]) for k in untrained)


def test_hard_negatives_reverse_the_motion_words_and_equal_captions_share_the_target():
    from livephoto_core.training.text_stage import contrastive_loss, opposite_caption

    assert opposite_caption("the red circle moves to the left") == "the red circle moves to the right"
    assert opposite_caption("camera zooms in on a blue star") == "camera zooms out on a blue star"
    assert opposite_caption("the red square rotates") is None
    # Two clips with the same caption: a perfect match to either text costs the same as to both.
    texts = ["zoom in", "zoom in", "zoom out"]
    logits = torch.tensor([[10.0, 10.0, -10.0], [10.0, 10.0, -10.0]])
    assert contrastive_loss(logits, texts, 2) < 0.7 + 1e-3  # ln 2 for each of the two equal columns
    swapped = torch.tensor([[-10.0, -10.0, 10.0], [-10.0, -10.0, 10.0]])  # both clips pick the hard negative
    assert contrastive_loss(swapped, texts, 2) > 10


def test_zero_terminal_snr_runs_end_to_end_with_prior_inversion(toy_data, tmp_path):
    run = tmp_path / "run"
    zero_snr = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    config = tiny_config(toy_data, run, steps=2, high_noise_fraction=0.5, **{"scratch.scheduler": zero_snr,
                                                                           "validation.levels": []})
    result = train(TrainConfig.from_dict(config))
    scheduler = json.loads((result.export / "base" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["rescale_betas_zero_snr"] and scheduler["timestep_spacing"] == "trailing"
    pipe = load_pipeline(result.export / "livephoto.safetensors")
    photo = toyworld.render_photo(toyworld.clip_spec(3, 0, size=64, frames=4))
    out = pipe(photo, "the red circle moves left", num_inference_steps=3, guidance_scale=2.0, seed=0)
    assert torch.isfinite(out.frames).all() and out.settings["prior_inversion"]
    with pytest.raises(InvalidInputError, match="zero-terminal-SNR"):
        pipe(photo, "zoom in", scheduler="pndm")
    with pytest.raises(InvalidInputError, match="needs model.prediction_type=v_prediction"):
        TrainConfig.from_dict(tiny_config(toy_data, run, **{"scratch.scheduler": zero_snr,
                                                            "model.prediction_type": "epsilon"}))


def test_the_high_noise_share_draws_late_timesteps_and_leaves_the_uniform_draw_alone():
    from livephoto_core.training.batching import draw_timestep

    def draws(fraction):
        return [draw_timestep(torch.Generator().manual_seed(i), 1000, fraction, 700).item() for i in range(400)]

    assert draws(0.0) == [torch.randint(0, 1000, (1,), generator=torch.Generator().manual_seed(i)).item()
                          for i in range(400)]
    assert min(draws(1.0)) >= 700
    share = np.mean(np.array(draws(0.5)) >= 700)
    assert 0.55 < share < 0.75  # half drawn from [700, 1000), plus 30 % of the uniform half


def test_a_base_can_start_from_a_bundled_model_s_image_side_with_a_new_text_encoder(toy_data, tmp_path):
    from safetensors.torch import load_file

    quick = {"steps": 1, "validation.levels": [], "model.train_text_encoder": False}
    first = train(TrainConfig.from_dict(tiny_config(toy_data, tmp_path / "first", **quick))).export
    run = tmp_path / "second"
    config = tiny_config(toy_data, run, **quick, **{
        "scratch.images_from": str(first), "model.init_from": str(first / "livephoto.safetensors"),
        "text_stage.steps": 2, "text_stage.clips_per_batch": 4})
    train(TrainConfig.from_dict(config))

    def weights(folder, part):
        (path,) = (folder / "base" / part).glob("*.safetensors")
        return load_file(str(path))

    for part in ("unet", "vae"):  # the base the LivePhoto stage started from: the first model's
        before, after = weights(first, part), weights(run, part)
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    old_text, new_text = weights(first, "text_encoder"), weights(run, "text_encoder")
    assert any(not torch.equal(old_text[k], new_text[k]) for k in old_text)  # pretrained anew
    assert not (run / "vae_checkpoints").exists() and log_records(run, "text_stage_done")
    assert log_records(run, "init_from")

    with pytest.raises(InvalidInputError, match="images_from: .* has no UNet"):
        build_scratch_base(TrainConfig.from_dict(tiny_config(toy_data, run, **{"scratch.images_from": str(tmp_path)})))
    wider = tiny_config(toy_data, run, **{"scratch.images_from": str(first), "scratch.text_encoder.hidden_size": 64})
    with pytest.raises(InvalidInputError, match="reads text of width 32"):
        build_scratch_base(TrainConfig.from_dict(wider))
