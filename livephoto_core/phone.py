"""Phone "live photos": an Android Motion Photo (one .MP.jpg) or an Apple Live Photo (a .jpg + .mov pair).

Both are a JPEG still plus a short H.264 video (yuv420p, limited range, tagged BT.709), the still
being the original photo (centre-cropped to the video's aspect, at its own resolution) or frame 0.

- Motion Photo 1.0: the MP4 is appended to the JPEG, whose XMP says ``GCamera:MotionPhoto=1``, the
  format version, the still's presentation time in the video, and lists the primary image and the
  video (with its length in bytes) in a ``Container:Directory``.
- Live Photo: the JPEG's Apple MakerNote (tag 0x0011) and the MOV's
  ``com.apple.quicktime.content.identifier`` key hold one UUID; the MOV has a still-image-time
  metadata track marking the still's frame (the key and the track written by quicktime.py).

Pillow writes the JPEG and its XMP, PyAV the video: no exiftool or ffmpeg binary at run time. The
formats' sources, and what was and was not verified, are in docs/outputs.md.
"""

from __future__ import annotations

import io
import re
import struct
import uuid
from fractions import Fraction
from pathlib import Path
from xml.sax.saxutils import escape

import av
import numpy as np
import PIL
from PIL import Image, ImageOps

from .errors import InvalidInputError
from .fileio import atomic_write_all
from .images import load_image
from .quicktime import add_live_photo_boxes

MOTION_PHOTO, LIVE_PHOTO = "motionphoto", "livephoto"
PHONE_FORMATS = (MOTION_PHOTO, LIVE_PHOTO)
LIVE_PHOTO_SUFFIX = ".livephoto"
NAMES = {
    MOTION_PHOTO: "NAME.MP.jpg (Android Motion Photo)",
    LIVE_PHOTO: "NAME.livephoto (Apple Live Photo: NAME.jpg + NAME.mov)",
}
# Motion Photo 1.0, "Filename Pattern": readers may ignore the video of a file not named like this.
MOTION_PHOTO_NAME = re.compile(r"[^\s/\\][^/\\]*MP\.(JPG|jpg|JPEG|jpeg)")
MIN_FRAMES = 2
# H.264 level 5.1, which phones decode in hardware: at most 36,864 macroblocks a frame (4096x2304).
MAX_SIDE, MAX_MACROBLOCKS = 4096, 36_864
JPEG_QUALITY = 95
STILL_TIMESTAMP_US = 0  # the still is frame 0: LivePhoto's first frame is the photo

APPLE_MAKER_NOTE_HEADER = b"Apple iOS\0" + struct.pack(">H", 1) + b"MM"  # signature, version 1, big-endian
CONTENT_IDENTIFIER_TAG = 0x0011
TIFF_HEADER_SIZE = 8
X_RESOLUTION, Y_RESOLUTION, RESOLUTION_UNIT, YCBCR_POSITIONING = 0x011A, 0x011B, 0x0128, 0x0213
EXIF_IFD_POINTER, EXIF_VERSION, COMPONENTS_CONFIGURATION, MAKER_NOTE = 0x8769, 0x9000, 0x9101, 0x927C
FLASHPIX_VERSION, COLOR_SPACE, PIXEL_X_DIMENSION, PIXEL_Y_DIMENSION = 0xA000, 0xA001, 0xA002, 0xA003
_ASCII, _SHORT, _LONG, _RATIONAL, _UNDEFINED = 2, 3, 4, 5, 7  # TIFF field types
# Pillow refuses XMP over one JPEG APP1 segment: 65533 bytes less the 29-byte XMP namespace header.
MAX_JPEG_XMP_BYTES = 65533 - 29
MOTION_PHOTO_NAMESPACES = {
    "GCamera": "http://ns.google.com/photos/1.0/camera/",
    "Container": "http://ns.google.com/photos/1.0/container/",
    "Item": "http://ns.google.com/photos/1.0/container/item/",
}
SETTINGS_NAMESPACE = "https://github.com/livephoto-sd15/ComfyUI-LivePhoto#"  # as in video.py's WebP XMP


# ---------------------------------------------------------------------------------------------
# Names


