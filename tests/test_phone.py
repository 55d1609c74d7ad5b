"""Phone live photos (issue 19): Android Motion Photo and Apple Live Photo, read back by independent readers.

Each format is checked three ways: its structure with small parsers written here (JPEG segments, the
Apple MakerNote's IFD, QuickTime boxes), its video decoded by PyAV (FFmpeg) against the frames, and
its tags read by exiftool. exiftool may be missing on a developer's machine: those checks then skip,
saying so, except under CI (CI=true), where they fail (.ci/run installs exiftool).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from livephoto_core import phone
from livephoto_core.cli import main
from livephoto_core.errors import InvalidInputError, OutputExistsError
from livephoto_core.quicktime import STILL_IMAGE_TIME_KEY, Box, boxes, child
from livephoto_core.video import metadata_sidecar_path, read_metadata, write_video

METADATA = {"seed": 7, "prompt": "the red circle moves left", "intensity": 5}
FPS = 8.0
NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "GCamera": "http://ns.google.com/photos/1.0/camera/",
    "Container": "http://ns.google.com/photos/1.0/container/",
    "Item": "http://ns.google.com/photos/1.0/container/item/",
}


def smooth_clip(frames: int = 6, height: int = 64, width: int = 96) -> np.ndarray:
    """Soft gradients drifting sideways: within a codec's reach, unlike noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    clip = [
        np.stack([128 + 100 * np.sin((x + 4 * i) / 15), 128 + 100 * np.cos(y / 11),
                  128 + 90 * np.sin((x + y) / 20 + i / 3)], axis=-1)
        for i in range(frames)
    ]
    return np.rint(np.stack(clip)).astype(np.uint8)


# --- independent readers ------------------------------------------------------------------------------


def exiftool(path: Path, *options: str) -> dict:
    """exiftool's reading of ``path`` as {"Group:Tag": value}; skips without exiftool, unless under CI."""
    if shutil.which("exiftool") is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("exiftool is missing under CI; .ci/run installs it (apt-get install libimage-exiftool-perl)")
        pytest.skip("exiftool is not installed (Debian: apt-get install libimage-exiftool-perl); CI runs this check")
    run = subprocess.run(["exiftool", "-json", "-G1", "-n", *options, str(path)], capture_output=True, text=True,
                         check=True)
    return json.loads(run.stdout)[0]


def exiftool_bytes(path: Path, tag: str) -> bytes:
    exiftool(path)  # the same skip or failure when exiftool is missing
    return subprocess.run(["exiftool", "-ee", "-b", f"-{tag}", str(path)], capture_output=True, check=True).stdout


def decode(video: Path | bytes):
    """PyAV's view: (frames as RGB, the video stream's codec facts, the container's metadata, the packets of each
    data stream as (handler name, [(pts in seconds, payload)]))."""
    import io

    source = io.BytesIO(video) if isinstance(video, bytes) else str(video)
    with av.open(source) as container:
        stream = container.streams.video[0]
        facts = {"codec": stream.codec_context.name, "pix_fmt": stream.codec_context.pix_fmt,
                 "color_range": int(stream.codec_context.color_range),
                 "colorspace": int(stream.codec_context.colorspace)}
        data = [(s.metadata.get("handler_name"),
                 [(float(p.pts * p.time_base), bytes(p)) for p in container.demux(s) if p.size])
                for s in container.streams.data]
        container.seek(0)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return np.stack(frames), facts, dict(container.metadata), data


def assert_within_codec_tolerance(decoded: np.ndarray, frames: np.ndarray) -> None:
    assert decoded.shape == frames.shape
    error = np.abs(decoded.astype(int) - frames.astype(int))
    assert error.mean() < 4 and np.percentile(error, 99) < 16, (error.mean(), np.percentile(error, 99))


# --- small parsers of our own -------------------------------------------------------------------------


