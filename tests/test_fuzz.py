"""Fuzzing the readers (issue 7): damaged weights files and videos get a LivePhotoError or load; never a raw
exception from json, struct, safetensors, torch, PyAV or Pillow.

Each test mutates a valid tiny file (a LivePhoto checkpoint, an SD-1.5 single file, an MP4, a WebP) with
hypothesis: the safetensors length prefix, the JSON header (tensor entries, metadata, the LivePhoto config
inside it), the bytes anywhere, truncation and insertion. Examples are bounded by max_examples (about a
minute in all on 2 cores); no example database is written.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livephoto_core.errors import LivePhotoError
from livephoto_core.loading.checkpoint import read_livephoto_checkpoint
from livephoto_core.loading.detect import detect_path
from livephoto_core.loading.files import load_state_dict
from livephoto_core.video import read_video, write_video

pytestmark = pytest.mark.slow


def fuzz(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


SAFETENSORS_READERS = (detect_path, load_state_dict, read_livephoto_checkpoint)
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "C64", "X9", ""]

# Any JSON value, for a field of the header: numbers big and negative, text, nesting.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
plausible = {
    "dtype": st.sampled_from(DTYPES),
    "shape": st.lists(st.integers(-2, 2**40), max_size=5),
    "data_offsets": st.lists(st.integers(-2, 2**40), min_size=0, max_size=3),
}


class Sample(bytes):
    """Mutated file bytes that print as what was done to them (hypothesis shows failing examples)."""

    def __new__(cls, data: bytes, note: str):
        sample = super().__new__(cls, data)
        sample.note = note
        return sample

    def __repr__(self) -> str:
        return f"<{len(self)} bytes: {self.note[:400]}>"


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join_safetensors(header, body: bytes, padding: int = 0) -> bytes:
    raw = json.dumps(header).encode() + b" " * padding
    return struct.pack("<Q", len(raw)) + raw + body


@st.composite
def mutated_bytes(draw, data: bytes, hot: int = 64) -> bytes:
    """Flips (half of them in the first `hot` bytes, where headers are), a cut, an insertion or a deletion."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    position = st.one_of(st.integers(0, min(hot, len(data) - 1)), st.integers(0, len(data) - 1))
    if kind == "flip":
        out = bytearray(data)
        flips = draw(st.lists(st.tuples(position, st.integers(0, 255)), min_size=1, max_size=16))
        for index, value in flips:
            out[index] = value
        return Sample(bytes(out), f"flip (offset, byte) {flips}")
    if kind == "truncate":
        size = draw(st.integers(0, len(data) - 1))
        return Sample(data[:size], f"cut to {size} bytes")
    at = draw(position)
    if kind == "insert":
        extra = draw(st.binary(min_size=1, max_size=64))
        return Sample(data[:at] + extra + data[at:], f"insert {extra!r} at {at}")
    count = draw(st.integers(1, 512))
    return Sample(data[:at] + data[at + count :], f"delete {count} bytes at {at}")


@st.composite
def mutated_header(draw, data: bytes) -> bytes:
    """The JSON header edited (a tensor entry, the metadata, the LivePhoto config in it, or all of it) and
    written back with a correct length prefix."""
    header, body = split_safetensors(data)
    names = sorted(name for name in header if name != "__metadata__")
    kind = draw(st.sampled_from(["field", "drop_field", "drop_tensor", "add_tensor", "metadata", "config", "whole"]))
    if kind in ("field", "drop_field"):
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        if kind == "drop_field":
            del header[name][field]
            note = f"drop {field} of {name}"
        else:
            header[name][field] = draw(plausible[field] | json_values)
            note = f"{name}: {field} = {header[name][field]!r}"
    elif kind == "drop_tensor":
        name = draw(st.sampled_from(names))
        del header[name]
        note = f"drop {name}"
    elif kind == "add_tensor":
        name = draw(st.text(max_size=20))
        header[name] = draw(json_values | st.fixed_dictionaries(plausible))
        note = f"add {name!r}: {header[name]!r}"
    elif kind == "metadata":
        metadata = header.setdefault("__metadata__", {})
        key = draw(st.sampled_from(sorted(metadata)) | st.text(max_size=12)) if metadata else draw(st.text(max_size=12))
        metadata[key] = draw(json_values | st.text(max_size=40))
        note = f"metadata {key!r} = {metadata[key]!r}"
    elif kind == "config":
        metadata = header.get("__metadata__", {})
        config = json.loads(metadata.get("livephoto_config", "{}"))
        key = draw(st.sampled_from(sorted(config)) | st.text(max_size=12)) if config else draw(st.text(max_size=12))
        if draw(st.booleans()) and key in config:
            del config[key]
        else:
            config[key] = draw(json_values)
        metadata["livephoto_config"] = json.dumps(config) if draw(st.integers(0, 9)) else draw(st.text(max_size=30))
        header["__metadata__"] = metadata
        note = f"livephoto_config {key!r}: {metadata['livephoto_config']}"
    else:
        header = draw(json_values)
        note = f"header = {header!r}"
    return Sample(join_safetensors(header, body, draw(st.integers(0, 8))), note)


