"""Video files: atomic writes, animated WebP / GIF / MP4 out, anything PyAV decodes in.

Written files never appear half-done: they are encoded into a temporary file beside the target and
moved into place only when complete. Metadata (seed, settings, model hashes: whatever the caller
passes) goes inside the file where the format has room for it and always into a JSON sidecar
``<name>.json`` as well.
"""

import io
import json
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from xml.sax.saxutils import escape, unescape

import av
import numpy as np
import torch
from PIL import GifImagePlugin, Image, ImageSequence

from .checks import check_fps, whole_number
from .defaults import MAX_CLIP_BYTES, MAX_DECODED_FRAMES, MAX_FRAME_PIXELS
from .errors import InvalidInputError
from .fileio import atomic_write, check_input_path, check_target
from .loading.schema import parse_json
from .phone import NAMES, checked_phone_format, write_phone_photo, written_files

SUPPORTED_EXTENSIONS = (".webp", ".gif", ".mp4")
DEFAULT_FPS = 8.0

# GIF delays are whole centiseconds and browsers stretch delays under 2 cs to 10 cs.
_GIF_MIN_DELAY_CS = 2
_XMP_NAMESPACE = "https://github.com/livephoto-sd15/ComfyUI-LivePhoto#"
_XMP_PATTERN = re.compile(r"<livephoto:metadata>(.*?)</livephoto:metadata>", re.DOTALL)


@dataclass(frozen=True, eq=False)
class VideoClip:
    """Decoded frames, uint8 RGB ``[F, H, W, 3]``, and the rate at which they play at real speed."""

    frames: np.ndarray
    fps: float


# ---------------------------------------------------------------------------------------------
# Writing


def metadata_sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of a video: ``out.webp`` -> ``out.webp.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def check_output(path: str | os.PathLike, overwrite: bool = False, format: str | None = None) -> str | None:
    """Refuse an output that ``write_video`` could not write, before any work: a name of no format it
    writes, and any of its files (``output_files``) that cannot be written (``fileio.check_target``: a
    missing folder, a folder in the way, a broken link, an existing file without ``overwrite``). The
    CLI runs it before loading the model, ``write_video`` before encoding. -> its phone format or None.
    """
    path = Path(path)
    phone_format = checked_phone_format(path, format)
    if phone_format is None and path.suffix.lower() not in _ENCODERS:
        raise InvalidInputError(
            f"cannot write {path.name}: the output must end in {', '.join(SUPPORTED_EXTENSIONS)}, or be "
            f"{' or '.join(NAMES.values())}"
        )
    for target in output_files(path):
        check_target(target, overwrite, _role(target, path))
    return phone_format


def output_files(path: str | os.PathLike) -> tuple[Path, ...]:
    """Every file ``write_video`` writes (or, the sidecar, removes) for ``path``: the video or a phone format's
    files, then the settings sidecar."""
    return (*written_files(path), metadata_sidecar_path(path))


def _role(target: Path, path: Path) -> str:
    """How a file relates to the output asked for, where its name does not say it."""
    if target == path:
        return ""
    if target == metadata_sidecar_path(path):
        return f" (the settings sidecar of {path.name})"
    return f" (the {'photo' if target.suffix == '.jpg' else 'video'} of the Live Photo {path.name})"


