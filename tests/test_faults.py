"""Faults and load (issue 7): Ctrl-C, SIGKILL, a full disk and two writers at once leave no partial
output and a usable model; node file inputs cannot reach outside ComfyUI's model folders.

The subprocess tests run the real `livephoto` entry point (livephoto_core.cli.main) or write_video in a
small script that slows them down at a known point (a pause after each progress step, or inside the
encoder), so the signal lands where the test says it does and the test checks that it did.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_nodes import env  # noqa: F401 - the pack over ComfyUI stubs, a fixture
from test_training import log_records, tiny_config, toy_data  # noqa: F401 - toy_data is a fixture
from livephoto_core.testing.tiny import tiny_pipeline

from livephoto_core.errors import Cancelled
from livephoto_core.training import resume
from livephoto_core.training.recipe import TrainConfig
from livephoto_core.training.engine import train
from livephoto_core.video import read_metadata, read_video, write_video

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "the red circle moves left"
EXIT_CANCELLED, EXIT_USAGE = 130, 2

# The CLI with a pause after every progress step, a line per step on stderr ("step inversion 1"), and,
# with a barrier folder, a wait at the first sampling step until `count` processes have got there.
PACED_CLI = r"""
import os, sys, time
from pathlib import Path
from livephoto_core import cli

pause, barrier, count = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
real_step = cli.ProgressBar.__call__