@st.composite
def mutated_prefix(draw, data: bytes) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    claimed = draw(st.integers(0, 2**64 - 1) | st.integers(max(0, length - 64), length + 64) | st.integers(0, 16))
    return Sample(struct.pack("<Q", claimed) + data[8:], f"header length {claimed} (was {length})")


class Target:
    """One file rewritten for every example, read by every reader; only LivePhotoErrors may come out."""

    def __init__(self, path: Path, readers):
        self.path, self.readers = path, readers
        self.outcomes = {"loaded": 0, "refused": 0}

    def check(self, data: bytes) -> None:
        self.path.write_bytes(data)
        for read in self.readers:
            try:
                read(self.path)
            except LivePhotoError:
                self.outcomes["refused"] += 1
            else:
                self.outcomes["loaded"] += 1


@pytest.fixture(scope="module")
def seeds(tiny_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_seeds")
    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    write_video(frames, folder / "clip.mp4")
    write_video(frames, folder / "clip.webp")
    return {
        "livephoto": (tiny_files / "livephoto.safetensors").read_bytes(),
        "sd15": (tiny_files / "base.safetensors").read_bytes(),
        "mp4": (folder / "clip.mp4").read_bytes(),
        "webp": (folder / "clip.webp").read_bytes(),
    }


def report(name: str, target: Target) -> None:
    print(f"\n[fuzz] {name}: {target.outcomes}", flush=True)


@pytest.mark.parametrize("seed", ["livephoto", "sd15"])
def test_safetensors_with_a_damaged_header_is_refused_or_loaded(seeds, tmp_path_factory, seed):
    target = Target(tmp_path_factory.mktemp("fuzz") / "model.safetensors", SAFETENSORS_READERS)

    @fuzz(350)
    @given(data=mutated_header(seeds[seed]) | mutated_prefix(seeds[seed]))
    def run(data):
        target.check(data)

    run()
    report(f"{seed} header", target)
    assert target.outcomes["refused"] > 0


@pytest.mark.parametrize("seed", ["livephoto", "sd15"])
def test_safetensors_with_damaged_bytes_is_refused_or_loaded(seeds, tmp_path_factory, seed):
    target = Target(tmp_path_factory.mktemp("fuzz") / "model.safetensors", SAFETENSORS_READERS)
    length = struct.unpack("<Q", seeds[seed][:8])[0]

    @fuzz(200)
    @given(data=mutated_bytes(seeds[seed], hot=8 + length))
    def run(data):
        target.check(data)

    run()
    report(f"{seed} bytes", target)
    assert target.outcomes["refused"] > 0


@pytest.mark.parametrize("kind", ["mp4", "webp"])
def test_damaged_videos_are_refused_or_read(seeds, tmp_path_factory, kind):
    target = Target(tmp_path_factory.mktemp("fuzz") / f"clip.{kind}", (read_video, detect_path))

    @fuzz(300)
    @given(data=mutated_bytes(seeds[kind], hot=256))
    def run(data):
        target.check(data)

    run()
    report(f"{kind} bytes", target)
    assert target.outcomes["refused"] > 0 and target.outcomes["loaded"] > 0
