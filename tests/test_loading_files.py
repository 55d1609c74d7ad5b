"""Reading weight files: safetensors header checks, safe pickles, unsafe pickles never run, hashes."""

import hashlib
import json
import os
import pickle
import random
import struct
import zipfile

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from livephoto_core.errors import ModelFileError
from livephoto_core.loading.files import (
    build_model,
    content_hash,
    file_sha256,
    load_state_dict,
    read_safetensors_header,
    read_safetensors_metadata,
)
from livephoto_core.testing.memory import peak_rss_mib


@pytest.fixture
def tensors():
    generator = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 4, generator=generator),
        "b.bias": torch.randn(5, generator=generator).half(),
        "c.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }


@pytest.fixture
def safetensors_file(tmp_path, tensors):
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"livephoto_config": "{}", "note": "x"})
    return path


def _rewrite_header(path, edit):
    """Apply ``edit`` to the parsed JSON header, keeping the header's byte length (padded with spaces)."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    edit(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert len(raw) <= size
    path.write_bytes(data[:8] + raw.ljust(size, b" ") + data[8 + size :])


def test_safetensors_round_trip(safetensors_file, tensors):
    state, metadata = load_state_dict(safetensors_file)
    assert metadata == {"livephoto_config": "{}", "note": "x"}
    assert state.keys() == tensors.keys()
    for key, value in tensors.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value)


def test_header_matches_the_safetensors_library(safetensors_file):
    shapes, metadata = read_safetensors_header(safetensors_file)
    with safe_open(str(safetensors_file), framework="pt") as reference:
        assert metadata == reference.metadata()
        assert shapes == {key: tuple(reference.get_slice(key).get_shape()) for key in reference.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert read_safetensors_metadata(safetensors_file) == metadata


def test_truncated_safetensors(safetensors_file):
    data = safetensors_file.read_bytes()
    safetensors_file.write_bytes(data[:-10])
    with pytest.raises(ModelFileError, match=r"model.safetensors is truncated or corrupt \(.*\); download it again"):
        load_state_dict(safetensors_file)


def test_header_that_lies_about_sizes(safetensors_file):
    def grow(header):
        header["a.weight"]["shape"] = [3, 5]  # 60 bytes where the offsets hold 48

    _rewrite_header(safetensors_file, grow)
    with pytest.raises(ModelFileError, match="truncated or corrupt .*does not match its shape"):
        read_safetensors_header(safetensors_file)


def test_header_with_overlapping_tensors(safetensors_file):
    def overlap(header):
        header["b.bias"]["data_offsets"] = header["c.ids"]["data_offsets"][:1] * 2
        header["b.bias"]["shape"] = [0]

    _rewrite_header(safetensors_file, overlap)
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        read_safetensors_header(safetensors_file)


@pytest.mark.parametrize(
    "content", [random.Random(0).randbytes(4096), b"\xff" * 8 + b"{}", struct.pack("<Q", 2) + b"[]"]
)
def test_random_bytes_as_safetensors(tmp_path, content):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="noise.safetensors is truncated or corrupt .*download it again"):
        load_state_dict(path)


def test_missing_empty_folder_and_foreign_suffix(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_state_dict(tmp_path / "absent.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"empty.safetensors is empty \(0 bytes\)"):
        load_state_dict(tmp_path / "empty.safetensors")
    (tmp_path / "folder.ckpt").mkdir()
    with pytest.raises(ModelFileError, match="is a folder; pass a weights file"):
        load_state_dict(tmp_path / "folder.ckpt")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelFileError, match="model.gguf is not a weights file LivePhoto reads"):
        load_state_dict(tmp_path / "model.gguf")


@pytest.mark.parametrize("zip_format", [True, False])
def test_ckpt_state_dict_is_unwrapped(tmp_path, tensors, zip_format):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tensors, "global_step": 12, "epoch": 3}, path, _use_new_zipfile_serialization=zip_format)
    state, metadata = load_state_dict(path)
    assert metadata == {}
    assert state.keys() == tensors.keys()
    assert all(torch.equal(state[key], value) for key, value in tensors.items())


class _WritesMarker:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "pickle_protocol_2", "pickle_protocol_4"])
def test_pickled_code_is_refused_and_never_run(tmp_path, writer):
    marker = tmp_path / "code_ran"
    payload = {"state_dict": {"w": torch.ones(2), "evil": _WritesMarker(marker)}}
    path = tmp_path / "evil.ckpt"
    if writer == "torch_zip":
        torch.save(payload, path)
    elif writer == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(writer[-1])))
    with pytest.raises(
        ModelFileError,
        match=r"evil.ckpt contains pickled code \(.*system.*\), which LivePhoto never runs; convert it to .safeten",
    ):
        load_state_dict(path)
    assert not marker.exists()


def test_corrupt_pickles(tmp_path, tensors):
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(random.Random(1).randbytes(2048))
    with pytest.raises(ModelFileError, match="noise.ckpt is truncated or corrupt"):
        load_state_dict(noise)
    whole = tmp_path / "whole.pt"
    torch.save(tensors, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="cut.pt is truncated or corrupt"):
        load_state_dict(cut)
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.ones(1)], not_a_dict)
    with pytest.raises(ModelFileError, match="list.pt holds a list, not a state dict"):
        load_state_dict(not_a_dict)


def test_hashes(tmp_path, safetensors_file):
    assert file_sha256(safetensors_file) == hashlib.sha256(safetensors_file.read_bytes()).hexdigest()
    assert content_hash(safetensors_file) == file_sha256(safetensors_file)

    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(safetensors_file.read_bytes())
    before = content_hash(folder)
    (folder / "README.md").write_text("not part of the model")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "download.json").write_text("{}")
    assert content_hash(folder) == before
    moved = tmp_path / "moved"
    folder.rename(moved)
    assert content_hash(moved) == before
    save_file({"a.weight": torch.zeros(3, 4)}, str(moved / "unet" / "diffusion_pytorch_model.safetensors"))
    assert content_hash(moved) != before


def test_build_model_names_missing_unexpected_and_misshapen_weights():
    def make():
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))

    good = make().state_dict()
    model = build_model(make, dict(good), torch.float64, "demo.safetensors")
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert all(torch.equal(model.state_dict()[k], v.double()) for k, v in good.items())
    with pytest.raises(
        ModelFileError,
        match=r"demo.safetensors does not fit .*1 missing \(e.g. 1.bias\); 1 unexpected \(e.g. 2.weight\)",
    ):
        build_model(
            make,
            {**{k: v for k, v in good.items() if k != "1.bias"}, "2.weight": torch.ones(1)},
            torch.float32,
            "demo.safetensors",
        )
    with pytest.raises(ModelFileError, match=r"demo.safetensors does not fit .*size mismatch for 0.weight"):
        build_model(make, {**good, "0.weight": torch.ones(5, 3)}, torch.float32, "demo.safetensors")


# --- a small file that unpacks to gigabytes ---------------------------------------------------------------


def zip_checkpoint(path, members: dict[str, int]):
    """A zip laid out as torch's, each member `name` holding `size` zero bytes deflated: 256 MiB is 250 KB on disk.
    A member ending in .pkl starts as a pickle would (protocol 4, then a BINBYTES8 of the rest)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, size in members.items():
            with archive.open(name, "w", force_zip64=True) as member:
                if name.endswith(".pkl"):
                    member.write(b"\x80\x04\x8e" + struct.pack("<Q", size - 12))
                    size -= 11
                for _ in range(size // 2**20):
                    member.write(bytes(2**20))
                member.write(bytes(size % 2**20))
    return path


def test_a_zip_pickle_that_unpacks_past_the_bound_is_refused_from_the_directory(tmp_path, monkeypatch):
    path = zip_checkpoint(tmp_path / "bomb.pt", {"archive/data.pkl": 256 * 2**20, "archive/version": 2})
    assert path.stat().st_size < 2**20

    def never(*args, **kwargs):
        raise AssertionError("the member was read")

    monkeypatch.setattr(torch, "load", never)
    monkeypatch.setattr(zipfile.ZipFile, "read", never)
    monkeypatch.setattr(zipfile.ZipFile, "open", never)
    with pytest.raises(ModelFileError) as caught:
        load_state_dict(path)
    assert str(caught.value) == (
        "bomb.pt is not a checkpoint LivePhoto reads: its pickle archive/data.pkl unpacks to 268,435,456 bytes, and a "
        "checkpoint's pickle is far under 64 MiB (its tensors lie beside it); pass the model's weights file, or "
        "convert it to .safetensors"
    )


def test_zip_members_that_inflate_past_the_bound_are_refused(tmp_path):
    path = zip_checkpoint(tmp_path / "bomb.pt", {"archive/data.pkl": 100, "archive/version": 80 * 2**20})
    with pytest.raises(ModelFileError, match=r"bomb.pt is not a checkpoint LivePhoto reads: its [\d,]+ compressed "
                                             r"bytes unpack to 83,886,180 \(PyTorch stores checkpoints uncompressed\)"):
        load_state_dict(path)


def test_the_code_scan_reads_a_pickle_only_up_to_the_bound(tmp_path, monkeypatch):
    from livephoto_core.loading import files

    monkeypatch.setattr(files, "_MAX_PICKLE_BYTES", 1000)
    code = b"\x80\x02cposix\nsystem\n."
    path = tmp_path / "legacy.ckpt"
    path.write_bytes(code + b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"\0" * 100)  # declares a 1 TiB argument
    assert files._pickled_globals(path, is_zip=False) == ["posix.system"]
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2000) + b"\0" * 2000 + code)  # the code lies past the bound
    assert files._pickled_globals(path, is_zip=False) == []
    zipped = tmp_path / "zipped.pt"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02c" + b"a" * 2000 + b"\nsystem\n.")  # a line past the bound
        archive.writestr("archive/other.pkl", code)
    assert files._pickled_globals(zipped, is_zip=True) == ["posix.system"]


INSPECT = "from livephoto_core.cli import main; main(['inspect', {path!r}])"


def test_inspecting_a_small_zip_of_a_huge_pickle_takes_no_more_memory_than_a_real_checkpoint(tmp_path, tensors):
    # Before the bound, the pickle was unpacked whole twice (by torch.load, then by the code scan): 3.2 GiB for a
    # 1 GiB pickle; 256 MiB here keep the test fast.
    bomb = zip_checkpoint(tmp_path / "bomb.pt", {"archive/data.pkl": 256 * 2**20, "archive/version": 2})
    real = tmp_path / "real.pt"
    torch.save(tensors, real)
    bomb_peak, _ = peak_rss_mib(INSPECT.format(path=str(bomb)))
    real_peak, _ = peak_rss_mib(INSPECT.format(path=str(real)))
    assert bomb_peak < real_peak + 30, (bomb_peak, real_peak)