def jpeg_segments(data: bytes) -> tuple[dict[bytes, list[bytes]], int]:
    """The JPEG's APPn payloads by marker, and where the JPEG ends (just past EOI)."""
    assert data[:2] == b"\xff\xd8"
    segments, offset = {}, 2
    while True:
        marker, length = data[offset : offset + 2], struct.unpack(">H", data[offset + 2 : offset + 4])[0]
        segments.setdefault(marker, []).append(data[offset + 4 : offset + 2 + length])
        offset += 2 + length
        if marker == b"\xff\xda":  # start of scan: entropy-coded data, where 0xFF is always escaped
            return segments, data.index(b"\xff\xd9", offset) + 2


def jpeg_xmp(data: bytes) -> ElementTree.Element:
    header = b"http://ns.adobe.com/xap/1.0/\0"
    (xmp,) = [s[len(header):] for s in jpeg_segments(data)[0][b"\xff\xe1"] if s.startswith(header)]
    return ElementTree.fromstring(xmp.decode("utf-8").split("?>", 1)[1].rsplit("<?xpacket", 1)[0])


TIFF_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1}  # bytes per value of each field type


def ifd(data: bytes, offset: int, base: int = 0) -> dict[int, tuple[int, bytes]]:
    """A big-endian TIFF IFD at ``offset``: {tag: (type, value bytes)}; values over 4 bytes lie at ``base`` + their
    offset. Tags must come in ascending order."""
    (count,) = struct.unpack_from(">H", data, offset)
    fields = {}
    for index in range(count):
        tag, kind, length = struct.unpack_from(">HHI", data, offset + 2 + 12 * index)
        size = TIFF_SIZES[kind] * length
        entry_value = offset + 2 + 12 * index + 8
        at = entry_value if size <= 4 else base + struct.unpack_from(">I", data, entry_value)[0]
        fields[tag] = (kind, data[at : at + size])
    assert list(fields) == sorted(fields)
    return fields


def exif_fields(jpeg: bytes) -> tuple[dict, dict]:
    """(IFD0, Exif IFD) of the JPEG's EXIF segment."""
    (exif,) = [s for s in jpeg_segments(jpeg)[0][b"\xff\xe1"] if s.startswith(b"Exif\0\0")]
    tiff = exif[6:]
    assert tiff[:4] == b"MM\0\x2a"
    ifd0 = ifd(tiff, struct.unpack_from(">I", tiff, 4)[0])
    return ifd0, ifd(tiff, struct.unpack(">I", ifd0[0x8769][1])[0])


def content_identifier(jpeg: bytes) -> str:
    """Tag 0x0011 of Apple's MakerNote: "Apple iOS\\0", version 1, "MM", then an IFD whose offsets count from the
    note's first byte."""
    kind, note = exif_fields(jpeg)[1][0x927C]
    assert kind == 7 and note[:14] == b"Apple iOS\0\0\x01MM"  # UNDEFINED, as EXIF types a MakerNote
    kind, value = ifd(note, 14)[0x0011]
    assert kind == 2 and value.endswith(b"\0")
    return value[:-1].decode("ascii")


def movie_content_identifier(movie: bytes) -> str:
    """The identifier where Apple's cameras put it: moov/meta, a plain box of hdlr 'mdta', keys and ilst."""
    moov = next(b for b in boxes(movie) if b.kind == b"moov")
    meta = child(movie, moov, b"meta")
    hdlr, keys, ilst = boxes(movie, meta.body, meta.end)  # children right after the header: not a full box
    assert (hdlr.kind, movie[hdlr.body + 8 : hdlr.body + 12], keys.kind, ilst.kind) == (b"hdlr", b"mdta", b"keys",
                                                                                          b"ilst")
    (key,) = boxes(movie, keys.body + 8, keys.end)  # version/flags and entry count first
    assert (key.kind, movie[key.body : key.end]) == (b"mdta", b"com.apple.quicktime.content.identifier")
    (item,) = boxes(movie, ilst.body, ilst.end)
    data = child(movie, item, b"data")
    assert item.kind == struct.pack(">I", 1) and movie[data.body : data.body + 8] == struct.pack(">II", 1, 0)
    return movie[data.body + 8 : data.end].decode("utf-8")


