"""Motion intensity (paper §3.4): mean SSIM of adjacent frames, binned into 10 levels.

Level 1 is the stillest decile of the training set (highest SSIM) and level 10 the most motion
(lowest SSIM). The 9 decile boundaries are fitted on the training set with ``fit_thresholds`` and
stored in the checkpoint, so that inference, the intensity node and training agree.

Frames are ``[F, H, W, 3]`` RGB in 0..1 (ComfyUI's IMAGE layout), as torch tensors or numpy arrays;
uint8 frames are read as value / 255.
"""

import bisect
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .checks import whole_number
from .errors import InvalidInputError

LEVELS = 10
STILLEST_LEVEL = 1

# skimage.color.rgb2gray's luma weights (ITU-R BT.709).
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)

# skimage.metrics.structural_similarity defaults: 7x7 uniform window, sample covariance.
SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# Placeholder thresholds for when no fitted ones are at hand: they spread the usual range of
# adjacent-frame SSIM of short clips (about 0.55 for fast motion to 0.96 for nearly still ones)
# over 10 bins. A trained checkpoint carries the deciles fitted on its own training set
# (``fit_thresholds``), and those replace these everywhere.
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.55, 0.62, 0.68, 0.74, 0.79, 0.84, 0.88, 0.92, 0.96)

# Pixels of one batch of frame pairs (or of one band of rows of a pair too big for a batch) in
# mean_adjacent_ssim: SSIM keeps about a dozen float64 buffers of this size alive, so 2**20 pixels bound it
# (measured: under 200 MB beyond the frames held) whatever the clip's length and frame size.
_PIXELS_PER_CHUNK = 2**20


@dataclass(frozen=True)
class IntensityMeasurement:
    """A clip's mean adjacent-frame SSIM and the level (1 stillest .. 10) it falls in."""

    mean_ssim: float
    level: int


def to_grayscale(frames) -> torch.Tensor:
    """``[F, H, W, 3]`` RGB frames -> ``[F, H, W]`` luma with rgb2gray's weights.

    float32 and float64 frames keep their dtype; half precision is summed in float32 (rounding the
    sum to half precision would blur the small differences SSIM measures); uint8 frames become
    float64 in 0..1, as skimage's img_as_float.
    """
    rgb = _checked_frames(frames)
    _check_values(rgb)
    return _luma(rgb)


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    """to_grayscale of frames already checked."""
    if rgb.dtype == torch.uint8:
        rgb = rgb.to(torch.float64) / 255
    elif rgb.dtype in (torch.float16, torch.bfloat16):
        rgb = rgb.float()
    weights = torch.tensor(GRAY_WEIGHTS, dtype=rgb.dtype, device=rgb.device)
    return rgb @ weights


def ssim(a, b) -> torch.Tensor:
    """SSIM of grayscale images ``[H, W]`` (0-dim result) or batches ``[N, H, W]`` (result ``[N]``).

    Equals ``skimage.metrics.structural_similarity(a, b, data_range=1.0)``: the local statistics
    over every full 7x7 window (avg_pool2d without padding is exactly the interior skimage keeps
    after cropping 3 pixels on each side), sample covariance, mean over windows. Computed in
    float64, because the variances are differences of nearly equal means.
    """
    x, y = _checked_pair(a, b)
    height, width = x.shape[-2:]
    sums = _ssim_sums(x.reshape(-1, height, width), y.reshape(-1, height, width))
    return (sums / _window_count(height, width)).reshape(x.shape[:-2])


