"""The `livephoto` command: its outputs, and errors as one line and an exit status."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from livephoto_core.cli import main
from livephoto_core.video import read_metadata, read_video

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (72, 64, 3), dtype=np.uint8)).save(path)
    return path


def model_args(folder):
    return ["--livephoto", str(folder / "livephoto.safetensors"), "--base", str(folder / "base.safetensors"),
            "--dinov2", str(folder / "dinov2"), "--tokenizer", str(folder / "tokenizer")]


def animate(folder, photo, *extra):
    return main(["animate", str(photo), "the red circle moves left", "--frames", "3", "--steps", "2",
                 *model_args(folder), *extra])


def test_help_does_not_import_torch():
    code = "import sys; from livephoto_core.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_animate_writes_the_video_with_its_settings(tiny_files, photo, tmp_path, capsys):
    out = tmp_path / "out.webp"
    assert animate(tiny_files, photo, "--seed", "11", "--intensity", "7", "-o", str(out)) == 0
    assert read_video(out).frames.shape == (3, 64, 64, 3)
    metadata = read_metadata(out)
    assert metadata["seed"] == 11 and metadata["intensity"] == 7 and 1 <= metadata["measured_intensity"] <= 10
    assert "wrote" in capsys.readouterr().out


def test_fps_and_ping_pong_change_the_timing_and_order_only(tiny_files, photo, tmp_path, capsys):
    plain, looped = tmp_path / "plain.webp", tmp_path / "looped.webp"
    assert animate(tiny_files, photo, "--seed", "5", "-o", str(plain)) == 0
    assert animate(tiny_files, photo, "--seed", "5", "--fps", "12", "--ping-pong", "-o", str(looped)) == 0
    forward, both = read_video(plain), read_video(looped)
    assert both.fps == pytest.approx(12, rel=0.01) and forward.fps == pytest.approx(8, rel=0.01)  # whole ms per frame
    np.testing.assert_array_equal(both.frames, forward.frames[[0, 1, 2, 1]])  # 3 frames -> 0 1 2 1
    metadata = read_metadata(looped)
    assert metadata["playback_fps"] == 12 and metadata["ping_pong"] is True and metadata["fps"] == 8
    assert "4 frames at 12 fps" in capsys.readouterr().out


def test_low_memory_gives_the_same_video(tiny_files, photo, tmp_path, monkeypatch):
    import livephoto_core.loading.assemble as loading

    modes, build = [], loading.LivePhotoPipeline

    def recording(*args, **kwargs):
        modes.append(kwargs["low_memory"])
        return build(*args, **kwargs)

    monkeypatch.setattr(loading, "LivePhotoPipeline", recording)
    default, low = tmp_path / "default.webp", tmp_path / "low.webp"
    assert animate(tiny_files, photo, "--seed", "3", "-o", str(default)) == 0
    assert animate(tiny_files, photo, "--seed", "3", "--low-memory", "-o", str(low)) == 0
    assert modes == [None, True]  # None: the pipeline chooses from the memory free
    assert np.abs(read_video(low).frames.astype(int) - read_video(default).frames.astype(int)).max() <= 1


def test_existing_output_is_refused_before_loading_and_kept(tiny_files, photo, tmp_path, capsys):
    out = tmp_path / "out.gif"
    out.write_bytes(b"precious")
    assert animate(tiny_files, photo, "-o", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out} already exists; pass --overwrite or choose another name"]
    assert out.read_bytes() == b"precious"
    assert animate(tiny_files, photo, "-o", str(out), "--overwrite") == 0
    assert len(read_video(out).frames) == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--intensity", "11"], "intensity must be a whole number from 1"),
        (["--frames", "10000"], "frames must be from 2 to 512; got 10000"),
        (["-o", "out.avi"], "the output must end in .webp, .gif, .mp4"),
        (["--base", "nowhere.safetensors"], "nowhere.safetensors"),
    ],
)
def test_bad_arguments_are_one_line_errors(tiny_files, photo, tmp_path, capsys, extra, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert animate(tiny_files, photo, *extra) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert message in err.strip().splitlines()[-1]


def loading_is_recorded(monkeypatch) -> list:
    """Replace the model loading with a recorder: a refusal must come before it."""
    import livephoto_core.loading.assemble as loading

    loads = []
    monkeypatch.setattr(loading, "load_pipeline", lambda *args, **kwargs: loads.append(args) or 1 / 0)
    return loads


# Outputs that cannot be written, each as (what to lay out in the folder, -o name, extra flags, the line's words).
UNWRITABLE_OUTPUTS = {
    "missing folder": (lambda d: None, "nowhere/out.webp", [], "folder {d}/nowhere does not exist; create it first"),
    "folder is a file": (lambda d: (d / "notes.txt").write_text("x"), "notes.txt/out.webp", [],
                         "{d}/notes.txt is a file, not a folder; choose another folder"),
    "under a file": (lambda d: (d / "notes.txt").write_text("x"), "notes.txt/sub/out.gif", [],
                     "{d}/notes.txt is a file, not a folder"),
    "dangling symlink": (lambda d: (d / "out.webp").symlink_to(d / "gone.webp"), "out.webp", [],
                         "{d}/out.webp is a symbolic link to {d}/gone.webp, which does not exist; remove the link"),
    "dangling symlink, --overwrite": (lambda d: (d / "out.webp").symlink_to(d / "gone.webp"), "out.webp",
                                      ["--overwrite"], "which does not exist; remove the link"),
    "a folder": (lambda d: (d / "out.mp4").mkdir(), "out.mp4", [], "{d}/out.mp4 is a folder; give a file name"),
    "a folder, --overwrite": (lambda d: (d / "out.mp4").mkdir(), "out.mp4", ["--overwrite"],
                              "{d}/out.mp4 is a folder; give a file name"),
    "existing sidecar": (lambda d: (d / "out.webp.json").write_text("{}"), "out.webp", [],
                         "{d}/out.webp.json already exists (the settings sidecar of out.webp); pass --overwrite"),
    "sidecar is a folder, --overwrite": (lambda d: (d / "out.gif.json").mkdir(), "out.gif", ["--overwrite"],
                                         "{d}/out.gif.json (the settings sidecar of out.gif) is a folder"),
    "existing output": (lambda d: (d / "out.webp").write_bytes(b"precious"), "out.webp", [],
                        "{d}/out.webp already exists; pass --overwrite"),
    "existing Live Photo still": (lambda d: (d / "pair.jpg").write_bytes(b"precious"), "pair.livephoto", [],
                                  "{d}/pair.jpg already exists (the photo of the Live Photo pair.livephoto)"),
}


@pytest.mark.parametrize("case", list(UNWRITABLE_OUTPUTS))
def test_outputs_that_cannot_be_written_are_refused_before_loading(tiny_files, photo, tmp_path, capsys, monkeypatch,
                                                                   case):
    """One line naming the path and the fix, before the model loads; nothing in the folder changes."""
    lay_out, name, extra, words = UNWRITABLE_OUTPUTS[case]
    folder = tmp_path / "out"
    folder.mkdir()
    lay_out(folder)
    before = sorted(os.listdir(folder))
    loads = loading_is_recorded(monkeypatch)
    assert animate(tiny_files, photo, "-o", str(folder / name), *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words.format(d=folder) in err[0], err
    assert loads == [] and sorted(os.listdir(folder)) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--scheduler", "k_lms_turbo"], "unknown scheduler 'k_lms_turbo'; choose one of: ddim"),
        (["--device", "gpu"], "unknown device 'gpu'; use cpu, cuda, cuda:N or mps"),
        (["--guidance", "1e6"], "guidance scale must be from 0 to 100"),
        (["--guidance", "nan"], "guidance scale must be a finite number"),
        (["--negative", "blur\udce9"], "the negative prompt holds the byte 0xe9"),
        (["--fps", "0"], "fps must be from"),
        (["--intensity", "0:0,5:3"], "intensity schedule '0:0,5:3': level 0 is outside 1 (still) to 10"),
        (["--intensity", "2:5,8:3"], "keyframes must be in order of frame, each after the last"),
        (["--intensity", "2:0,8:31"], "a keyframe at frame 31, beyond the video's last frame"),
        (["--window-length", "17"], "window length must be from 2 to 16 frames (the longest clip this model's"),
        (["--frames", "12", "--window-length", "4", "--window-overlap", "4"],
         "window overlap must be from 0 to 3 frames (less than the window length, 4); got 4"),
        (["--loop"], "a loop needs at least two windows"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_loading(tiny_files, photo, tmp_path, capsys, monkeypatch, extra,
                                                             message):
    loads = loading_is_recorded(monkeypatch)
    assert animate(tiny_files, photo, "-o", str(tmp_path / "out.webp"), *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert loads == [] and not (tmp_path / "out.webp").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has a GPU")
def test_cuda_on_a_torch_without_it_is_refused_before_loading(tiny_files, photo, tmp_path, capsys, monkeypatch):
    loads = loading_is_recorded(monkeypatch)
    assert animate(tiny_files, photo, "-o", str(tmp_path / "out.webp"), "--device", "cuda") == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = "CUDA is not available in this torch build" if torch.version.cuda is None else "sees no GPU"
    assert len(err) == 1 and err[0].startswith("error: device cuda: ") and expected in err[0], err
    assert loads == []


def test_a_prompt_typed_in_a_latin1_shell_is_refused_in_one_line(tiny_files, photo, tmp_path):
    """The real thing: the bytes of 'caméra' in Latin-1 on the command line, which Python hands over as a
    lone surrogate in sys.argv."""
    command = [sys.executable.encode(), b"-m", b"livephoto_core.cli", b"animate", bytes(photo), b"cam\xe9ra zooms in",
               b"-o", bytes(tmp_path / "out.webp"), *(arg.encode() for arg in model_args(tiny_files))]
    done = subprocess.run(command, capture_output=True, env={**os.environ, "LC_ALL": "C", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().splitlines() == [
        "error: the prompt holds the byte 0xe9, which is not UTF-8 (character 4); pass UTF-8 text (in a shell, use a "
        "UTF-8 locale such as LANG=C.UTF-8)"
    ]
    assert not (tmp_path / "out.webp").exists()


def test_intensity_command_reports_ssim_and_level(tmp_path, capsys):
    frames = np.zeros((6, 32, 32, 3), np.uint8)
    for i in range(6):
        frames[i, 8:16, 4 + 3 * i : 12 + 3 * i] = 255
    from livephoto_core.video import write_video

    path = write_video(frames, tmp_path / "square.mp4")
    assert main(["intensity", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mean adjacent SSIM" in out and "intensity level" in out


def test_intensity_of_an_undecodable_video_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    assert main(["intensity", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.mp4" in err[0]


def test_inspect_names_each_kind(tiny_files, capsys):
    for name, words in [("livephoto.safetensors", "LivePhoto checkpoint"), ("base.safetensors", "SD-1.5"),
                        ("dinov2", "DINOv2")]:
        assert main(["inspect", str(tiny_files / name)]) == 0
        assert words in capsys.readouterr().out


def test_inspect_refuses_broken_files_in_one_line(tmp_path, capsys):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "junk.safetensors").write_bytes(b"\x01\x02" * 100)
    for name in ("empty.safetensors", "junk.safetensors", "missing.safetensors"):
        assert main(["inspect", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and name in err[0], err


# --- batches: several photos, prompt lines, a manifest --------------------------------------------------


def batch(folder, *args):
    return main(["animate", *args, "--frames", "3", "--steps", "2", *model_args(folder)])


@pytest.fixture
def other_photo(tmp_path):
    path = tmp_path / "other.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_several_photos_or_prompt_lines_make_a_video_each_named_from_its_row(tiny_files, photo, other_photo,
                                                                              tmp_path, capsys):
    out = tmp_path / "videos"
    out.mkdir()
    assert batch(tiny_files, str(photo), str(other_photo), "the red circle moves left", "--seed", "4",
                 "--output-dir", str(out)) == 0
    videos = sorted(out.glob("*.webp"))
    assert [video.name.split("-")[:2] for video in videos] == [["0001", "photo"], ["0002", "other"]]
    assert [read_metadata(video)["seed"] for video in videos] == [4, 4]
    printed = capsys.readouterr().out
    assert f"video 2 (other.png, 'the red circle moves left'): wrote {videos[1]}" in printed

    lines = "the red circle moves left\n\nthe red circle moves right\n"
    assert batch(tiny_files, str(photo), lines, "--output-dir", str(out), "--format", "gif") == 0
    gifs = sorted(out.glob("*.gif"))
    assert [read_metadata(gif)["prompt"] for gif in gifs] == ["the red circle moves left", "the red circle moves right"]
    assert [gif.name.split("-")[:2] for gif in gifs] == [["0001", "photo"], ["0002", "photo"]]


def write_manifest(tmp_path, text: str) -> Path:
    manifest = tmp_path / "rows.csv"
    manifest.write_text(text)
    return manifest


MANIFEST = "photo,prompt,intensity,seed\nphoto.png,the red circle moves left,3,7\nphoto.png,the red circle moves right,,\n"


def test_a_manifest_rerun_skips_the_rows_written_and_renders_the_rest(tiny_files, photo, tmp_path, capsys,
                                                                      monkeypatch):
    manifest = write_manifest(tmp_path, MANIFEST)
    out = tmp_path / "videos"
    out.mkdir()
    assert batch(tiny_files, "--manifest", str(manifest), "--output-dir", str(out), "--intensity", "6") == 0
    first, second = sorted(out.glob("*.webp"))
    assert read_metadata(first)["intensity"] == 3 and read_metadata(first)["seed"] == 7
    assert read_metadata(second)["intensity"] == 6  # the empty cell takes --intensity
    kept = first.read_bytes()
    capsys.readouterr()

    # A run that stopped after row 1: row 2's video is not there (an atomic write leaves nothing half-written).
    second.unlink()
    Path(f"{second}.json").unlink()
    assert batch(tiny_files, "--manifest", str(manifest), "--output-dir", str(out), "--intensity", "6") == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"skipped {manifest} row 1 (line 2): {first} is already written"
    assert printed[1].startswith(f"{manifest} row 2 (line 3) (photo.png, 'the red circle moves right'): wrote {second}")
    assert first.read_bytes() == kept and second.is_file()

    # Everything written: nothing to load. Other settings make other videos, under other names.
    loads = loading_is_recorded(monkeypatch)
    assert batch(tiny_files, "--manifest", str(manifest), "--output-dir", str(out), "--intensity", "6") == 0
    assert loads == [] and len(capsys.readouterr().out.splitlines()) == 2
    assert batch(tiny_files, "--manifest", str(manifest), "--output-dir", str(out), "--intensity", "6",
                 "--guidance", "2") == 1  # the recorder's load fails: another guidance renders the rows again
    assert len(loads) == 1


@pytest.mark.parametrize(
    "manifest, extra, message",
    [
        ("photo,prompt\nmissing.png,the red circle moves left\n", [],
         "rows.csv row 1 (line 2): {d}/missing.png does not exist; check the path"),
        ("photo,prompt,intensity\nphoto.png,left,3\nphoto.png,left,11\n", [],
         "rows.csv row 2 (line 3): intensity must be a whole number from 1"),
        ("photo,prompt,seed\nphoto.png,left,x\n", [], "rows.csv row 1 (line 2): seed must be a whole number; got 'x'"),
        ("photo,prompt\nphoto.png,\n", [], "rows.csv row 1 (line 2) has no prompt; every row needs a photo and a prompt"),
        ("photo,prompt,intesity\nphoto.png,left,3\n", [],
         "the header is photo,prompt,intesity; a manifest's first line names its columns, photo,prompt,intensity,seed"),
        ("photo,prompt\n", [], "rows.csv has a header but no rows"),
        ("photo,prompt\nphoto.png,left,3\n", [], "rows.csv row 1 (line 2) has more cells than the header names"),
        (MANIFEST, ["-o", "out.webp"], "-o names one video and this batch makes 2; give --output-dir"),
        (MANIFEST, ["--output-dir", "nowhere"], "folder nowhere does not exist; create it first"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_row_before_loading(tiny_files, photo, tmp_path, capsys, monkeypatch,
                                                                  manifest, extra, message):
    monkeypatch.chdir(tmp_path)
    loads = loading_is_recorded(monkeypatch)
    path = write_manifest(tmp_path, manifest)
    assert batch(tiny_files, "--manifest", str(path), *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(d=tmp_path) in err[0], err
    assert loads == []


@pytest.mark.parametrize(
    "inputs, extra, message",
    [
        (["{photo}", "{photo}", "one\ntwo\nthree"], [], "2 photos and 3 prompts do not pair up: give one photo"),
        (["{photo}"], [], "animate needs a photo and a prompt: livephoto animate IMAGE [IMAGE ...] PROMPT"),
        (["{photo}", "{photo}"], [], "the last argument is the prompt, and "),
        (["{photo}", "left"], ["--manifest", "rows.csv"], "give IMAGE and PROMPT or --manifest, not both"),
        (["{photo}", "left"], ["--output-dir", "."], "--output-dir and --format are for a batch of videos"),
        (["{photo}", "{photo}", "left"], ["-o", "out.webp"], "-o names one video and this batch makes 2"),
    ],
)
def test_photos_and_prompts_that_make_no_batch_are_refused_before_loading(tiny_files, photo, tmp_path, capsys,
                                                                          monkeypatch, inputs, extra, message):
    monkeypatch.chdir(tmp_path)
    loads = loading_is_recorded(monkeypatch)
    assert batch(tiny_files, *[arg.format(photo=photo) for arg in inputs], *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert loads == []