def tracks(movie: bytes) -> dict[bytes, Box]:
    """The movie's tracks by handler type ('vide', 'meta')."""
    moov = next(b for b in boxes(movie) if b.kind == b"moov")
    found = {}
    for trak in (b for b in boxes(movie, moov.body, moov.end) if b.kind == b"trak"):
        hdlr = child(movie, trak, b"mdia", b"hdlr")
        found[movie[hdlr.body + 8 : hdlr.body + 12]] = trak
    return found


# --- Android Motion Photo -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def motion_photo(tmp_path_factory):
    frames = smooth_clip()
    path = write_video(frames, tmp_path_factory.mktemp("motion") / "clip.MP.jpg", fps=FPS, metadata=METADATA)
    return path, frames


def test_motion_photo_xmp_lists_the_jpeg_then_the_appended_video_with_its_length(motion_photo):
    path, frames = motion_photo
    data = path.read_bytes()
    description = jpeg_xmp(data).find("rdf:RDF/rdf:Description", NS)
    camera = {name: description.get(f"{{{NS['GCamera']}}}{name}")
              for name in ("MotionPhoto", "MotionPhotoVersion", "MotionPhotoPresentationTimestampUs")}
    assert camera == {"MotionPhoto": "1", "MotionPhotoVersion": "1", "MotionPhotoPresentationTimestampUs": "0"}
    items = [item.find("Container:Item", NS).attrib
             for item in description.findall("Container:Directory/rdf:Seq/rdf:li", NS)]
    item = {key.split("}")[1]: value for key, value in items[1].items()}
    assert [i[f"{{{NS['Item']}}}Semantic"] for i in items] == ["Primary", "MotionPhoto"]
    assert items[0][f"{{{NS['Item']}}}Mime"] == "image/jpeg" and item["Mime"] == "video/mp4"
    _, jpeg_end = jpeg_segments(data)
    assert int(item["Length"]) == len(data) - jpeg_end  # the video is all that follows the JPEG
    assert data[jpeg_end + 4 : jpeg_end + 8] == b"ftyp"
    with Image.open(path) as still:  # an ordinary JPEG to anything that ignores the video
        assert still.format == "JPEG" and still.size == (frames.shape[2], frames.shape[1])


def test_the_video_cut_out_at_the_directory_offset_decodes_to_the_frames(motion_photo):
    path, frames = motion_photo
    data = path.read_bytes()
    length = int(re.search(rb'Item:Semantic="MotionPhoto" Item:Length="(\d+)"', data).group(1))
    decoded, facts, metadata, _ = decode(data[-length:])
    assert facts == {"codec": "h264", "pix_fmt": "yuv420p", "color_range": 1, "colorspace": 1}  # limited, BT.709
    assert_within_codec_tolerance(decoded, frames)
    assert json.loads(metadata["comment"]) == METADATA


def test_exiftool_reads_the_motion_photo_tags_and_cuts_out_the_same_video(motion_photo):
    path, _ = motion_photo
    tags = exiftool(path, "-struct")
    assert (tags["XMP-GCamera:MotionPhoto"], tags["XMP-GCamera:MotionPhotoVersion"]) == (1, 1)
    assert tags["XMP-GCamera:MotionPhotoPresentationTimestampUs"] == 0
    video = exiftool_bytes(path, "EmbeddedVideo")  # exiftool's own cut: whatever follows the JPEG's end
    assert [entry["Item"] for entry in tags["XMP-Container:Directory"]] == [
        {"Mime": "image/jpeg", "Semantic": "Primary", "Length": 0, "Padding": 0},
        {"Mime": "video/mp4", "Semantic": "MotionPhoto", "Length": len(video), "Padding": 0},
    ]
    assert video == path.read_bytes()[-len(video):]
    assert json.loads(tags["XMP-livephoto:Metadata"]) == METADATA


def test_limited_range_black_and_white_decode_to_16_and_235(tmp_path):
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    frames[1] = 255
    data = write_video(frames, tmp_path / "bw.MP.jpg").read_bytes()
    length = int(re.search(rb'Item:Semantic="MotionPhoto" Item:Length="(\d+)"', data).group(1))
    import io

    with av.open(io.BytesIO(data[-length:])) as container:
        lumas = [frame.to_ndarray()[:32].mean() for frame in container.decode(video=0)]  # the Y plane
    assert abs(lumas[0] - 16) < 1.5 and abs(lumas[1] - 235) < 1.5


