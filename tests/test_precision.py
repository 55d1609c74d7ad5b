"""`--dtype auto`: which precision a render gets, and that the CLI uses it and says so."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from livephoto_core import precision
from livephoto_core.cli import main
from livephoto_core.precision import auto_dtype, resolve_dtype
from livephoto_core.precision import cpu_has_native_bf16 as real_probe


@pytest.mark.parametrize("native, device, expected", [
    (True, "cpu", torch.bfloat16),
    (False, "cpu", torch.float32),
    (True, "cuda", torch.float16),
    (False, "cuda:1", torch.float16),
    (True, "mps", torch.float32),
])
def test_auto_picks_by_device_and_processor(monkeypatch, native, device, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert auto_dtype(device) == expected
    assert resolve_dtype("auto", device) == expected


def test_a_named_dtype_is_kept_whatever_the_processor(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("float16", "cuda") == torch.float16


def test_the_real_probe_answers_a_bool():
    assert isinstance(real_probe(), bool)  # imported before the conftest's stand-in replaced it


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_the_cli_renders_in_the_auto_dtype_records_it_and_says_so(tiny_files, tmp_path, monkeypatch, capsys, native,
                                                                  expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    photo, out = tmp_path / "photo.png", tmp_path / "out.webp"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photo)
    assert main(["animate", str(photo), "the red circle moves left", "--frames", "3", "--steps", "2", "-o", str(out),
                 "--livephoto", str(tiny_files / "livephoto.safetensors"), "--base", str(tiny_files / "base.safetensors"),
                 "--dinov2", str(tiny_files / "dinov2"), "--tokenizer", str(tiny_files / "tokenizer")]) == 0
    assert json.loads((tmp_path / "out.webp.json").read_text())["dtype"] == expected
    loading = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("loading "))
    assert loading.endswith(f"in {expected} (--dtype auto; --dtype float32 for full precision) ...") == native
    assert loading.endswith(f"in {expected} ...") == (not native)
