"""AnimateDiff motion modules in the original layout, checked against the adapter they were written
from and against diffusers' MotionAdapter.from_single_file."""

import hashlib
import time

import pytest
import torch
from livephoto_core.testing.ldm_layout import motion_adapter_to_original, write_tiny_sd15_file
from safetensors.torch import save_file
from livephoto_core.testing.tiny import randomize_, tiny_motion_adapter

from livephoto_core.errors import ModelFileError
from livephoto_core.loading.motion_module import load_motion_adapter


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _write(path, adapter, max_seq_length):
    state = motion_adapter_to_original(adapter.state_dict(), max_seq_length)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _assert_same_weights(model, reference):
    mine, theirs = model.state_dict(), reference.state_dict()
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(mine[key], theirs[key]), key


VERSIONS = [("v1", 24, False), ("v2", 32, True), ("v3", 32, False)]


@pytest.mark.parametrize("version,length,mid", VERSIONS)
def test_versions_load_like_the_source_and_from_single_file(tmp_path, version, length, mid):
    from diffusers import MotionAdapter

    source = tiny_motion_adapter(seed=length + mid, max_seq_length=length, mid_block=mid)
    path = _write(tmp_path / f"mm_{version}.safetensors", source, length)
    loaded = load_motion_adapter(path, block_out_channels=(32, 64))
    assert (loaded.version, loaded.max_seq_length, loaded.has_mid_block) == (version, length, mid)
    assert loaded.source == str(path)
    assert loaded.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    # The positional tables are dropped in conversion and recomputed: equal weights here also show
    # that MotionAdapter's table is AnimateDiff's (the helper writes AnimateDiff's formula).
    _assert_same_weights(loaded.adapter, source)

    source.save_config(tmp_path / "config")
    reference = MotionAdapter.from_single_file(str(path), config=str(tmp_path / "config"), local_files_only=True)
    _assert_same_weights(loaded.adapter, reference)


def test_ckpt_and_diffusers_layouts(tmp_path):
    source = tiny_motion_adapter(seed=1, max_seq_length=32, mid_block=True)
    ckpt = _write(tmp_path / "mm.ckpt", source, 32)
    _assert_same_weights(load_motion_adapter(ckpt).adapter, source)

    flat = tmp_path / "mm_diffusers.safetensors"
    save_file(source.state_dict(), str(flat))
    loaded = load_motion_adapter(flat)
    assert loaded.version == "v2"
    _assert_same_weights(loaded.adapter, source)

    folder = tmp_path / "adapter"
    source.save_pretrained(folder)
    loaded = load_motion_adapter(folder)
    assert (loaded.version, loaded.has_mid_block) == ("v2", True)
    _assert_same_weights(loaded.adapter, source)


def test_two_layers_per_block_and_half_precision(tmp_path):
    source = tiny_motion_adapter(
        seed=2, max_seq_length=32, mid_block=False, motion_layers_per_block=2, motion_transformer_layers_per_block=2
    )
    path = _write(tmp_path / "mm.safetensors", source, 32)
    loaded = load_motion_adapter(path, dtype=torch.float16)
    assert {p.dtype for p in loaded.adapter.parameters()} == {torch.float16}
    assert loaded.adapter.config.motion_layers_per_block == 2
    reference = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    assert all(torch.equal(loaded.adapter.state_dict()[k], v) for k, v in reference.items())


def test_widths_must_match_the_unet(tmp_path):
    path = _write(tmp_path / "mm.safetensors", tiny_motion_adapter(), 32)
    with pytest.raises(
        ModelFileError,
        match=r"mm.safetensors is a motion module for UNet widths \(32, 64\) but the base "
        r"UNet has \(320, 640, 1280, 1280\); use a motion module made for this base",
    ):
        load_motion_adapter(path, block_out_channels=[320, 640, 1280, 1280])


def test_non_motion_files_are_refused(tmp_path):
    base = tmp_path / "base.safetensors"
    write_tiny_sd15_file(base)
    with pytest.raises(
        ModelFileError,
        match=r"base.safetensors is an SD-1.5-style checkpoint .*; --motion-module needs an "
        r"AnimateDiff SD-1.5 motion module .*; pass it with --base",
    ):
        load_motion_adapter(base)
    beta = tmp_path / "mm_sdxl_v10_beta.safetensors"
    shapes = {}
    for level, width in enumerate((320, 640, 1280)):
        shapes[f"down_blocks.{level}.motion_modules.0.temporal_transformer.norm.weight"] = torch.ones(width)
        shapes[f"up_blocks.{level}.motion_modules.0.temporal_transformer.norm.weight"] = torch.ones(
            (1280, 640, 320)[level]
        )
    save_file(shapes, str(beta))
    with pytest.raises(
        ModelFileError,
        match=r"AnimateDiff SDXL motion module \(beta\), not for SD-1.5.*use an SD-1.5 motion module instead",
    ):
        load_motion_adapter(beta)


def test_torn_module_names_missing_weights(tmp_path):
    state = motion_adapter_to_original(tiny_motion_adapter().state_dict(), 32)
    torn = tmp_path / "torn.safetensors"
    save_file({k: v for k, v in state.items() if "proj_out" not in k}, str(torn))
    with pytest.raises(
        ModelFileError, match=r"motion module torn.safetensors does not fit .*missing \(e.g. .*proj_out"
    ):
        load_motion_adapter(torn)


@pytest.mark.slow
def test_full_size_v2(tmp_path):
    from diffusers import MotionAdapter

    started = time.perf_counter()
    source = randomize_(MotionAdapter(motion_max_seq_length=32, use_motion_mid_block=True), 0).eval()
    path = _write(tmp_path / "mm_sd_v15_v2.safetensors", source, 32)
    written = time.perf_counter()
    loaded = load_motion_adapter(path, block_out_channels=(320, 640, 1280, 1280))
    load_seconds = time.perf_counter() - written
    assert (loaded.version, loaded.max_seq_length, loaded.has_mid_block) == ("v2", 32, True)

    def public(config):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.adapter.config) == public(source.config)
    _assert_same_weights(loaded.adapter, source)
    source.save_config(tmp_path / "config")
    _assert_same_weights(
        loaded.adapter,
        MotionAdapter.from_single_file(str(path), config=str(tmp_path / "config"), local_files_only=True),
    )
    print(
        f"\nfull-size v2 motion module: build+write {written - started:.1f} s, load {load_seconds:.1f} s, "
        f"file {path.stat().st_size / 2**30:.2f} GiB"
    )