# --- Apple Live Photo ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_photo(tmp_path_factory):
    frames = smooth_clip()
    folder = tmp_path_factory.mktemp("live")
    jpeg = write_video(frames, folder / "clip.livephoto", fps=FPS, metadata=METADATA)
    return jpeg, folder / "clip.mov", frames


def test_the_live_photo_is_a_jpeg_and_mov_pair_with_one_sidecar(live_photo):
    jpeg, movie, _ = live_photo
    assert sorted(os.listdir(jpeg.parent)) == ["clip.jpg", "clip.livephoto.json", "clip.mov"]
    assert json.loads((jpeg.parent / "clip.livephoto.json").read_text()) == METADATA
    assert read_metadata(jpeg.parent / "clip.livephoto") == METADATA
    assert read_metadata(jpeg) == read_metadata(movie) == METADATA  # inside each file too (sidecar aside)


def test_the_jpeg_maker_note_and_the_mov_key_hold_one_uuid(live_photo):
    jpeg, movie, _ = live_photo
    identifier = content_identifier(jpeg.read_bytes())
    assert identifier == str(uuid.UUID(identifier)).upper()
    _, _, metadata, _ = decode(movie)
    assert metadata["com.apple.quicktime.content.identifier"] == identifier
    assert movie_content_identifier(movie.read_bytes()) == identifier


def test_the_mov_carries_a_still_image_time_track_at_frame_0(live_photo):
    _, movie_path, _ = live_photo
    movie = movie_path.read_bytes()
    found = tracks(movie)
    assert set(found) == {b"vide", b"meta"}
    meta = found[b"meta"]
    stbl = child(movie, meta, b"mdia", b"minf", b"stbl")
    stsd = child(movie, stbl, b"stsd")
    (entry,) = boxes(movie, stsd.body + 8, stsd.end)  # version/flags and entry count first
    assert entry.kind == b"mebx"
    keys = next(boxes(movie, entry.body + 8, entry.end))  # after 6 reserved bytes and the data reference
    (key,) = boxes(movie, keys.body, keys.end)
    assert key.kind == struct.pack(">I", 1)
    declaration = {b.kind: movie[b.body : b.end] for b in boxes(movie, key.body, key.end)}
    assert declaration == {b"keyd": b"mdta" + STILL_IMAGE_TIME_KEY, b"dtyp": struct.pack(">II", 0, 65)}
    stts = child(movie, stbl, b"stts")
    count, samples, ticks = struct.unpack_from(">III", movie, stts.body + 4)
    timescale = struct.unpack_from(">I", movie, child(movie, meta, b"mdia", b"mdhd").body + 12)[0]
    assert (count, samples) == (1, 1) and ticks == round(timescale / FPS)  # one sample, one frame long, at 0
    (offset,) = struct.unpack_from(">I", movie, child(movie, stbl, b"stco").body + 8)
    assert movie[offset : offset + 9] == struct.pack(">I4sb", 9, struct.pack(">I", 1), -1)
    mvhd = child(movie, next(b for b in boxes(movie) if b.kind == b"moov"), b"mvhd")
    track_id = struct.unpack_from(">I", movie, child(movie, meta, b"tkhd").body + 12)[0]
    assert struct.unpack_from(">I", movie, mvhd.end - 4)[0] == track_id + 1  # next track id advanced


def test_pyav_decodes_the_mov_and_demuxes_the_still_image_time_sample_at_0(live_photo):
    _, movie, frames = live_photo
    decoded, facts, _, data = decode(movie)
    assert facts == {"codec": "h264", "pix_fmt": "yuv420p", "color_range": 1, "colorspace": 1}
    assert_within_codec_tolerance(decoded, frames)
    # FFmpeg's demuxer finds the metadata track and its one sample: key 1 holding -1, at time 0 (frame 0).
    assert data == [("Core Media Metadata", [(0.0, struct.pack(">I4sb", 9, struct.pack(">I", 1), -1))])]


