"""`accelerate launch` over 2 CPU processes (DDP on gloo, data sharded) computes the same steps as one
process with the same clips per step; FSDP2 (configs/accelerate/fsdp.yaml) computes the same steps as
DDP, resumes exactly from its sharded checkpoints and exports what DDP exports."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from test_training import PROMPT, copy_base, log_records, one_thread, tiny_config, toy_data  # noqa: F401 (fixtures)

from livephoto_core.errors import InvalidInputError
from livephoto_core.loading.assemble import load_pipeline
from livephoto_core.loading.checkpoint import read_livephoto_checkpoint
from livephoto_core.training import resume, toyworld
from livephoto_core.training.recipe import TrainConfig
from livephoto_core.training.engine import Trainer, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDP_CONFIG = os.path.join(ROOT, "configs", "accelerate", "fsdp.yaml")
ports = iter(range(29533, 29600))  # a fresh port per launch: the last one may still be in TIME_WAIT


def launch(config: dict, *args: str, accelerate_config: str | None = None) -> None:
    """scripts/train.py over 2 CPU processes: DDP, or what `accelerate_config` sets up."""
    config_path = os.path.join(config["output_dir"] + ".json")
    with open(config_path, "w") as handle:
        json.dump(config, handle)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "FSDP_", "WORLD_SIZE", "RANK"))}
    setup = ["--config_file", accelerate_config] if accelerate_config else ["--multi_gpu", "--num_machines", "1"]
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", *setup, "--num_processes", "2",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(next(ports)),
         os.path.join(ROOT, "scripts", "train.py"), "--config", config_path, *args],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]


def test_two_processes_with_batch_1_match_one_process_with_batch_2(toy_data, tmp_path):  # noqa: F811
    config = tiny_config(toy_data, tmp_path / "ddp", steps=3, batch_size=1,
                         **{"validation.levels": [], "validation.loss_clips": 0})
    launch(config)
    ddp_dir = tmp_path / "ddp"
    assert log_records(ddp_dir, "start")[0]["processes"] == 2
    assert (ddp_dir / "export" / "step-000003" / "livephoto.safetensors").is_file()

    # The same run on one process, from the same base: the same clips and noise per step.
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    for name in ("base", "dinov2"):
        shutil.copytree(ddp_dir / name, single_dir / name)
    single = train(TrainConfig.from_dict({**config, "output_dir": str(single_dir), "batch_size": 2}))
    ddp_losses = {r["step"]: r["loss"] for r in log_records(ddp_dir, "step")}
    assert sorted(ddp_losses) == [1, 2, 3]
    # Steps 2 and 3 start from weights that DDP's averaged gradients made: a process that had trained
    # on its half of the clips alone would not match.
    for step, loss in single.losses.items():
        assert ddp_losses[step] == pytest.approx(loss, abs=1e-5, rel=0)


def step_losses(output_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in log_records(output_dir, "step")}


def exported(output_dir, step: int) -> dict[str, torch.Tensor]:
    return read_livephoto_checkpoint(output_dir / "export" / f"step-{step:06d}" / "livephoto.safetensors")[1]


def test_fsdp_trains_checkpoints_its_shards_and_exports_a_model_that_loads(toy_data, tmp_path):  # noqa: F811
    """The fast smoke: the shipped FSDP config on 2 CPU processes, 2 steps."""
    config = tiny_config(toy_data, tmp_path / "fsdp", steps=2, batch_size=1,
                         **{"validation.levels": [], "validation.loss_clips": 1})
    launch(config, accelerate_config=FSDP_CONFIG)
    out = tmp_path / "fsdp"
    (start,) = log_records(out, "start")
    assert (start["strategy"], start["processes"]) == ("fsdp", 2)
    (checkpoint,) = [p for _, p in resume.list_checkpoints(out / "checkpoints")]
    assert json.loads((checkpoint / "state.json").read_text())["strategy"] == "fsdp"
    # Each process wrote its own share of the model, the optimizer and the EMA (replicated tensors
    # would all be written by process 0).
    for folder in ("accelerate/pytorch_model_fsdp_0", "accelerate/optimizer_0", "ema"):
        sizes = {p.name: p.stat().st_size for p in (checkpoint / folder).glob("*.distcp")}
        assert set(sizes) == {"__0_0.distcp", "__1_0.distcp"}, folder
        assert min(sizes.values()) > 0.3 * sum(sizes.values()), (folder, sizes)
    assert not (checkpoint / "trainable.safetensors").exists()
    assert log_records(out, "validation")[-1]["heldout_loss"] > 0  # the main process's whole copy ran it
    pipeline = load_pipeline(out / "export" / "step-000002" / "livephoto.safetensors")
    photo = toyworld.render_photo(toyworld.clip_spec(5, 0, "heldout", size=64, frames=4))
    frames = pipeline(photo, PROMPT, num_frames=4, num_inference_steps=2, guidance_scale=2.0, seed=1).frames
    assert frames.shape[0] == 4 and torch.isfinite(torch.as_tensor(frames)).all()


@pytest.mark.slow
def test_fsdp_matches_ddp_resumes_exactly_and_exports_what_ddp_exports(toy_data, tmp_path):  # noqa: F811
    """DDP, FSDP uninterrupted, and FSDP cut at step 2 and resumed with --resume latest: 4 steps each,
    EMA on (so the EMA's shards are saved and restored too)."""
    config = tiny_config(toy_data, tmp_path / "ddp", steps=4, batch_size=1, checkpoint_every=2, keep_checkpoints=1,
                         **{"validation.levels": [], "validation.loss_clips": 0})
    launch(config)
    runs = {}
    for name in ("fsdp", "cut"):
        runs[name] = tmp_path / name
        copy_base(tmp_path / "ddp", runs[name])
    launch({**config, "output_dir": str(runs["fsdp"])}, accelerate_config=FSDP_CONFIG)
    launch({**config, "output_dir": str(runs["cut"]), "steps": 2}, accelerate_config=FSDP_CONFIG)
    launch({**config, "output_dir": str(runs["cut"])}, "--resume", "latest", accelerate_config=FSDP_CONFIG)

    # FSDP computes DDP's steps (reduce-scatter instead of all-reduce: the same sums in another order).
    ddp, fsdp, cut = step_losses(tmp_path / "ddp"), step_losses(runs["fsdp"]), step_losses(runs["cut"])
    assert sorted(ddp) == sorted(fsdp) == sorted(cut) == [1, 2, 3, 4]
    for step in ddp:
        assert fsdp[step] == pytest.approx(ddp[step], abs=1e-5, rel=0)
    # The resumed run continues the uninterrupted one exactly: weights, optimizer, EMA, RNG.
    assert log_records(runs["cut"], "start")[-1]["resume"].endswith("step-000002")
    for step in (3, 4):
        assert cut[step] == pytest.approx(fsdp[step], abs=1e-6, rel=0)
    assert [s for s, _ in resume.list_checkpoints(runs["cut"] / "checkpoints")] == [4]  # keep_checkpoints

    # The export gathered on the main process is the DDP export (the EMA weights), and the resumed
    # run's is the uninterrupted run's.
    ddp_export, fsdp_export, cut_export = (exported(path, 4) for path in (tmp_path / "ddp", runs["fsdp"], runs["cut"]))
    assert set(ddp_export) == set(fsdp_export) == set(cut_export)
    for name, tensor in ddp_export.items():
        torch.testing.assert_close(fsdp_export[name], tensor, atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(cut_export[name], fsdp_export[name], atol=1e-6, rtol=0, msg=name)
    assert exported(runs["cut"], 2)  # the cut run exported at its own end too

    # A DDP checkpoint is not resumed under FSDP (nor the reverse): one line naming the fix.
    ddp_again = {**config, "steps": 6}
    with pytest.raises(AssertionError, match="was written by a ddp run and this one is fsdp"):
        launch(ddp_again, "--resume", "latest", accelerate_config=FSDP_CONFIG)


def test_other_strategies_and_unsupported_setups_fail_early_with_the_fix(toy_data, tmp_path, monkeypatch):  # noqa: F811
    """Checked in this process, before any training: a checkpoint of the other strategy, FSDP1,
    DeepSpeed, FSDP on a single CPU process."""
    from accelerate.state import AcceleratorState

    config = TrainConfig.from_dict(tiny_config(toy_data, tmp_path / "run"))
    checkpoints = tmp_path / "run" / "checkpoints"
    weights = {"weight": torch.zeros(2)}
    resume.save_checkpoint(checkpoints, 1, weights, None, {"state": {}, "param_groups": []}, {"rng": []})
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_VERSION", "FSDP_STATE_DICT_TYPE"):
        monkeypatch.delenv(name, raising=False)

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(InvalidInputError, match="step-000001 was written by a ddp run and this one is fsdp; resume "
                                                "with the launch config it was trained with"):
        Trainer(config, resume="latest")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    state = checkpoints / "step-000001" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "strategy": "fsdp"}))
    with pytest.raises(InvalidInputError, match="written by a fsdp run and this one is ddp"):
        Trainer(config, resume="latest")

    fresh = TrainConfig.from_dict(tiny_config(toy_data, tmp_path / "fresh"))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(InvalidInputError, match="DeepSpeed"):
        Trainer(fresh)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(InvalidInputError, match="set fsdp_version: 2"):
        Trainer(fresh)
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT")
    with pytest.raises(InvalidInputError, match="set SHARDED_STATE_DICT"):
        Trainer(fresh)
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT")
    try:
        with pytest.raises(InvalidInputError, match="launch 2 or more processes"):
            Trainer(fresh)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_the_shipped_fsdp_config_is_what_the_trainer_accepts():
    """configs/accelerate/fsdp.yaml as accelerate reads it (the launches above use it)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(FSDP_CONFIG)
    assert config.distributed_type.value == "FSDP"
    assert config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