def frames_to_uint8(frames) -> np.ndarray:
    """``[F, H, W, 3]`` frames (torch or numpy; float 0..1 or uint8) -> uint8 numpy array."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = frames.float() if frames.is_floating_point() else frames  # numpy has no bfloat16
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise InvalidInputError(f"frames must be [F, H, W, 3] RGB with F, H, W >= 1; got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInputError(f"frames must be float in 0..1 or uint8; got {array.dtype}")
    if not np.isfinite(array).all():
        raise InvalidInputError("frames contain NaN or infinity")
    return np.rint(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)


def ping_pong(frames: torch.Tensor) -> torch.Tensor:
    """The frames [F, ...] forward, then back without repeating either end: [0 1 2 3] -> [0 1 2 3 2 1],
    a loop with no jump from the last frame to the first."""
    return torch.cat([frames, frames.flip(0)[1:-1]]) if len(frames) >= 3 else frames


def write_video(
    frames,
    path: str | os.PathLike,
    fps: float = DEFAULT_FPS,
    metadata: dict | None = None,
    overwrite: bool = False,
    format: str | None = None,
    still=None,
) -> Path:
    """Write frames ``[F, H, W, 3]`` (float 0..1 or uint8) as .webp, .gif or .mp4, looping forever, or as a phone's
    live photo.

    Every frame is stored, identical neighbours included. WebP is lossless; GIF has a 256-colour
    palette per frame and delays in whole centiseconds (at least 2); MP4 is H.264 (MPEG-4 Part 2
    where libx264 is missing) in yuv420p, whose odd widths or heights are padded to even by
    repeating the last column or row. ``metadata`` goes into the file (WebP XMP, GIF comment, MP4
    "comment" tag) and into the sidecar ``<path>.json``; without metadata, a sidecar left by the
    file being overwritten is removed. Returns ``path``.

    Phone formats (phone.py), chosen by the name or by ``format``: ``NAME.MP.jpg`` (``"motionphoto"``,
    an Android Motion Photo) and ``NAME.livephoto`` (``"livephoto"``, an Apple Live Photo written as
    NAME.jpg + NAME.mov, all or neither); their JPEG shows ``still`` (a photo, e.g. the one animated)
    or frame 0; the JPEG's path is returned. The sidecar is ``<path>.json`` for them too.

    Every file it writes is checked (``check_output``) before the frames are encoded.
    """
    path = Path(path)
    phone_format = check_output(path, overwrite, format)
    if still is not None and phone_format is None:
        raise InvalidInputError(f"{path.name}: still= is the photo of a phone format; {path.suffix} has none")
    pixels = frames_to_uint8(frames)
    fps = check_fps(fps)
    metadata_json = _metadata_json(metadata)
    sidecar = metadata_sidecar_path(path)
    if phone_format is not None:
        return write_phone_photo(pixels, path, phone_format, fps, metadata_json, sidecar, overwrite, still)

    encoder = _ENCODERS[path.suffix.lower()]
    sidecar_written = False
    try:
        with atomic_write(path, overwrite) as temporary:
            try:
                encoder(pixels, temporary, fps, metadata_json)
            except (OSError, ValueError, av.FFmpegError) as error:
                raise InvalidInputError(f"could not write {path}: {error}") from None
            if metadata_json is not None:
                with atomic_write(sidecar, overwrite) as temporary_sidecar:
                    temporary_sidecar.write_text(metadata_json + "\n", encoding="utf-8")
                sidecar_written = True
    except BaseException:
        if sidecar_written:  # the video lost its final step: do not leave its sidecar alone
            sidecar.unlink(missing_ok=True)
        raise
    if metadata_json is None:
        sidecar.unlink(missing_ok=True)
    return path


def _metadata_json(metadata: dict | None) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidInputError(f"metadata must be a dict; got {type(metadata).__name__}")
    try:
        # ASCII-only so it also fits GIF comments; NaN is not JSON.
        return json.dumps(metadata, ensure_ascii=True, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"metadata must be JSON-serialisable: {error}") from None


def _write_webp(pixels: np.ndarray, path: Path, fps: float, metadata_json: str | None) -> None:
    """Animated WebP assembled from lossless stills.

    libwebp's animation encoder silently merges identical consecutive frames into one longer
    frame, so the RIFF container (VP8X, ANIM, one ANMF per frame, XMP) is written here instead.
    """
    height, width = pixels.shape[1:3]
    duration_ms = max(1, round(1000 / fps))
    anmf_header = _u24(0) + _u24(0) + _u24(width - 1) + _u24(height - 1) + _u24(duration_ms)
    no_blend_keep = bytes([0b10])  # frames are opaque and full-size: no blending, no disposal
    features = 0b10 | (0b100 if metadata_json else 0)  # animation, XMP
    body = [
        _riff_chunk(b"VP8X", bytes([features, 0, 0, 0]) + _u24(width - 1) + _u24(height - 1)),
        _riff_chunk(b"ANIM", struct.pack("<IH", 0, 0)),  # background colour, loop forever
    ]
    for frame in pixels:
        body.append(_riff_chunk(b"ANMF", anmf_header + no_blend_keep + _still_webp_chunks(frame)))
    if metadata_json:
        body.append(_riff_chunk(b"XMP ", _xmp_packet(metadata_json)))
    payload = b"WEBP" + b"".join(body)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(payload)) + payload)


def _still_webp_chunks(frame: np.ndarray) -> bytes:
    """The image chunks of one lossless still WebP, without its RIFF header or VP8X chunk."""
    with io.BytesIO() as buffer:
        Image.fromarray(frame).save(buffer, format="WEBP", lossless=True)
        data = buffer.getvalue()
    chunks, offset = [], 12  # "RIFF", size, "WEBP"
    while offset < len(data):
        fourcc, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        end = offset + 8 + size + (size & 1)
        if fourcc in (b"ALPH", b"VP8 ", b"VP8L"):
            chunks.append(data[offset:end])
        offset = end
    return b"".join(chunks)


def _riff_chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)


def _u24(value: int) -> bytes:
    return value.to_bytes(3, "little")


def _xmp_packet(metadata_json: str) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:livephoto="{_XMP_NAMESPACE}">'
        f"<livephoto:metadata>{escape(metadata_json)}</livephoto:metadata>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode("utf-8")


def _write_gif(pixels: np.ndarray, path: Path, fps: float, metadata_json: str | None) -> None:
    """Animated GIF, one full frame with its own palette per input frame.

    Pillow's animated GIF writer drops a frame identical to the previous one (adding its delay to
    the previous frame), so the file is assembled from Pillow's per-frame GIF writers instead.
    """
    delay_ms = 10 * max(_GIF_MIN_DELAY_CS, round(100 / fps))
    palettised = [Image.fromarray(frame).quantize(256) for frame in pixels]
    header_info = {"loop": 0, "comment": metadata_json.encode("ascii") if metadata_json else b""}
    header, _ = GifImagePlugin.getheader(palettised[0], info=header_info)
    with open(path, "wb") as file:
        file.writelines(header)
        for frame in palettised:
            file.writelines(GifImagePlugin.getdata(frame, duration=delay_ms, include_color_table=True))
        file.write(b";")  # GIF trailer


def _write_mp4(pixels: np.ndarray, path: Path, fps: float, metadata_json: str | None) -> None:
    height, width = pixels.shape[1:3]
    # yuv420p stores chroma at half resolution, so H.264 needs even sizes.
    pixels = np.pad(pixels, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        if metadata_json:
            container.metadata["comment"] = metadata_json
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = pixels.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}  # visually lossless
        else:
            stream.bit_rate = int(0.5 * stream.width * stream.height * fps)  # ~0.5 bit per pixel
        for frame in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


_ENCODERS = {".webp": _write_webp, ".gif": _write_gif, ".mp4": _write_mp4}


# ---------------------------------------------------------------------------------------------
# Reading


def read_video(
    path: str | os.PathLike, max_frames: int | None = None, stride: int = 1, start: int = 0
) -> VideoClip:
    """Decode frames ``start, start + stride, ...`` (at most ``max_frames``) as uint8 RGB, all held at once.

    WebP goes through Pillow (FFmpeg, up to 8.1 at least, cannot decode animated WebP); everything
    else through PyAV (mp4, webm, mov, gif, ...), with Pillow as a second try for GIFs PyAV
    refuses. ``fps`` of the result is the source rate divided by ``stride`` (8 where the file
    states no rate). Frames before ``start`` are decoded and dropped, not seeked over.

    The limits of ``iter_frames`` apply, and the frames kept may take at most ``MAX_CLIP_BYTES``;
    ``iter_frames`` reads a clip of any length one frame at a time.
    """
    reading = _Reading()
    frames = []
    for frame in _frames(path, max_frames, stride, start, reading):
        if (len(frames) + 1) * frame.nbytes > MAX_CLIP_BYTES:
            height, width = frame.shape[:2]
            raise InvalidInputError(
                f"{path}: {len(frames) + 1} frames of {width}x{height} take more than the "
                f"{MAX_CLIP_BYTES // 2**20} MiB that read_video holds at once; pass max_frames or a stride, or "
                f"read it a frame at a time with iter_frames"
            )
        frames.append(frame)
    return VideoClip(frames=np.stack(frames), fps=reading.fps / reading.stride)


def iter_frames(
    path: str | os.PathLike, max_frames: int | None = None, stride: int = 1, start: int = 0
) -> Iterator[np.ndarray]:
    """The frames ``read_video`` selects, uint8 RGB ``[H, W, 3]``, decoded one at a time: memory holds one frame
    (and the decoder's own buffers), whatever the length of the clip.

    Refused before any frame is decoded: frames of more than ``MAX_FRAME_PIXELS`` pixels (from the stream's
    header), and a read that would decode more than ``MAX_DECODED_FRAMES`` frames (where the file states its
    count). Refused while decoding, for files whose header lies: a frame bigger than the cap, and the frame
    after the ``MAX_DECODED_FRAMES``th.
    """
    return _frames(path, max_frames, stride, start, _Reading())


@dataclass
class _Reading:
    """What one read has learned: the source's frame rate, the stride it reads at, the frames decoded so far."""

    fps: float = DEFAULT_FPS
    stride: int = 1
    decoded: int = 0


def _frames(path, max_frames, stride: int, start: int, reading: _Reading) -> Iterator[np.ndarray]:
    """The checks that need no decoding, made now; then the frames, as a generator."""
    path = Path(path)
    _check_readable(path)
    reading.stride = stride = _at_least("stride", stride, 1)
    start = _at_least("start", start, 0)
    if max_frames is not None:
        max_frames = _at_least("max_frames", max_frames, 1)
        _check_decoded_count(path, start + (max_frames - 1) * stride + 1, "asked")
    decoders = [_decode_with_pil] if path.suffix.lower() == ".webp" else [_decode_with_pyav]
    if path.suffix.lower() == ".gif":
        decoders.append(_decode_with_pil)
    return _decoded_frames(path, decoders, max_frames, stride, start, reading)


def _decoded_frames(path: Path, decoders, max_frames, stride: int, start: int, reading: _Reading):
    first_error, kept = None, 0
    for decode in decoders:
        try:
            for index, frame in enumerate(decode(path, max_frames, stride, start, reading)):
                if index >= kept:  # frames a decoder gave before failing are not given twice by the next one
                    kept += 1
                    yield frame
            break
        except InvalidInputError:  # our own verdict (no video stream, too large), not a decoder failure
            raise
        except _DECODE_ERRORS as error:
            first_error = first_error or error
    else:
        raise InvalidInputError(f"{path} is not a video that can be decoded: {_reason(first_error)}")
    if reading.decoded == 0:
        raise InvalidInputError(f"{path} holds no video frames")
    if kept == 0:
        raise InvalidInputError(f"{path} has {reading.decoded} frames; start={start} is past the end")


# What PyAV and Pillow raise for files they cannot decode (Pillow's UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, Image.DecompressionBombError)


def _at_least(name: str, value, lowest: int) -> int:
    """A whole number (Python or numpy) of at least `lowest`, for read_video's frame selection."""
    value = whole_number(f"read_video: {name}", value)
    if value < lowest:
        raise InvalidInputError(f"read_video: {name} must be a whole number >= {lowest}; got {value}")
    return value


def _check_readable(path: Path) -> None:
    check_input_path(path, "a video file")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path} is empty (0 bytes)")


