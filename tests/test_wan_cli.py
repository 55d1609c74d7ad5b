"""`livephoto animate --wan-dit ...` and `livephoto inspect` with LivePhoto-Wan2.1's files: a tiny end-to-end run
(the parity fixtures' DiT and LoRA, a tiny umT5 and Wan VAE) and the one-line refusals."""

import numpy as np
import pytest
import torch
from PIL import Image

from livephoto_core.cli import main
from livephoto_core.video import read_metadata, read_video
from livephoto_core.wan import keys

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "wan"
BASE, LORA = FIXTURES / "tiny_base.safetensors", FIXTURES / "tiny_lora.safetensors"


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    """Wan2.1-T2V-1.3B-Diffusers' text_encoder/, tokenizer/ and vae/ at toy sizes (text width 32, as the DiT's)."""
    from livephoto_core.testing.tiny import tiny_wan_folder

    return tiny_wan_folder(tmp_path_factory.mktemp("wan"))


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def wan_args(folder):
    return ["--wan-dit", str(BASE), "--wan-lora", str(LORA), "--wan-base", str(folder)]


def test_animate_runs_the_wan_model_and_writes_its_settings(wan_folder, photo, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(keys, "WAN_HEAD_DIM", 12)  # the tiny DiT's heads; Wan's own are 128 wide
    output = tmp_path / "out.webp"
    code = main(["animate", str(photo), "the red circle moves left", *wan_args(wan_folder), "--intensity", "3",
                 "--frames", "5", "--size", "32", "32", "--steps", "2", "--seed", "1", "--dtype", "float32",
                 "-o", str(output)])
    assert code == 0, capsys.readouterr().err
    assert "(5 frames at 25 fps, seed 1, intensity 3 of 6, LivePhoto-Wan2.1)" in capsys.readouterr().out
    clip = read_video(output)
    assert len(clip.frames) == 5 and clip.frames[0].shape[:2] == (32, 32)
    settings = read_metadata(output)
    assert settings["model"] == "LivePhoto-Wan2.1" and settings["intensity"] == 3 and settings["fps"] == 25
    assert settings["lora_alpha"] == 1.2 and settings["seed"] == 1


@pytest.mark.parametrize("extra, message", [
    (["--intensity", "7"], "LivePhoto-Wan2.1 takes an intensity from 1 to 6 (one level for the whole video); got 7"),
    (["--intensity", "0"], "takes an intensity from 1 to 6"),
    (["--intensity", "2:0,5:4"], "takes an intensity from 1 to 6"),
    (["--frames", "8"], "makes 4k + 1 frames (5, 9, ..., 81); got 8, try 5"),
    (["--size", "30", "32"], "multiples of 16"),
    (["--lora-alpha", "9"], "--lora-alpha must be 0 to 4"),
    (["--loop"], "--loop: not used by LivePhoto-Wan2.1"),
])
def test_bad_wan_arguments_are_one_line_errors_before_loading(wan_folder, photo, tmp_path, capsys, extra, message):
    code = main(["animate", str(photo), "waves", *wan_args(wan_folder), "-o", str(tmp_path / "o.webp"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_an_sd15_file_as_the_wan_dit_is_refused(wan_folder, photo, tmp_path, capsys):
    from safetensors.torch import save_file

    sd = tmp_path / "v1-5.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
               "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(32, 768)},
              sd)
    args = ["--wan-dit", str(sd), "--wan-lora", str(LORA), "--wan-base", str(wan_folder)]
    code = main(["animate", str(photo), "waves", *args, "-o", str(tmp_path / "o.webp")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "v1-5.safetensors is an SD-1.5" in err and "--wan-dit needs the LivePhoto-Wan2.1" in err


def test_a_missing_wan_file_is_named(photo, tmp_path, capsys):
    code = main(["animate", str(photo), "waves", "--wan-dit", str(BASE), "-o", str(tmp_path / "o.webp")])
    assert code == 2 and "--wan-lora is missing" in capsys.readouterr().err


def test_inspect_names_both_wan_files(capsys):
    assert main(["inspect", str(BASE)]) == 0 and main(["inspect", str(LORA)]) == 0
    out = capsys.readouterr().out
    assert "tiny_base.safetensors: a LivePhoto-Wan2.1 DiT (2 blocks, width 24; use it with --wan-dit)" in out
    assert "intensity_levels: 1-6" in out
    assert "tiny_lora.safetensors: a LoRA (PEFT format) for Wan2.1 (LivePhoto-Wan2.1's goes to --wan-lora)" in out