def paced_step(self, event):
    real_step(self, event)
    print(f"\nstep {event.phase} {event.step}", file=sys.stderr, flush=True)
    if barrier != "-" and (event.phase, event.step) == ("sampling", 1):
        Path(barrier, str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(os.listdir(barrier)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep(pause)

cli.ProgressBar.__call__ = paced_step
sys.exit(cli.main(sys.argv[4:]))
"""

# write_video whose encoder writes half the file, says where, and waits to be killed.
STALLED_WRITER = r"""
import sys, time
from pathlib import Path
import numpy as np
from livephoto_core import video

target, overwrite = Path(sys.argv[1]), sys.argv[2] == "overwrite"
real_encoder = video._ENCODERS[target.suffix]

def half_then_stall(pixels, path, fps, metadata_json):
    real_encoder(pixels, path, fps, metadata_json)
    data = path.read_bytes()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        print(f"writing {path} {len(data) // 2}", flush=True)
        time.sleep(600)

video._ENCODERS[target.suffix] = half_then_stall
video.write_video(np.full((4, 32, 32, 3), 40, np.uint8), target, metadata={"version": "new"}, overwrite=overwrite)
"""


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def model_args(folder: Path) -> list[str]:
    return ["--livephoto", str(folder / "livephoto.safetensors"), "--base", str(folder / "base.safetensors"),
            "--dinov2", str(folder / "dinov2"), "--tokenizer", str(folder / "tokenizer")]


def write_photo(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def start_cli(script: Path, files: Path, photo: Path, output: Path, *, pause: float = 0.0, barrier: str = "-",
              count: int = 0, seed: int = 1) -> subprocess.Popen:
    argv = ["animate", str(photo), PROMPT, "--frames", "3", "--steps", "4", "--seed", str(seed), "-o", str(output),
            *model_args(files)]
    # A process started from a terminal gets Ctrl-C's default action; one started from this test run might
    # inherit SIGINT ignored (some library in the run ignores it, and that survives exec), and Python then
    # installs no KeyboardInterrupt handler.
    return subprocess.Popen([sys.executable, str(script), str(pause), barrier, str(count), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.fixture
def paced_cli(tmp_path) -> Path:
    script = tmp_path / "paced_cli.py"
    script.write_text(PACED_CLI)
    return script


# --- Ctrl-C in the CLI -------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["inversion", "sampling"])
def test_ctrl_c_in_the_cli_exits_130_and_writes_nothing(tiny_files, paced_cli, tmp_path, phase):
    photo = write_photo(tmp_path / "photo.png")
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    process = start_cli(paced_cli, tiny_files, photo, out_folder / "clip.webp", pause=0.5)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    seen = []
    try:
        for line in process.stderr:  # the steps of the paced CLI; Ctrl-C after the phase's first
            seen.append(line)
            if f"step {phase} 1" in line:
                process.send_signal(signal.SIGINT)
                break
        else:
            pytest.fail(f"the CLI ended before {phase} began:\n{''.join(seen)}")
        stderr = "".join(seen) + process.stderr.read()
        process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    steps = [line.split()[1:] for line in stderr.splitlines() if line.startswith("step ")]
    assert steps[-1] == [phase, "1"], steps  # the signal stopped it within the phase's first step
    assert process.returncode == EXIT_CANCELLED, stderr
    assert "cancelled; nothing was written" in stderr and "Traceback" not in stderr
    assert list(out_folder.iterdir()) == []  # no video, no sidecar, no temporary file


# --- cancel through the Python API -----------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["inversion", "sampling"])
def test_a_cancelled_call_leaves_the_pipeline_rendering_what_a_fresh_one_renders(tmp_path, phase):
    photo = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    settings = {"intensity": 3, "num_frames": 3, "num_inference_steps": 3, "seed": 5}
    pipeline = tiny_pipeline(tmp_path / "tokenizer")
    events = []

    def cancel_at_the_first_step(event):
        events.append((event.phase, event.step))
        if event.phase == phase:
            raise Cancelled("stopped by the test")

    with pytest.raises(Cancelled):  # other settings than the call after, so any state left behind shows
        pipeline(photo, "the blue square moves up", intensity=9, num_frames=2, num_inference_steps=3,
                 content_scale=0.5, scheduler="euler", seed=1, callback=cancel_at_the_first_step)
    assert events[-1] == (phase, 1) and events.count((phase, 1)) == 1
    again = pipeline(photo, PROMPT, **settings).frames
    fresh = tiny_pipeline(tmp_path / "tokenizer_fresh")(photo, PROMPT, **settings).frames
    assert torch.equal(again, fresh)


# --- SIGKILL while a video is written ---------------------------------------------------------------------


@pytest.mark.parametrize("existing", [True, False], ids=["over-an-existing-file", "new-file"])
@pytest.mark.parametrize("extension", [".webp", ".mp4"])
def test_sigkill_while_writing_a_video_leaves_the_old_file_or_none(tmp_path, existing, extension):
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / f"clip{extension}"
    if existing:
        write_video(np.full((3, 32, 32, 3), 200, np.uint8), target, metadata={"version": "old"})
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert len(before) == (2 if existing else 0)  # the video and its sidecar
    script = tmp_path / "stalled_writer.py"
    script.write_text(STALLED_WRITER)
    process = subprocess.Popen([sys.executable, str(script), str(target), "overwrite" if existing else "new"],
                               stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        line = process.stdout.readline()
        assert line.startswith("writing "), f"the writer ended before writing: {line!r}"
        _, temporary, written = line.split()
        assert Path(temporary).stat().st_size == int(written) > 0  # the new file really is half on disk
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    after = {path.name: path.read_bytes() for path in folder.iterdir() if path.name in before}
    assert after == before  # the old video and its sidecar, byte for byte; or nothing at all
    if existing:
        assert read_video(target).frames.shape == (3, 32, 32, 3) and read_metadata(target) == {"version": "old"}
    # What a SIGKILL cannot clean up: the half-written temporary, hidden and never under the output's name.
    leftovers = [path.name for path in folder.iterdir() if path.name not in before]
    assert leftovers == [Path(temporary).name] and leftovers[0].startswith(f".clip{extension}.tmp-")


# --- a full disk while a training checkpoint is written ------------------------------------------------------


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_resume_latest_works(toy_data, tmp_path,  # noqa: F811
                                                                                     monkeypatch):
    output_dir = tmp_path / "run"
    config = tiny_config(toy_data, output_dir, steps=4, **{"validation.every": 0, "validation.levels": []})
    real_save_file, calls = resume.save_file, []

    def disk_full_at_the_second_checkpoint(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if "step-000004" not in filename:
            return real_save_file(tensors, filename, *args, **kwargs)
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 1000)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(resume, "save_file", disk_full_at_the_second_checkpoint)
        with pytest.raises(OSError) as raised:
            train(TrainConfig.from_dict(config))
    assert raised.value.errno == errno.ENOSPC
    assert "step-000002" in calls[0] and "step-000004" in calls[-1]  # it failed writing step 4's checkpoint
    folder = output_dir / "checkpoints"
    assert [path.name for path in folder.iterdir()] == ["step-000002"]  # intact, no half folder, no temporary
    interrupted = {record["step"]: record["loss"] for record in log_records(output_dir, "step")}
    assert sorted(interrupted) == [1, 2, 3, 4]

    resumed = train(TrainConfig.from_dict(config), resume="latest")
    assert log_records(output_dir, "start")[-1]["resume"].endswith("step-000002")
    assert sorted(resumed.losses) == [3, 4]
    for step, loss in resumed.losses.items():  # steps 3 and 4 again, as the run before the full disk took them
        assert loss == pytest.approx(interrupted[step], abs=1e-6, rel=0)
    assert (folder / "step-000004" / "state.json").is_file()


# --- two CLI runs writing one name at once -------------------------------------------------------------------


@pytest.mark.slow
def test_two_cli_runs_to_one_name_one_wins_the_other_is_refused_and_the_file_is_whole(tiny_files, paced_cli,
                                                                                       tmp_path):
    photo = write_photo(tmp_path / "photo.png")
    out_folder, barrier = tmp_path / "out", tmp_path / "barrier"
    out_folder.mkdir()
    barrier.mkdir()
    target = out_folder / "clip.webp"
    # Both wait at their first sampling step until both are there: both passed the early "exists" check,
    # so the loser is refused at the final, atomic step.
    processes = {seed: start_cli(paced_cli, tiny_files, photo, target, barrier=str(barrier), count=2, seed=seed)
                 for seed in (11, 22)}
    results = {}
    try:
        for seed, process in processes.items():
            stdout, stderr = process.communicate(timeout=300)
            results[seed] = (process.returncode, stdout, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    assert len(list(barrier.iterdir())) == 2, "the runs did not overlap"
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, EXIT_USAGE], results
    [winner] = [seed for seed, (code, _, _) in results.items() if code == 0]
    [(_, _, loser_err)] = [result for result in results.values() if result[0] == EXIT_USAGE]
    # Refused at the video's name or at its sidecar's, whichever the winner took first.
    errors = [line for line in loser_err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(
        rf"error: {re.escape(str(target))}(\.json)? already exists( \(the settings sidecar of clip\.webp\))?; "
        rf"pass --overwrite or choose another name",
        errors[0]), loser_err
    assert "Traceback" not in loser_err
    assert read_video(target).frames.shape == (3, 64, 64, 3)
    assert read_metadata(target)["seed"] == winner  # the whole file is the winner's, sidecar included
    assert json.loads((out_folder / "clip.webp.json").read_text())["seed"] == winner
    assert sorted(path.name for path in out_folder.iterdir()) == ["clip.webp", "clip.webp.json"]


# --- node file inputs stay inside the model folders --------------------------------------------------------


def test_node_file_inputs_cannot_name_files_outside_the_model_folders(env):  # noqa: F811
    """Every file widget goes through ComfyUI's folder_paths.get_full_path, which keeps names inside the
    folder (ComfyUI skips its own "value not in list" check for inputs a node validates itself)."""
    models = Path(env.stubs.folder_paths.models_dir)
    checkpoint = models / "livephoto" / env.files.checkpoint
    dinov2 = models / env.files.dinov2
    # Working files where each traversal would land if it were followed.
    shutil.copy(checkpoint, models / "outside.safetensors")
    shutil.copy(checkpoint, models.parent / "far_outside.safetensors")
    shutil.copy(dinov2, models / "outside_dinov2.safetensors")
    shutil.copy(checkpoint, models / "livephoto" / "inside_copy.safetensors")
    assert env.load(livephoto_checkpoint="inside_copy.safetensors") is not None  # the copies do load

    node = env.node("LoadLivePhotoModel")
    refused = [
        {"livephoto_checkpoint": "../outside.safetensors"},
        {"livephoto_checkpoint": "../../far_outside.safetensors"},
        {"livephoto_checkpoint": str(models / "outside.safetensors")},
        {"livephoto_checkpoint": "../../../../../../etc/passwd"},
        {"dinov2": "livephoto/../outside_dinov2.safetensors"},
        {"dinov2": "livephoto/../../models/outside_dinov2.safetensors"},
        {"dinov2": "../outside_dinov2.safetensors"},
        {"dinov2": "/etc/passwd"},
        {"motion_module": "../../../../../../etc/passwd"},
    ]
    for names in refused:
        inputs = {"livephoto_checkpoint": env.files.checkpoint, "dinov2": env.files.dinov2,
                  "motion_module": "none", **names}
        assert isinstance(node.validate_inputs(**inputs), str), names  # refused before the prompt runs
        with pytest.raises(env.errors.InvalidInputError, match="is not in models/|not one of the listed"):
            env.load(**names)
