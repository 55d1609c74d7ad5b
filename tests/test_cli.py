"""The `livephoto` command: its outputs, and errors as one line and an exit status."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from livephoto_core.cli import main
from livephoto_core.video import read_metadata, read_video


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
    assert modes == [False, True]
    assert np.abs(read_video(low).frames.astype(int) - read_video(default).frames.astype(int)).max() <= 1


def test_existing_output_is_refused_before_loading_and_kept(tiny_files, photo, tmp_path, capsys):
    out = tmp_path / "out.gif"
    out.write_bytes(b"precious")
    assert animate(tiny_files, photo, "-o", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out} already exists; pass --overwrite or choose another name with -o"]
    assert out.read_bytes() == b"precious"
    assert animate(tiny_files, photo, "-o", str(out), "--overwrite") == 0
    assert len(read_video(out).frames) == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--intensity", "11"], "intensity must be a whole number from 1"),
        (["--frames", "10000"], "frames must be from 2 to 16"),
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
