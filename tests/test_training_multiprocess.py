"""`accelerate launch` over 2 CPU processes (DDP on gloo, data sharded) computes the same steps as one
process with the same clips per step."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from test_training import log_records, one_thread, tiny_config, toy_data  # noqa: F401 (shared fixtures)

from livephoto_core.training.recipe import TrainConfig
from livephoto_core.training.engine import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_with_batch_1_match_one_process_with_batch_2(toy_data, tmp_path):  # noqa: F811
    config = tiny_config(toy_data, tmp_path / "ddp", steps=3, batch_size=1,
                         **{"validation.levels": [], "validation.loss_clips": 0})
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK"))}
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
         os.path.join(ROOT, "scripts", "train.py"), "--config", str(config_path)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
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
