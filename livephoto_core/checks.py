"""Checks on user settings, shared by the Python API, the CLI and the nodes.

Each raises InvalidInputError naming the setting, the value and the valid range, before any
heavy work starts.
"""

from __future__ import annotations

import math
import numbers

import torch

from .defaults import (
    CLIP_CONTEXT,
    DEFAULT_CONTENT_SCALE,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INVERSION_END,
    DEFAULT_INVERSION_START,
)
from .errors import InvalidInputError

MIN_FRAMES = 2  # motion needs two frames
# Beyond one window the video is sampled as overlapping windows (``windows``), whose cost grows with the
# frames; 512 frames are a minute at 8 fps, and their latents and blend buffers stay under 1 GB at 512 px.
MAX_FRAMES = 512
MAX_STEPS = 1000
MIN_SIZE, MAX_SIZE = 64, 1024
MAX_CONTENT_SCALE = 2.0
# Far above any useful guidance (7.5 is usual, 20 already burns the frames); what lies beyond only
# overflows the latents, in float16 first.
MAX_GUIDANCE = 100.0
# A clip's playback rate: GIF and WebP store each frame's duration in 16 and 24 bits (centiseconds,
# milliseconds), which rates far below 1 fps overflow; 60 is as fast as phones and browsers play.
MIN_FPS, MAX_FPS = 1.0, 60.0
MAX_SEED = 2**63 - 1  # seeds are int64
MAX_PROMPT_TOKENS = CLIP_CONTEXT - 2  # the start and end tokens take two places


def _number(name: str, value) -> float:
    """Any real number (Python's, numpy's), finite; never a bool, which is a mistake for a number here."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be a number; got {value!r}")
    if isinstance(value, numbers.Integral):
        return value  # exact: a huge int would overflow the float conversion below
    if not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number; got {value}")
    return float(value)


def whole_number(name: str, value) -> int:
    """Python and numpy integers, and floats that hold a whole number (the CLI parses some as floats)."""
    value = _number(name, value)
    if value != int(value):
        raise InvalidInputError(f"{name} must be a whole number; got {value}")
    return int(value)


def _bounded(name: str, value, low: float, high: float, hint: str = "") -> float:
    """A finite float from `low` to `high`, else an error naming the range (and `hint`, what is usual)."""
    value = _number(name, value)
    if not low <= value <= high:  # compared before float(): a huge int would overflow it
        raise InvalidInputError(f"{name} must be from {low:g} to {high:g}{hint}; got {value}")
    return float(value)


def check_frames(num_frames) -> int:
    num_frames = whole_number("frames", num_frames)
    if not MIN_FRAMES <= num_frames <= MAX_FRAMES:
        raise InvalidInputError(f"frames must be from {MIN_FRAMES} to {MAX_FRAMES}; got {num_frames}")
    return num_frames


def check_window_length(length, max_window: int) -> int:
    """A context window of `length` frames, at most `max_window` (the motion modules' longest clip)."""
    length = whole_number("window length", length)
    if not MIN_FRAMES <= length <= max_window:
        raise InvalidInputError(
            f"window length must be from {MIN_FRAMES} to {max_window} frames (the longest clip this model's motion "
            f"modules handle); got {length}"
        )
    return length


def check_window_overlap(overlap, length: int) -> int:
    """The frames two neighbouring windows of `length` frames share."""
    overlap = whole_number("window overlap", overlap)
    if not 0 <= overlap < length:
        raise InvalidInputError(
            f"window overlap must be from 0 to {length - 1} frames (less than the window length, {length}); got {overlap}"
        )
    return overlap


def check_steps(steps, name: str = "steps") -> int:
    steps = whole_number(name, steps)
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidInputError(f"{name} must be from 1 to {MAX_STEPS}; got {steps}")
    return steps


def check_guidance(guidance_scale) -> float:
    return _bounded("guidance scale", guidance_scale, 0, MAX_GUIDANCE,
                    f" (1 or less turns guidance off; {DEFAULT_GUIDANCE_SCALE} is usual)")


def check_size(height, width) -> tuple[int, int]:
    sizes = []
    for name, value in (("height", height), ("width", width)):
        value = whole_number(name, value)
        if value % 8 or not MIN_SIZE <= value <= MAX_SIZE:
            lower = max(MIN_SIZE, value - value % 8)
            raise InvalidInputError(
                f"{name} must be a multiple of 8 from {MIN_SIZE} to {MAX_SIZE}; got {value} (try {lower})"
            )
        sizes.append(value)
    return sizes[0], sizes[1]


def check_content_scale(scale) -> float:
    return _bounded("content scale", scale, 0, MAX_CONTENT_SCALE,
                    f" (0 turns the photo tokens off; {DEFAULT_CONTENT_SCALE:g} is trained)")


def check_prior_weights(start, end) -> tuple[float, float]:
    hint = f" (the paper uses {DEFAULT_INVERSION_START} and {DEFAULT_INVERSION_END})"
    return _bounded("inversion start", start, 0, 1, hint), _bounded("inversion end", end, 0, 1, hint)


def check_fps(fps) -> float:
    return _bounded("fps", fps, MIN_FPS, MAX_FPS, " (LivePhoto's clips play at 8)")


def check_seed(seed) -> int:
    seed = whole_number("seed", seed)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(f"seed must be from 0 to 2**63 - 1; got {seed}")
    return seed


def check_device(device) -> torch.device:
    """A device this torch can run on (cpu, cuda[:N], mps), checked before any model loads onto it."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise InvalidInputError(
                f"device {device}: CUDA is not available in this torch build ({torch.__version__}, CPU only); use "
                f"cpu, or install a CUDA build of torch"
            )
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidInputError(
                f"device {device}: this torch has CUDA but sees no GPU; check the driver and CUDA_VISIBLE_DEVICES, "
                f"or use cpu"
            )
        if device.index is not None and device.index >= count:
            raise InvalidInputError(f"device {device}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"device {device}: Apple's Metal (MPS) is not available on this machine; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InvalidInputError(f"device {device}: LivePhoto runs on cpu, cuda, cuda:N or mps")
    return device


def check_text(text, what: str = "prompt") -> str:
    """`text` if it is a str that UTF-8 can encode, as the tokenizer and the settings sidecar need.

    Lone surrogates are what Python makes of bytes that are not UTF-8: in sys.argv from a shell in a
    Latin-1 locale ('é' arrives as '\\udce9'), or from a JSON escape such as "\\ud800".
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"the {what} must be text; got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInputError(
            f"the {what} holds {_undecodable(text[error.start])} (character {error.start + 1}); pass UTF-8 text "
            f"(in a shell, use a UTF-8 locale such as LANG=C.UTF-8)"
        ) from None
    return text


def _undecodable(character: str) -> str:
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # how Python's surrogateescape keeps a byte that is not UTF-8
        return f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8"
    return f"a lone surrogate U+{code:04X}, which UTF-8 cannot encode"


def check_prompt_tokens(num_tokens: int, what: str = "prompt") -> None:
    """num_tokens: the prompt's tokens without the start and end tokens."""
    if num_tokens > MAX_PROMPT_TOKENS:
        raise InvalidInputError(
            f"the {what} is {num_tokens} tokens long; the CLIP text encoder reads at most {MAX_PROMPT_TOKENS}: "
            f"shorten it (motion words first)"
        )
