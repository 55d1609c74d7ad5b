"""QuickTime boxes: enough to read a movie's structure and to add what makes it an Apple Live Photo's video.

PyAV (FFmpeg) writes the movie. Two things it cannot write as Apple does, and which are added here
to the finished file: the still-image-time metadata track (it needs a 'mebx' sample description,
which FFmpeg's muxer cannot express), and the content identifier as a movie-level QuickTime 'meta'
box (FFmpeg puts its 'mdta' keys in moov/udta/meta, an ISO full box; Apple's cameras, and the tools
whose pairs Photos is known to accept, write moov/meta, a plain box). Layouts: Apple's QuickTime
File Format (hdlr, gmhd, dref 'alis', 'meta' with 'keys' and 'ilst') and ISO/IEC 14496-12 section
12.9.4 (the 'mebx' sample entry, its 'keys' table of 'keyd'/'dtyp' boxes, its samples); docs/outputs.md
lists the sources.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

STILL_IMAGE_TIME_KEY = b"com.apple.quicktime.still-image-time"
CONTENT_IDENTIFIER_KEY = b"com.apple.quicktime.content.identifier"
KEY_NAMESPACE = b"mdta"  # QuickTime metadata keys written as reverse-DNS strings
UTF8 = 1  # QuickTime's well-known data type for a UTF-8 string
STILL_IMAGE_TIME_LOCAL_ID = 1  # the box type that stands for the key inside each sample
SIGNED_INT8 = 65  # QuickTime's well-known data type for a big-endian signed 8-bit integer
STILL_IMAGE_TIME_VALUE = b"\xff"  # -1, what Apple's camera stores; the sample's time is what counts
_UNDETERMINED_LANGUAGE = 0x55C4  # ISO 639-2 "und", packed
_IDENTITY_MATRIX = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_TRACK_ENABLED_IN_MOVIE = 0x3


@dataclass(frozen=True)
class Box:
    """One box of a file: its type and where it, and its payload, lie."""

    kind: bytes
    start: int  # offset of its size field
    body: int  # offset of its payload
    end: int  # offset just past it


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """The boxes that follow one another from ``start`` to ``end`` (by default, the whole of ``data``)."""
    end = len(data) if end is None else end
    while start < end:
        if end - start < 8:
            raise ValueError(f"{end - start} stray bytes at offset {start}, too few for a box header")
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:  # a 64-bit size follows the type
            (size,), header = struct.unpack_from(">Q", data, start + 8), 16
        elif size == 0:  # the box runs to the end of its parent
            size = end - start
        if size < header or start + size > end:
            raise ValueError(f"box {kind!r} at offset {start} claims {size} bytes; its parent ends at {end}")
        yield Box(kind, start, start + header, start + size)
        start += size


def child(data: bytes, parent: Box, *path: bytes) -> Box:
    """The first box of type ``path[0]`` inside ``parent``, then of ``path[1]`` inside that, and so on."""
    for kind in path:
        parent = next((box for box in boxes(data, parent.body, parent.end) if box.kind == kind), None)
        if parent is None:
            raise ValueError(f"no {kind!r} box where one is needed")
    return parent


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, flags: int, *payload: bytes) -> bytes:
    """A box whose payload starts with a version (always 0 here) and 24 bits of flags."""
    return box(kind, struct.pack(">I", flags), *payload)


def counted_string(text: bytes) -> bytes:
    """QuickTime handler names are Pascal strings: a length byte, then the bytes."""
    return bytes([len(text)]) + text


def still_image_time_sample() -> bytes:
    """A 'mebx' sample: one box per key, typed by the key's local id, holding the value."""
    return box(struct.pack(">I", STILL_IMAGE_TIME_LOCAL_ID), STILL_IMAGE_TIME_VALUE)


def still_image_time_description() -> bytes:
    """The 'mebx' sample entry: reserved bytes, data reference 1, and a 'keys' table of one key."""
    key = box(
        struct.pack(">I", STILL_IMAGE_TIME_LOCAL_ID),
        box(b"keyd", KEY_NAMESPACE + STILL_IMAGE_TIME_KEY),
        box(b"dtyp", struct.pack(">II", 0, SIGNED_INT8)),  # namespace 0: a well-known type
    )
    return box(b"mebx", bytes(6), struct.pack(">H", 1), box(b"keys", key))