def _check_frame_size(path: Path, width: int, height: int) -> None:
    if width * height > MAX_FRAME_PIXELS:
        raise InvalidInputError(
            f"{path} has frames of {width}x{height}, more than the {MAX_FRAME_PIXELS:,} pixels a video frame may "
            f"have; scale it down first, e.g. ffmpeg -i {path.name} -vf scale=-2:1080 smaller.mp4"
        )


def _check_decoded_count(path: Path, count: int, how: str) -> None:
    """`count`: frames a read would decode, as `how` ("asked", "declared", "found") says it knows."""
    if count > MAX_DECODED_FRAMES:
        had = {"asked": f"reading that far decodes {count:,} frames", "declared": f"it has {count:,} frames",
               "found": f"it has more than {MAX_DECODED_FRAMES:,} frames"}[how]
        raise InvalidInputError(
            f"{path}: {had}, and one read decodes at most {MAX_DECODED_FRAMES:,}; read fewer (max_frames, "
            f"--max-frames) or cut the clip first, e.g. ffmpeg -i {path.name} -t 60 -c copy shorter{path.suffix}"
        )


def _wanted(index: int, start: int, stride: int) -> bool:
    return index >= start and (index - start) % stride == 0


def _decode_with_pyav(path: Path, max_frames: int | None, stride: int, start: int, reading: _Reading):
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise InvalidInputError(f"{path} has no video stream")
        stream = container.streams.video[0]
        _check_frame_size(path, stream.codec_context.width, stream.codec_context.height)  # before any decoding
        if max_frames is None and stream.frames:
            _check_decoded_count(path, stream.frames, "declared")
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        reading.fps = float(rate) if rate else DEFAULT_FPS
        reading.decoded, kept = 0, 0
        for frame in container.decode(stream):
            _check_frame_size(path, frame.width, frame.height)  # a header that understated the size
            reading.decoded += 1
            if reading.decoded > MAX_DECODED_FRAMES:  # a header that understated the count, or stated none
                _check_decoded_count(path, reading.decoded, "found")
            if _wanted(reading.decoded - 1, start, stride):
                yield frame.to_ndarray(format="rgb24")
                kept += 1
                if kept == max_frames:
                    break