def test_exiftool_reads_the_identifier_in_both_files_and_the_still_image_time(live_photo):
    jpeg, movie, _ = live_photo
    photo_tags, movie_tags = exiftool(jpeg), exiftool(movie, "-ee")
    identifier = photo_tags["Apple:MediaGroupUUID"]  # exiftool's name for MakerNote tag 0x0011
    assert movie_tags["Keys:ContentIdentifier"] == identifier
    assert movie_tags["Track2:MetaFormat"] == "mebx"
    assert (movie_tags["Track2:StillImageTime"], movie_tags["Track2:SampleTime"]) == (-1, 0)
    assert json.loads(photo_tags["XMP-livephoto:Metadata"]) == json.loads(movie_tags["UserData:Comment"]) == METADATA


def test_each_live_photo_gets_its_own_identifier(tmp_path):
    identifiers = set()
    for name in ("a", "b"):
        identifiers.add(content_identifier(write_video(smooth_clip(2), tmp_path / f"{name}.livephoto").read_bytes()))
    assert len(identifiers) == 2


# --- the still --------------------------------------------------------------------------------------


def test_the_still_is_the_photo_at_its_own_resolution_cropped_like_the_frames(tmp_path):
    photo = np.zeros((120, 200, 3), np.uint8)
    photo[:, 40:160] = 200  # the 120x120 centre the pipeline keeps of a 200x120 photo for square frames
    jpeg = write_video(smooth_clip(2, 64, 64), tmp_path / "still.MP.jpg", still=photo)
    with Image.open(jpeg) as still:
        assert still.size == (120, 120)
        assert np.abs(np.asarray(still).astype(int) - 200).mean() < 2


def test_without_a_photo_the_still_is_frame_0(tmp_path):
    frames = smooth_clip(3)
    jpeg = write_video(frames, tmp_path / "still.livephoto")
    with Image.open(jpeg) as still:
        assert np.abs(np.asarray(still).astype(int) - frames[0].astype(int)).mean() < 3


def test_large_settings_stay_in_the_video_and_sidecar_when_the_jpeg_has_no_room(tmp_path):
    metadata = {"workflow": "x" * 70_000}  # over one JPEG segment
    path = write_video(smooth_clip(2), tmp_path / "big.MP.jpg", metadata=metadata)
    assert b"livephoto:metadata" not in path.read_bytes()[:100_000] and b"GCamera:MotionPhoto" in path.read_bytes()
    metadata_sidecar_path(path).unlink()
    length = int(re.search(rb'Item:Semantic="MotionPhoto" Item:Length="(\d+)"', path.read_bytes()).group(1))
    assert json.loads(decode(path.read_bytes()[-length:])[2]["comment"]) == metadata


# --- refusals and all-or-nothing writes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "frames, name, options, message",
    [
        (smooth_clip(1), "one.MP.jpg", {}, "needs at least 2 frames; got 1"),
        (np.zeros((2, 16, 4097, 3), np.uint8), "wide.livephoto", {}, "frames of 4097x16 are too large"),
        (np.zeros((2, 2320, 4096, 3), np.uint8), "big.MP.jpg", {}, "at most 36864 16x16 blocks"),
        (smooth_clip(2), "clip.motionphoto.jpg", {}, "must end in MP.jpg"),
        (smooth_clip(2), "clip.mp.jpg", {}, "upper-case MP"),
        (smooth_clip(2), "clip.webp", {"format": "livephoto"}, "is written to NAME.livephoto"),
        (smooth_clip(2), "clip.MP.jpg", {"format": "heic"}, "format must be 'motionphoto' or 'livephoto'"),
        (smooth_clip(2), "clip.webp", {"still": np.zeros((64, 64, 3), np.uint8)}, "still= is the photo of a phone"),
    ],
)
def test_what_a_phone_format_cannot_hold_is_refused_in_one_line_writing_nothing(tmp_path, frames, name, options,
                                                                                message):
    with pytest.raises(InvalidInputError, match=re.escape(message)) as caught:
        write_video(frames, tmp_path / name, metadata=METADATA, **options)
    assert "\n" not in str(caught.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("existing, says", [("pair.jpg", "the photo of the Live Photo pair.livephoto"),
                                            ("pair.mov", "the video of the Live Photo pair.livephoto"),
                                            ("pair.livephoto.json", "the settings sidecar of pair.livephoto")])
def test_a_live_photo_whose_pair_file_exists_is_refused_and_nothing_is_touched(tmp_path, existing, says):
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match=re.escape(f"{tmp_path / existing} already exists ({says})")):
        write_video(smooth_clip(2), tmp_path / "pair.livephoto", metadata=METADATA)
    assert os.listdir(tmp_path) == [existing] and (tmp_path / existing).read_bytes() == b"precious"


