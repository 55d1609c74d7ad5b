"""Checks on user settings, shared by the Python API, the CLI and the nodes.

Each raises InvalidInputError naming the setting, the value and the valid range, before any
heavy work starts.
"""

from __future__ import annotations

import math

from .defaults import (
    CLIP_CONTEXT,
    DEFAULT_CONTENT_SCALE,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INVERSION_END,
    DEFAULT_INVERSION_START,
)
from .errors import InvalidInputError

MIN_FRAMES = 2  # motion needs two frames
MAX_STEPS = 1000
MIN_SIZE, MAX_SIZE = 64, 1024
MAX_CONTENT_SCALE = 2.0
MAX_SEED = 2**63 - 1  # seeds are int64
MAX_PROMPT_TOKENS = CLIP_CONTEXT - 2  # the start and end tokens take two places


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{name} must be a number; got {value!r}")
    if not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number; got {value}")
    return value


def _whole(name: str, value) -> int:
    value = _number(name, value)
    if value != int(value):
        raise InvalidInputError(f"{name} must be a whole number; got {value}")
    return int(value)


def check_frames(num_frames, max_frames: int) -> int:
    num_frames = _whole("frames", num_frames)
    if not MIN_FRAMES <= num_frames <= max_frames:
        raise InvalidInputError(
            f"frames must be from {MIN_FRAMES} to {max_frames} (the motion modules' longest clip); got {num_frames}"
        )
    return num_frames


def check_steps(steps, name: str = "steps") -> int:
    steps = _whole(name, steps)
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidInputError(f"{name} must be from 1 to {MAX_STEPS}; got {steps}")
    return steps


def check_guidance(guidance_scale) -> float:
    guidance_scale = float(_number("guidance scale", guidance_scale))
    if guidance_scale < 0:
        raise InvalidInputError(
            f"guidance scale must be 0 or more (1 or less turns guidance off; {DEFAULT_GUIDANCE_SCALE} is usual); "
            f"got {guidance_scale}"
        )
    return guidance_scale


def check_size(height, width) -> tuple[int, int]:
    sizes = []
    for name, value in (("height", height), ("width", width)):
        value = _whole(name, value)
        if value % 8 or not MIN_SIZE <= value <= MAX_SIZE:
            lower = max(MIN_SIZE, value - value % 8)
            raise InvalidInputError(
                f"{name} must be a multiple of 8 from {MIN_SIZE} to {MAX_SIZE}; got {value} (try {lower})"
            )
        sizes.append(value)
    return sizes[0], sizes[1]


def check_content_scale(scale) -> float:
    scale = float(_number("content scale", scale))
    if not 0 <= scale <= MAX_CONTENT_SCALE:
        raise InvalidInputError(
            f"content scale must be from 0 (photo tokens off) to {MAX_CONTENT_SCALE:g} ({DEFAULT_CONTENT_SCALE:g} is "
            f"trained); got {scale}"
        )
    return scale


def check_prior_weights(start, end) -> tuple[float, float]:
    start = float(_number("inversion start", start))
    end = float(_number("inversion end", end))
    for name, value in (("inversion start", start), ("inversion end", end)):
        if not 0 <= value <= 1:
            raise InvalidInputError(
                f"{name} must be from 0 to 1 (the paper uses {DEFAULT_INVERSION_START} and {DEFAULT_INVERSION_END}); "
                f"got {value}"
            )
    return start, end


def check_seed(seed) -> int:
    seed = _whole("seed", seed)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(f"seed must be from 0 to 2**63 - 1; got {seed}")
    return seed


def check_prompt_tokens(num_tokens: int, what: str = "prompt") -> None:
    """num_tokens: the prompt's tokens without the start and end tokens."""
    if num_tokens > MAX_PROMPT_TOKENS:
        raise InvalidInputError(
            f"the {what} is {num_tokens} tokens long; the CLIP text encoder reads at most {MAX_PROMPT_TOKENS}: "
            f"shorten it (motion words first)"
        )