def phone_format(path) -> str | None:
    """The phone format a file name asks for: ``NAME.MP.jpg``, ``NAME.livephoto``; None for other formats' names.

    Any other JPEG name is refused: the only JPEG written is a Motion Photo, and phones may ignore its
    video under a name that breaks the format's filename pattern.
    """
    name = Path(path).name
    if name.lower().endswith(LIVE_PHOTO_SUFFIX):
        return LIVE_PHOTO
    if MOTION_PHOTO_NAME.fullmatch(name):
        return MOTION_PHOTO
    if Path(name).suffix.lower() in (".jpg", ".jpeg"):
        raise InvalidInputError(
            f"{name}: a .jpg output is an Android Motion Photo, whose name must end in MP.jpg (upper-case MP: the "
            f"format's filename pattern; phones may ignore the video otherwise), e.g. NAME.MP.jpg"
        )
    return None


def checked_phone_format(path, format: str | None) -> str | None:
    """``format`` (None: the one the name asks for), refused where the name does not fit it."""
    named = phone_format(path)
    if format is None or format == named:
        return named
    if format not in PHONE_FORMATS:
        raise InvalidInputError(f"format must be {' or '.join(map(repr, PHONE_FORMATS))} (or None: by the name); "
                                f"got {format!r}")
    raise InvalidInputError(f"{Path(path).name}: format {format!r} is written to {NAMES[format]}; rename the output")


def written_files(path) -> tuple[Path, ...]:
    """The files ``write_video`` creates for ``path``, its JSON sidecar aside: the pair for a Live Photo."""
    path = Path(path)
    if phone_format(path) == LIVE_PHOTO:
        return path.with_suffix(".jpg"), path.with_suffix(".mov")
    return (path,)


# ---------------------------------------------------------------------------------------------
# Writing