def test_overwrite_replaces_the_pair_and_drops_a_stale_sidecar(tmp_path):
    path = tmp_path / "pair.livephoto"
    write_video(smooth_clip(2), path, metadata={"run": 1})
    write_video(smooth_clip(3), path, metadata={"run": 2}, overwrite=True)
    assert read_metadata(path) == {"run": 2} and len(decode(tmp_path / "pair.mov")[0]) == 3
    write_video(smooth_clip(2), path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["pair.jpg", "pair.mov"]


def test_a_failing_encoder_leaves_no_file_and_no_temporary(tmp_path, monkeypatch):
    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(phone, "h264_video", full_disk)
    with pytest.raises(InvalidInputError, match="could not write .*pair.livephoto: .*No space left"):
        write_video(smooth_clip(2), tmp_path / "pair.livephoto", metadata=METADATA)
    assert os.listdir(tmp_path) == []


def test_a_pillow_that_drops_the_xmp_is_refused_rather_than_writing_a_plain_jpeg(tmp_path, monkeypatch):
    save = Image.Image.save

    def pillow_before_11_1(image, fp, format=None, **params):
        params.pop("xmp", None)
        return save(image, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", pillow_before_11_1)
    with pytest.raises(InvalidInputError, match="install Pillow 11.1 or newer"):
        write_video(smooth_clip(2), tmp_path / "clip.MP.jpg")
    assert os.listdir(tmp_path) == []


def test_the_maker_note_is_signature_ifd_and_string_with_offsets_from_its_start():
    note = phone.apple_maker_note("0E3F6A2C-0000-4000-8000-000000000001")
    assert note == (b"Apple iOS\0" + b"\0\x01MM" + struct.pack(">H", 1) + struct.pack(">HHII", 0x11, 2, 37, 32)
                    + struct.pack(">I", 0) + b"0E3F6A2C-0000-4000-8000-000000000001\0" + b"\0")  # padded to even


def test_the_exif_holds_what_exif_requires_of_a_jpeg(live_photo):
    jpeg, _, _ = live_photo
    ifd0, exif_ifd = exif_fields(jpeg.read_bytes())
    assert set(ifd0) == {0x011A, 0x011B, 0x0128, 0x0213, 0x8769}
    assert exif_ifd[0x9000] == (7, b"0232") and exif_ifd[0xA001] == (3, b"\0\x01")
    with Image.open(jpeg) as still:
        assert (exif_ifd[0xA002][1], exif_ifd[0xA003][1]) == (struct.pack(">I", still.width),
                                                              struct.pack(">I", still.height))


def test_exiftool_finds_no_error_or_warning_in_any_file(motion_photo, live_photo):
    for path in (motion_photo[0], *live_photo[:2]):
        assert exiftool(path, "-validate", "-warning")["ExifTool:Validate"] == "0 0 0", path  # errors, warnings, minor


def test_box_parser_refuses_a_box_longer_than_its_parent():
    with pytest.raises(ValueError, match="claims 64 bytes"):
        list(boxes(struct.pack(">I4s", 64, b"moov") + bytes(8)))


# --- the command line and the node --------------------------------------------------------------------


def model_args(folder: Path) -> list[str]:
    return ["--livephoto", str(folder / "livephoto.safetensors"), "--base", str(folder / "base.safetensors"),
            "--dinov2", str(folder / "dinov2"), "--tokenizer", str(folder / "tokenizer")]


@pytest.fixture
def large_photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 160, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_writes_a_live_photo_pair_with_the_photo_as_the_still(tiny_files, large_photo, tmp_path, capsys):
    out = tmp_path / "out.livephoto"
    assert main(["animate", str(large_photo), "the red circle moves left", "--frames", "3", "--steps", "1",
                 "--seed", "5", "-o", str(out), *model_args(tiny_files)]) == 0
    assert f"wrote {tmp_path / 'out.jpg'} + {tmp_path / 'out.mov'} (3 frames" in capsys.readouterr().out
    with Image.open(tmp_path / "out.jpg") as still:
        assert still.size == (128, 128)  # the photo's centre at its own size, not the 64x64 frames
    assert len(decode(tmp_path / "out.mov")[0]) == 3 and read_metadata(out)["seed"] == 5


def test_cli_refuses_a_live_photo_whose_mov_exists_before_loading(tiny_files, large_photo, tmp_path, capsys,
                                                                   monkeypatch):
    import livephoto_core.loading.assemble as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "out.mov").write_bytes(b"precious")
    assert main(["animate", str(large_photo), "x", "-o", str(tmp_path / "out.livephoto"),
                 *model_args(tiny_files)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'out.mov'} already exists (the video of the Live Photo out.livephoto); pass --overwrite "
        f"or choose another name"]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from comfy_stubs import stubbed_comfyui

    with stubbed_comfyui(tmp_path_factory.mktemp("comfyui") / "models") as stubs:
        yield stubs


def save_for_phone(comfy, frames, **inputs):
    import torch

    node = comfy.nodes["LivePhotoSaveForPhone"]
    arguments = {"filename_prefix": "LivePhoto", "format": "Apple Live Photo (.jpg + .mov)", "fps": FPS, **inputs}
    with torch.inference_mode():
        return node.execute(torch.from_numpy(frames).float() / 255, **arguments)


def test_the_node_saves_numbered_files_in_the_output_folder_and_shows_the_jpeg(comfy):
    output = Path(comfy.folder_paths.get_output_directory())
    first = save_for_phone(comfy, smooth_clip(3), filename_prefix="phone/clip")
    second = save_for_phone(comfy, smooth_clip(3), filename_prefix="phone/clip",
                            format="Android Motion Photo (.MP.jpg)")
    assert sorted(os.listdir(output / "phone")) == ["clip_00001_.jpg", "clip_00001_.livephoto.json",
                                                    "clip_00001_.mov", "clip_00002_.MP.jpg",
                                                    "clip_00002_.MP.jpg.json"]
    assert first.ui == {"images": [{"filename": "clip_00001_.jpg", "subfolder": "phone", "type": "output"}]}
    assert second.ui["images"][0]["filename"] == "clip_00002_.MP.jpg"
    assert b'GCamera:MotionPhoto="1"' in (output / "phone" / "clip_00002_.MP.jpg").read_bytes()


def test_the_node_embeds_the_workflow_and_uses_the_photo_as_the_still(comfy, monkeypatch):
    import torch

    node = comfy.nodes["LivePhotoSaveForPhone"]
    monkeypatch.setattr(node, "hidden", type(node.hidden)(prompt={"3": {"class_type": "LivePhotoSampler"}},
                                                          extra_pnginfo={"workflow": {"nodes": []}}))
    photo = torch.full((1, 96, 96, 4), 0.5)  # an RGBA IMAGE, as Load Image gives some photos
    result = save_for_phone(comfy, smooth_clip(2, 48, 48), filename_prefix="withphoto", photo=photo)
    jpeg = Path(comfy.folder_paths.get_output_directory()) / result.ui["images"][0]["filename"]
    assert read_metadata(jpeg) == {"fps": FPS, "prompt": {"3": {"class_type": "LivePhotoSampler"}},
                                   "workflow": {"nodes": []}}
    with Image.open(jpeg) as still:
        assert still.size == (96, 96)


def test_the_node_refuses_a_single_frame_in_one_line(comfy):
    with pytest.raises(Exception, match="needs at least 2 frames; got 1") as caught:
        save_for_phone(comfy, smooth_clip(1), filename_prefix="single")
    assert type(caught.value).__name__ == "InvalidInputError"
    assert not any(name.startswith("single") for name in os.listdir(comfy.folder_paths.get_output_directory()))