def _decode_with_pil(path: Path, max_frames: int | None, stride: int, start: int, reading: _Reading):
    total_ms, kept = 0, 0
    reading.decoded = 0
    with Image.open(path) as image:
        _check_frame_size(path, *image.size)  # every frame of a GIF or WebP has the canvas' size
        for index, frame in enumerate(ImageSequence.Iterator(image)):
            reading.decoded += 1
            if reading.decoded > MAX_DECODED_FRAMES:
                _check_decoded_count(path, reading.decoded, "found")
            frame.load()  # WebP frames report their duration only once decoded
            total_ms += frame.info.get("duration") or 0
            reading.fps = 1000 * reading.decoded / total_ms if total_ms > 0 else DEFAULT_FPS
            if _wanted(index, start, stride):
                yield np.asarray(frame.convert("RGB"))
                kept += 1
                if kept == max_frames:
                    break


def _reason(error: Exception) -> str:
    """One line from a PyAV or Pillow exception, without errno prefixes."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text.splitlines()[0]


def read_metadata(path: str | os.PathLike) -> dict:
    """Metadata stored by ``write_video``: the sidecar if present, else the copy inside the file.

    Returns ``{}`` for a video that carries none.
    """
    path = Path(path)
    sidecar = metadata_sidecar_path(path)
    if sidecar.is_file():
        metadata = parse_json(sidecar.read_bytes(), str(sidecar), "write it again or remove it", InvalidInputError)
        if not isinstance(metadata, dict):
            raise InvalidInputError(f"{sidecar} does not hold a JSON object")
        return metadata
    _check_readable(path)
    try:
        embedded = _read_embedded_metadata(path)
    except _DECODE_ERRORS as error:
        raise InvalidInputError(f"{path} is not a video that can be read: {_reason(error)}") from None
    try:
        metadata = parse_json(embedded, str(path), "", InvalidInputError) if embedded else {}
    except InvalidInputError:
        return {}  # a comment some other program wrote
    return metadata if isinstance(metadata, dict) else {}


def _read_embedded_metadata(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in (".webp", ".gif", ".jpg", ".jpeg"):  # JPEGs: the still of a phone format
        with Image.open(path) as image:
            if suffix == ".gif":
                comment = image.info.get("comment")
                return comment.decode("utf-8", errors="replace") if comment else None
            xmp = image.info.get("xmp")
        found = _XMP_PATTERN.search(xmp.decode("utf-8", errors="replace")) if xmp else None
        return unescape(found.group(1)) if found else None
    with av.open(str(path)) as container:
        return container.metadata.get("comment")