def check_phone_frames(pixels: np.ndarray) -> None:
    """Refuse clips a phone's live photo cannot hold: a single frame, or frames over H.264 level 5.1."""
    count, height, width = pixels.shape[:3]
    if count < MIN_FRAMES:
        raise InvalidInputError(f"a live photo plays a video: it needs at least {MIN_FRAMES} frames; got {count}")
    macroblocks = -(-height // 16) * -(-width // 16)
    if max(height, width) > MAX_SIDE or macroblocks > MAX_MACROBLOCKS:
        raise InvalidInputError(
            f"frames of {width}x{height} are too large for a phone's video: H.264 level 5.1, which phones play, "
            f"holds at most {MAX_MACROBLOCKS} 16x16 blocks (4096x2304) and {MAX_SIDE} pixels a side; scale them down"
        )


def write_phone_photo(pixels: np.ndarray, path: Path, format: str, fps: float, metadata_json: str | None,
                      sidecar: Path, overwrite: bool, still=None) -> Path:
    """Write ``pixels`` (uint8 ``[F, H, W, 3]``) as a Motion Photo or a Live Photo; -> the JPEG's path.

    All files (the pair, the sidecar) are published together or not at all; ``write_video`` has refused
    any that exists (without ``overwrite``) before calling this.
    """
    check_phone_frames(pixels)
    files = written_files(path)
    targets = [*files, sidecar] if metadata_json is not None else list(files)
    photo = still_image(pixels, still)
    with atomic_write_all(targets, overwrite) as temporaries:
        try:
            contents = (motion_photo if format == MOTION_PHOTO else live_photo)(photo, pixels, fps, metadata_json)
        except InvalidInputError:  # already one line that says what to do
            raise
        except (OSError, ValueError, av.FFmpegError) as error:
            raise InvalidInputError(f"could not write {path}: {error}") from None
        for temporary, content in zip(temporaries, contents):
            temporary.write_bytes(content)
        if metadata_json is not None:
            temporaries[-1].write_text(metadata_json + "\n", encoding="utf-8")
    if metadata_json is None:
        sidecar.unlink(missing_ok=True)  # a sidecar left by the files just replaced
    return files[0]


def still_image(pixels: np.ndarray, still=None) -> Image.Image:
    """The JPEG's picture: ``still`` (a photo, as ``load_image`` takes it) centre-cropped to the frames' aspect
    at its own resolution, as the pipeline cropped it; without one, frame 0."""
    if still is None:
        return Image.fromarray(pixels[0])
    photo = load_image(still)
    height, width = pixels.shape[1:3]
    scale = min(photo.width / width, photo.height / height)
    return ImageOps.fit(photo, (max(1, round(width * scale)), max(1, round(height * scale))),
                        method=Image.Resampling.LANCZOS)


def motion_photo(still: Image.Image, pixels: np.ndarray, fps: float, metadata_json: str | None) -> tuple[bytes]:
    """An Android Motion Photo 1.0: the JPEG with its XMP, then the MP4."""
    video = h264_video(pixels, fps, "mp4", _comment(metadata_json))
    return (jpeg(still, motion_photo_xmp(len(video), metadata_json)) + video,)


def live_photo(still: Image.Image, pixels: np.ndarray, fps: float, metadata_json: str | None) -> tuple[bytes, bytes]:
    """An Apple Live Photo: the JPEG and the MOV, sharing a new content identifier."""
    identifier = str(uuid.uuid4()).upper()  # Apple's own identifiers are upper-case UUIDs
    movie = add_live_photo_boxes(h264_video(pixels, fps, "mov", _comment(metadata_json)), identifier, 1 / fps)
    xmp = jpeg_xmp(metadata_json, {}, {}) if metadata_json is not None else None
    return jpeg(still, xmp, apple_exif(identifier, still.size)), movie


def _comment(metadata_json: str | None) -> dict[str, str]:
    return {} if metadata_json is None else {"comment": metadata_json}


def jpeg(still: Image.Image, xmp: bytes | None, exif: bytes = b"") -> bytes:
    with io.BytesIO() as buffer:
        still.save(buffer, format="JPEG", quality=JPEG_QUALITY, xmp=xmp, exif=exif)
        data = buffer.getvalue()
    if xmp is not None and xmp not in data:  # Pillow before 11.1 ignores xmp= without a word
        raise InvalidInputError(f"Pillow {PIL.__version__} writes no XMP into JPEGs, and phones find the video through "
                                f"it; install Pillow 11.1 or newer (pip install -U pillow)")
    return data


def motion_photo_xmp(video_length: int, metadata_json: str | None) -> bytes:
    """Camera and Container XMP of Motion Photo 1.0: the directory lists the JPEG, then the video and its length."""
    attributes = {
        "GCamera:MotionPhoto": 1,
        "GCamera:MotionPhotoVersion": 1,
        "GCamera:MotionPhotoPresentationTimestampUs": STILL_TIMESTAMP_US,
    }
    items = [("image/jpeg", "Primary", 0), ("video/mp4", "MotionPhoto", video_length)]
    directory = "".join(
        f'<rdf:li rdf:parseType="Resource"><Container:Item Item:Mime="{mime}" Item:Semantic="{semantic}" '
        f'Item:Length="{length}" Item:Padding="0"/></rdf:li>'
        for mime, semantic, length in items
    )
    directory = f"<Container:Directory><rdf:Seq>{directory}</rdf:Seq></Container:Directory>"
    return jpeg_xmp(metadata_json, MOTION_PHOTO_NAMESPACES, attributes, directory)


def jpeg_xmp(metadata_json: str | None, namespaces: dict, attributes: dict, elements: str = "") -> bytes:
    """A JPEG's XMP packet: one rdf:Description, with the settings where one JPEG segment has room for them."""
    namespaces = {**namespaces, "livephoto": SETTINGS_NAMESPACE}
    declarations = "".join(f' xmlns:{prefix}="{uri}"' for prefix, uri in namespaces.items())
    properties = "".join(f' {name}="{value}"' for name, value in attributes.items())

    def packet(settings: str) -> bytes:
        return (
            '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about=""{declarations}{properties}>{elements}{settings}</rdf:Description>'
            '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
        ).encode("utf-8")

    with_settings = packet(f"<livephoto:metadata>{escape(metadata_json)}</livephoto:metadata>" if metadata_json else "")
    # Larger settings (a ComfyUI workflow can be) stay in the video's comment and the sidecar.
    return with_settings if len(with_settings) <= MAX_JPEG_XMP_BYTES else packet("")


def apple_exif(content_identifier: str, size: tuple[int, int]) -> bytes:
    """The JPEG's EXIF (big-endian TIFF): the fields EXIF requires of a JPEG, and Apple's MakerNote.

    Written here because Pillow stores a MakerNote as BYTE, where EXIF's type for it is UNDEFINED.
    The Exif IFD comes first, IFD0 after it: each offset is then known before it is written.
    """
    width, height = size
    note = apple_maker_note(content_identifier)
    exif_ifd = _ifd([
        (EXIF_VERSION, _UNDEFINED, 4, b"0232"),
        (COMPONENTS_CONFIGURATION, _UNDEFINED, 4, bytes([1, 2, 3, 0])),  # Y, Cb, Cr
        (MAKER_NOTE, _UNDEFINED, len(note), note),
        (FLASHPIX_VERSION, _UNDEFINED, 4, b"0100"),
        (COLOR_SPACE, _SHORT, 1, struct.pack(">H", 1)),  # sRGB
        (PIXEL_X_DIMENSION, _LONG, 1, struct.pack(">I", width)),
        (PIXEL_Y_DIMENSION, _LONG, 1, struct.pack(">I", height)),
    ], TIFF_HEADER_SIZE)
    ifd0_start = TIFF_HEADER_SIZE + len(exif_ifd)
    ifd0 = _ifd([
        (X_RESOLUTION, _RATIONAL, 1, struct.pack(">II", 72, 1)),
        (Y_RESOLUTION, _RATIONAL, 1, struct.pack(">II", 72, 1)),
        (RESOLUTION_UNIT, _SHORT, 1, struct.pack(">H", 2)),  # inches
        (YCBCR_POSITIONING, _SHORT, 1, struct.pack(">H", 1)),  # centred
        (EXIF_IFD_POINTER, _LONG, 1, struct.pack(">I", TIFF_HEADER_SIZE)),
    ], ifd0_start)
    return b"Exif\0\0" + b"MM\0\x2a" + struct.pack(">I", ifd0_start) + exif_ifd + ifd0


def apple_maker_note(content_identifier: str) -> bytes:
    """Apple's MakerNote holding one tag, 0x0011, the Live Photo's content identifier: a signature, then a
    big-endian IFD whose offsets count from the MakerNote's first byte (so it can sit anywhere in the EXIF)."""
    value = content_identifier.encode("ascii") + b"\0"
    entry = (CONTENT_IDENTIFIER_TAG, _ASCII, len(value), value)
    return APPLE_MAKER_NOTE_HEADER + _ifd([entry], len(APPLE_MAKER_NOTE_HEADER))


def _ifd(entries: list[tuple[int, int, int, bytes]], start: int) -> bytes:
    """A big-endian TIFF IFD that will sit at offset ``start``: its (tag, type, count, value) entries in tag
    order, no next IFD, then the values too long for an entry's 4 bytes, each at an even offset."""
    table, data = [struct.pack(">H", len(entries))], b""
    for tag, kind, count, value in entries:
        if len(value) <= 4:
            table.append(struct.pack(">HHI", tag, kind, count) + value.ljust(4, b"\0"))
        else:
            table.append(struct.pack(">HHII", tag, kind, count, start + _ifd_size(len(entries)) + len(data)))
            data += value + b"\0" * (len(value) % 2)
    return b"".join(table) + struct.pack(">I", 0) + data


def _ifd_size(entry_count: int) -> int:
    return 2 + 12 * entry_count + 4


def h264_video(pixels: np.ndarray, fps: float, container_format: str, metadata: dict[str, str]) -> bytes:
    """H.264 in yuv420p at limited range, tagged BT.709, in an MP4 or MOV (in memory: a few seconds of video).

    The tags say how to turn the video back into RGB: without them players guess BT.601 or BT.709 by
    the frame size.
    """
    if "libx264" not in av.codecs_available:
        raise InvalidInputError("phones play H.264 video and this PyAV has no libx264 encoder; install PyAV's wheel "
                                "from PyPI, which bundles it")
    height, width = pixels.shape[1:3]
    # yuv420p stores chroma at half resolution, so H.264 needs even sizes: repeat the last column or row.
    pixels = np.pad(pixels, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    with io.BytesIO() as buffer:
        with av.open(buffer, "w", format=container_format) as container:
            container.metadata.update(metadata)
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.height, stream.width = pixels.shape[1:3]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18"}  # visually lossless
            context = stream.codec_context
            context.color_range = av.video.reformatter.ColorRange.MPEG
            context.colorspace = av.video.reformatter.Colorspace.ITU709
            context.color_primaries = av.video.reformatter.ColorPrimaries.BT709
            context.color_trc = av.video.reformatter.ColorTrc.BT709
            for frame in pixels:
                rgb = av.VideoFrame.from_ndarray(frame, format="rgb24")
                yuv = rgb.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
                container.mux(stream.encode(yuv))
            container.mux(stream.encode(None))
        return buffer.getvalue()
