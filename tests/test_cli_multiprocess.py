"""`accelerate launch` over 2 CPU processes runs a manifest: each process renders its share of the rows,
the videos are those one process makes, and a rerun skips every row."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from test_cli import batch, model_args

from livephoto_core.video import read_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_share_a_manifests_rows_and_make_the_videos_one_process_makes(tiny_files, tmp_path, capsys):
    for index in range(3):
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            tmp_path / f"photo{index}.png")
    manifest = tmp_path / "rows.csv"
    manifest.write_text("photo,prompt,seed\nphoto0.png,the red circle moves left,1\n"
                        "photo1.png,the red circle moves right,2\nphoto2.png,the red circle moves up,3\n")
    shared, alone = tmp_path / "two_processes", tmp_path / "one_process"
    shared.mkdir()
    alone.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK"))}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29547",
         "-m", "livephoto_core.cli", "animate", "--manifest", str(manifest), "--frames", "3", "--steps", "2",
         # fp32 as the in-process run below renders: the conftest's CPU has no native bf16, this one may
         "--output-dir", str(shared), "--dtype", "float32", *model_args(tiny_files)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    wrote = sorted(line.split(" (photo")[0] for line in launched.stdout.splitlines() if ": wrote " in line)
    # accelerate's split: consecutive rows, the first process one more where they do not divide evenly
    assert wrote == [f"[process 1 of 2] {manifest} row 1 (line 2)", f"[process 1 of 2] {manifest} row 2 (line 3)",
                     f"[process 2 of 2] {manifest} row 3 (line 4)"], launched.stdout

    assert batch(tiny_files, "--manifest", str(manifest), "--output-dir", str(alone), "--dtype", "float32") == 0
    names = sorted(path.name for path in alone.glob("*.webp"))
    assert sorted(path.name for path in shared.glob("*.webp")) == names and len(names) == 3
    for name in names:
        difference = read_video(shared / name).frames.astype(int) - read_video(alone / name).frames.astype(int)
        assert np.abs(difference).max() <= 1, name  # one thread there, two here: float rounding at most

    capsys.readouterr()
    assert batch(tiny_files, "--manifest", str(manifest), "--output-dir", str(shared), "--dtype", "float32") == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == [
        f"skipped {manifest} row {row} (line {row + 1})" for row in (1, 2, 3)]