def _checked_pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_float64(a), _as_float64(b)
    if x.shape != y.shape:
        raise InvalidInputError(f"SSIM needs two images of the same shape; got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim not in (2, 3):
        raise InvalidInputError(f"SSIM takes grayscale [H, W] or [N, H, W] images; got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise InvalidInputError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels; got {width}x{height}"
        )
    return x, y


def _window_count(height: int, width: int) -> int:
    return (height - SSIM_WINDOW + 1) * (width - SSIM_WINDOW + 1)


def _ssim_sums(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per pair of float64 ``[N, H, W]`` images, the sum of the SSIM map over its full windows, computed
    on bands of rows of at most about _PIXELS_PER_CHUNK pixels (consecutive bands share the window's
    height less one row, so every window lies in exactly one band)."""
    count, height, width = x.shape
    band = max(SSIM_WINDOW, _PIXELS_PER_CHUNK // (count * width))
    window_rows = height - SSIM_WINDOW + 1
    sums = torch.zeros(count, dtype=torch.float64, device=x.device)
    for first in range(0, window_rows, band - SSIM_WINDOW + 1):
        rows = slice(first, min(height, first + band))
        sums += _ssim_map(x[:, None, rows], y[:, None, rows]).sum(dim=(1, 2, 3))
    return sums


def _ssim_map(x4: torch.Tensor, y4: torch.Tensor) -> torch.Tensor:
    """SSIM at every full window of float64 ``[N, 1, H, W]`` images."""

    def window_mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, SSIM_WINDOW, stride=1)

    mean_x, mean_y = window_mean(x4), window_mean(y4)
    sample_correction = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    var_x = sample_correction * (window_mean(x4 * x4) - mean_x * mean_x)
    var_y = sample_correction * (window_mean(y4 * y4) - mean_y * mean_y)
    cov_xy = sample_correction * (window_mean(x4 * y4) - mean_x * mean_y)

    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    return ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / (
        (mean_x * mean_x + mean_y * mean_y + c1) * (var_x + var_y + c2)
    )


class AdjacentSSIM:
    """The running mean SSIM of adjacent frames of a clip fed in pieces of any length (``add``): the last frame
    of one piece is kept to pair with the first of the next, so pieces give the mean the whole clip gives.
    Each piece is converted to float64 a batch of _PIXELS_PER_CHUNK pixels at a time (bands of rows of larger
    frames), so memory beyond the pieces themselves stays under 200 MB, whatever the clip's length or frame size."""

    def __init__(self):
        self.frames = 0
        self._ssim_sum = 0.0  # of the adjacent pairs so far, one SSIM each
        self._last = None  # the last frame fed, grayscale float64 [1, H, W]

    def add(self, frames) -> None:
        """Feed ``[F, H, W, 3]`` RGB frames (as ``mean_adjacent_ssim`` takes them) that follow those fed before."""
        rgb = _checked_frames(frames)
        height, width = rgb.shape[1:3]
        if self._last is not None and self._last.shape[1:] != (height, width):
            raise InvalidInputError(
                f"frame {self.frames} is {width}x{height} but the frames before it are "
                f"{self._last.shape[2]}x{self._last.shape[1]}; motion intensity compares frames of one size"
            )
        frames_per_batch = max(1, _PIXELS_PER_CHUNK // (height * width))
        for first in range(0, len(rgb), frames_per_batch):
            batch = rgb[first : first + frames_per_batch]
            _check_values(batch)
            rows = max(1, _PIXELS_PER_CHUNK // (len(batch) * width))  # a 4K frame is 9 batches' worth
            gray = torch.cat([_luma(batch[:, top : top + rows]).to(torch.float64) for top in range(0, height, rows)],
                             dim=1)
            if self._last is not None:
                gray = torch.cat([self._last, gray])
            if len(gray) >= 2:
                x, y = _checked_pair(gray[:-1], gray[1:])
                self._ssim_sum += (_ssim_sums(x, y) / _window_count(height, width)).sum().item()
            self._last = gray[-1:].clone()  # a copy: a view would keep the whole batch alive
            self.frames += len(batch)

    def mean(self) -> float:
        """Mean SSIM over the adjacent pairs fed so far (paper eq. 4, over n-1 pairs)."""
        if self.frames < 2:
            raise InvalidInputError(f"motion intensity needs at least 2 frames; got {self.frames}")
        return self._ssim_sum / (self.frames - 1)


def mean_adjacent_ssim(frames) -> float:
    """Mean SSIM of the F-1 pairs of adjacent grayscale frames (paper eq. 4, over n-1 pairs), of ``[F, H, W, 3]``
    frames; a clip too long to hold goes through ``AdjacentSSIM`` a piece at a time."""
    meter = AdjacentSSIM()
    meter.add(frames)
    return meter.mean()


def fit_thresholds(ssims) -> tuple[float, ...]:
    """The 9 deciles (0.1 .. 0.9, numpy's linear interpolation) of training-set mean SSIMs.

    Ties (many clips with the same SSIM, e.g. still ones at 1.0) would give equal thresholds and
    empty levels; each threshold that is not above the previous one is moved to the next float
    above it (``np.nextafter``), so the result is strictly increasing and deterministic.
    """
    values = np.asarray(ssims, dtype=np.float64).ravel()
    if values.size < LEVELS:
        raise InvalidInputError(
            f"fitting {LEVELS} intensity levels needs at least {LEVELS} SSIM values; got {values.size}"
        )
    if not np.isfinite(values).all():
        raise InvalidInputError("fitting intensity thresholds: the SSIM values contain NaN or infinity")
    thresholds = np.quantile(values, np.arange(1, LEVELS) / LEVELS)
    for i in range(1, thresholds.size):
        if thresholds[i] <= thresholds[i - 1]:
            thresholds[i] = np.nextafter(thresholds[i - 1], np.inf)
    return tuple(float(t) for t in thresholds)


def validate_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """Check 9 finite, strictly increasing SSIM thresholds (e.g. read from a checkpoint)."""
    try:
        values = tuple(float(t) for t in thresholds)
    except (TypeError, ValueError):
        raise InvalidInputError(f"intensity thresholds must be {LEVELS - 1} numbers; got {thresholds!r}") from None
    if len(values) != LEVELS - 1:
        raise InvalidInputError(f"intensity thresholds must be {LEVELS - 1} numbers; got {len(values)}")
    if not all(math.isfinite(t) for t in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise InvalidInputError(f"intensity thresholds must be finite and strictly increasing; got {values}")
    return values


def level_from_ssim(ssim: float, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> int:
    """``10 - (number of thresholds <= ssim)``: ssim >= the last threshold is level 1, below the first is 10."""
    checked = validate_thresholds(thresholds)
    if not math.isfinite(ssim):
        raise InvalidInputError(f"mean SSIM must be a finite number; got {ssim}")
    return LEVELS - bisect.bisect_right(checked, ssim)


def validate_level(level, levels: int = LEVELS) -> int:
    """An intensity level as int: whole numbers 1..`levels` (the integers and whole floats that every
    setting takes, ``checks.whole_number``), else InvalidInputError.
    `levels`: the model's (LivePhotoConfig.intensity_levels) where one is at hand."""
    if isinstance(level, float):
        shown = f"{level:g}"  # the CLI reads "11" as 11.0: show it as typed
    elif isinstance(level, numbers.Number):
        shown = level
    else:
        shown = repr(level)  # text may hold line breaks
    message = f"intensity must be a whole number from 1 (still) to {levels} (most motion); got {shown}"
    try:
        value = whole_number("intensity", level)
    except InvalidInputError:
        raise InvalidInputError(message) from None
    if not STILLEST_LEVEL <= value <= levels:
        raise InvalidInputError(message)
    return value


def parse_intensity_schedule(text: str, levels: int = LEVELS) -> tuple[tuple[int, int], ...]:
    """``"2:0,8:31"`` -> keyframes ((level, frame), ...): level 2 at frame 0, 8 at frame 31, linear in
    between (``schedule_levels``). Levels are whole numbers 1..`levels`; frames count from 0 and rise.
    A plain level (``"5"``) is the one keyframe (5, 0): that level for every frame."""
    if ":" not in str(text):
        return ((intensity_from_text(text, 1, levels), 0),)
    keyframes = []
    for part in str(text).split(","):
        level, sep, frame = part.strip().partition(":")
        try:
            keyframe = int(level), int(frame)
        except ValueError:
            keyframe = None
        if not sep or keyframe is None:
            raise InvalidInputError(
                f"intensity schedule {text!r}: {part.strip()!r} is not LEVEL:FRAME; write keyframes such as "
                f"2:0,8:31 (level 2 at frame 0 rising to level 8 at frame 31)"
            )
        keyframes.append(keyframe)
    for level, frame in keyframes:
        if not STILLEST_LEVEL <= level <= levels:
            raise InvalidInputError(
                f"intensity schedule {text!r}: level {level} is outside 1 (still) to {levels} (most motion)"
            )
        if frame < 0:
            raise InvalidInputError(f"intensity schedule {text!r}: frame {frame} is negative; frames count from 0")
    frames = [frame for _, frame in keyframes]
    if any(later <= earlier for earlier, later in zip(frames, frames[1:])):
        raise InvalidInputError(
            f"intensity schedule {text!r}: keyframes must be in order of frame, each after the last; got frames "
            f"{', '.join(map(str, frames))}"
        )
    return tuple(keyframes)


def schedule_levels(keyframes: Sequence[tuple[int, int]], num_frames: int) -> tuple[float, ...]:
    """Keyframes ((level, frame), ...) -> one level per frame: linear between keyframes, held before the
    first and after the last."""
    last_frame = keyframes[-1][1]
    if last_frame >= num_frames:
        raise InvalidInputError(
            f"the intensity schedule has a keyframe at frame {last_frame}, beyond the video's last frame "
            f"({num_frames - 1}): ask for more frames or move the keyframe"
        )
    levels = np.interp(np.arange(num_frames), [f for _, f in keyframes], [float(level) for level, _ in keyframes])
    return tuple(float(level) for level in levels)


def intensity_from_text(text: str, num_frames: int, levels: int = LEVELS) -> int | tuple[float, ...]:
    """The intensity as the CLI and the nodes take it, a level (``"5"``) or keyframes (``"2:0,8:31"``),
    -> one level, or one per frame."""
    if ":" in text:
        return schedule_levels(parse_intensity_schedule(text, levels), num_frames)
    try:
        level = float(text)
    except ValueError:
        raise InvalidInputError(
            f"intensity must be a level from 1 to {levels} or a schedule of LEVEL:FRAME keyframes such as 2:0,8:31; "
            f"got {text!r}"
        ) from None
    return validate_level(level, levels)


def check_frame_levels(intensity, num_frames: int, levels: int = LEVELS) -> int | tuple[float, ...]:
    """The motion asked of a render: one level for every frame (a whole number, ``validate_level``), or a
    sequence of one level per frame, each from 1 to `levels` (in-between values are allowed, as a
    schedule interpolates them)."""
    if isinstance(intensity, (str, bytes)) or not isinstance(intensity, (Sequence, np.ndarray, torch.Tensor)):
        return validate_level(intensity, levels)
    per_frame = [float(level) if isinstance(level, numbers.Real) and not isinstance(level, bool) else level
                 for level in (intensity.tolist() if hasattr(intensity, "tolist") else intensity)]
    if len(per_frame) != num_frames:
        raise InvalidInputError(
            f"intensity holds {len(per_frame)} levels but the video has {num_frames} frames: give one level per "
            f"frame, or one number for all"
        )
    for frame, level in enumerate(per_frame):
        if not isinstance(level, float) or not STILLEST_LEVEL <= level <= levels:
            raise InvalidInputError(
                f"intensity of frame {frame} must be a number from 1 (still) to {levels} (most motion); got {level!r}"
            )
    return tuple(per_frame)


def first_level(intensity: int | Sequence[float]) -> float:
    """The level of frame 0, the photo's own frame (what prior inversion runs at)."""
    return float(intensity) if isinstance(intensity, numbers.Real) else float(intensity[0])


def measure_intensity(frames, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> IntensityMeasurement:
    """Mean adjacent SSIM of a clip and the level it falls in."""
    mean_ssim = mean_adjacent_ssim(frames)
    return IntensityMeasurement(mean_ssim=mean_ssim, level=level_from_ssim(mean_ssim, thresholds))


def _as_tensor(data) -> torch.Tensor:
    tensor = data if isinstance(data, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(data))
    return tensor.cpu() if tensor.device.type == "mps" else tensor  # MPS has no float64


def _as_float64(data) -> torch.Tensor:
    return _as_tensor(data).to(torch.float64)


def _checked_frames(frames) -> torch.Tensor:
    """Frames as a uint8 or float tensor, refusing shapes and types that are not RGB frames; their values
    are checked a batch at a time (``_check_values``)."""
    tensor = _as_tensor(frames)
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise InvalidInputError(f"frames must be [F, H, W, 3] RGB; got shape {tuple(tensor.shape)}")
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise InvalidInputError(f"frames must be float in 0..1 or uint8; got {tensor.dtype}")
    return tensor


def _check_values(frames: torch.Tensor) -> None:
    if frames.dtype == torch.uint8 or not frames.numel():
        return
    if not (torch.isfinite(frames).all() and -1e-3 <= frames.min() and frames.max() <= 1 + 1e-3):
        raise InvalidInputError(
            "frames must hold values in 0..1 (ComfyUI IMAGE range); got NaN, infinity or values outside it"
        )