def still_image_time_track(track_id: int, timescale: int, duration: int, sample_offset: int, sample_size: int) -> bytes:
    """A metadata track of one still-image-time sample at time 0 lasting ``duration`` (in ``timescale`` units)."""
    tkhd = full_box(
        b"tkhd", _TRACK_ENABLED_IN_MOVIE,
        struct.pack(">IIIII", 0, 0, track_id, 0, duration), bytes(8),
        struct.pack(">hhhh", 0, 0, 0, 0),  # layer, alternate group, volume, reserved
        _IDENTITY_MATRIX, struct.pack(">II", 0, 0),  # no picture: width and height 0
    )
    mdhd = full_box(b"mdhd", 0, struct.pack(">IIIIHH", 0, 0, timescale, duration, _UNDETERMINED_LANGUAGE, 0))
    media_handler = full_box(b"hdlr", 0, b"mhlrmeta", bytes(12), counted_string(b"Core Media Metadata"))
    base_header = box(b"gmhd", full_box(b"gmin", 0, struct.pack(">HHHHhH", 0x40, 0x8000, 0x8000, 0x8000, 0, 0)))
    data_handler = full_box(b"hdlr", 0, b"dhlralis", bytes(12), counted_string(b"Core Media Data Handler"))
    self_reference = full_box(b"alis", 0x1)  # flag 1: the data is in this file
    data_information = box(b"dinf", full_box(b"dref", 0, struct.pack(">I", 1), self_reference))
    sample_table = box(
        b"stbl",
        full_box(b"stsd", 0, struct.pack(">I", 1), still_image_time_description()),
        full_box(b"stts", 0, struct.pack(">III", 1, 1, duration)),  # 1 entry: 1 sample of `duration`
        full_box(b"stsc", 0, struct.pack(">IIII", 1, 1, 1, 1)),  # chunk 1 holds 1 sample of description 1
        full_box(b"stsz", 0, struct.pack(">II", sample_size, 1)),
        full_box(b"stco", 0, struct.pack(">II", 1, sample_offset)),
    )
    media_information = box(b"minf", base_header, data_handler, data_information, sample_table)
    return box(b"trak", tkhd, box(b"mdia", mdhd, media_handler, media_information))


def movie_metadata(items: dict[bytes, str]) -> bytes:
    """A movie-level 'meta' box of 'mdta' keys and their UTF-8 values, as a plain QuickTime box."""
    handler = full_box(b"hdlr", 0, bytes(4), KEY_NAMESPACE, bytes(12), b"\0")
    keys = full_box(b"keys", 0, struct.pack(">I", len(items)), *(box(KEY_NAMESPACE, key) for key in items))
    values = (  # each value is typed by its key's 1-based index
        box(struct.pack(">I", index), box(b"data", struct.pack(">II", UTF8, 0), value.encode("utf-8")))
        for index, value in enumerate(items.values(), start=1)
    )
    return box(b"meta", handler, keys, box(b"ilst", *values))


def add_live_photo_boxes(movie: bytes, content_identifier: str, still_duration_s: float) -> bytes:
    """``movie`` (its 'moov' last, as FFmpeg writes it) with the content identifier and a still-image-time track
    marking its first frame.

    The sample goes into a new 'mdat' where the 'moov' was, and the 'moov' follows with the track
    and the 'meta' added and the movie header's next track id advanced; no existing offset moves.
    """
    top = list(boxes(movie))
    moov = top[-1]
    if moov.kind != b"moov":
        raise ValueError(f"the movie ends with a {moov.kind!r} box; its 'moov' must come last")
    mvhd = child(movie, moov, b"mvhd")
    version = movie[mvhd.body]
    timescale = struct.unpack_from(">I", movie, mvhd.body + (20 if version == 1 else 12))[0]
    (track_id,) = struct.unpack_from(">I", movie, mvhd.end - 4)  # next_track_ID ends the movie header
    sample = still_image_time_sample()
    sample_offset = moov.start + 8  # just past the new mdat's header
    if sample_offset + len(sample) >= 2**32:
        raise ValueError("the movie is over 4 GiB; a Live Photo's video is a few seconds long")
    duration = max(1, round(still_duration_s * timescale))
    track = still_image_time_track(track_id, timescale, duration, sample_offset, len(sample))
    moov_payload = movie[moov.body : mvhd.end - 4] + struct.pack(">I", track_id + 1) + movie[mvhd.end : moov.end]
    identifier = movie_metadata({CONTENT_IDENTIFIER_KEY: content_identifier})
    return movie[: moov.start] + box(b"mdat", sample) + box(b"moov", moov_payload, track, identifier)
