"""Motion intensity: SSIM against skimage, levels, thresholds, refusals."""

import math
import re

import numpy as np
import pytest
import torch
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from livephoto_core import intensity
from livephoto_core.errors import InvalidInputError
from livephoto_core.intensity import (
    DEFAULT_THRESHOLDS,
    AdjacentSSIM,
    IntensityMeasurement,
    check_frame_levels,
    first_level,
    fit_thresholds,
    intensity_from_text,
    level_from_ssim,
    mean_adjacent_ssim,
    measure_intensity,
    parse_intensity_schedule,
    schedule_levels,
    ssim,
    to_grayscale,
    validate_level,
    validate_thresholds,
)
from livephoto_core.testing.memory import peak_rss_mib

SIZES = [(7, 7), (8, 13), (31, 64), (64, 31), (101, 77), (128, 128)]


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64), data_range=1.0)


def structured_pair(shape, rng):
    """A smooth gradient with a checkerboard patch, and the same shifted and brightened."""
    height, width = shape
    y, x = np.mgrid[0:height, 0:width]
    image = 0.5 + 0.4 * np.sin(x / 5.0) * np.cos(y / 7.0)
    image[(x // 4 + y // 4) % 2 == 0] *= 0.7
    other = np.clip(np.roll(image, (1, 2), axis=(0, 1)) * 1.1 + 0.02 * rng.standard_normal(shape), 0, 1)
    return image, other


def moving_square_clip(speed: int, frames: int = 8, size: int = 128, side: int = 16) -> np.ndarray:
    clip = np.full((frames, size, size, 3), 0.25)
    for t in range(frames):
        left = 4 + t * speed
        clip[t, 40 : 40 + side, left : left + side] = 0.9
    return clip


@pytest.mark.parametrize("shape", SIZES)
def test_ssim_matches_skimage_on_random_images(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.random(shape)
    b = np.clip(a + 0.15 * rng.standard_normal(shape), 0, 1)
    assert ssim(a, b).item() == pytest.approx(skimage_ssim(a, b), abs=1e-6)


@pytest.mark.parametrize("shape", SIZES)
def test_ssim_matches_skimage_on_structured_images(shape):
    a, b = structured_pair(shape, np.random.default_rng(0))
    assert ssim(torch.from_numpy(a), torch.from_numpy(b)).item() == pytest.approx(skimage_ssim(a, b), abs=1e-6)


def test_ssim_of_identical_and_constant_images_matches_skimage():
    rng = np.random.default_rng(1)
    image = rng.random((20, 30))
    constant_a, constant_b = np.full((20, 30), 0.2), np.full((20, 30), 0.7)
    assert ssim(image, image).item() == pytest.approx(skimage_ssim(image, image), abs=1e-6)
    assert ssim(constant_a, constant_b).item() == pytest.approx(skimage_ssim(constant_a, constant_b), abs=1e-6)


def test_ssim_of_float32_inputs_matches_skimage_on_the_same_values():
    rng = np.random.default_rng(2)
    a = rng.random((40, 50)).astype(np.float32)
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    result = ssim(torch.from_numpy(a), torch.from_numpy(b))
    assert result.dtype == torch.float64
    assert result.item() == pytest.approx(skimage_ssim(a, b), abs=1e-6)


def test_batched_ssim_equals_one_skimage_call_per_pair():
    rng = np.random.default_rng(3)
    a = rng.random((5, 24, 40))
    b = np.clip(a + rng.uniform(0.0, 0.3, (5, 1, 1)) * rng.standard_normal(a.shape), 0, 1)
    result = ssim(a, b)
    assert result.shape == (5,)
    np.testing.assert_allclose(result.numpy(), [skimage_ssim(x, y) for x, y in zip(a, b)], atol=1e-6, rtol=0)


def test_to_grayscale_matches_rgb2gray_for_float_and_uint8_frames():
    rng = np.random.default_rng(4)
    frames = rng.random((3, 10, 12, 3))
    np.testing.assert_allclose(to_grayscale(frames).numpy(), rgb2gray(frames), atol=1e-12, rtol=0)
    frames_uint8 = rng.integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    np.testing.assert_allclose(to_grayscale(frames_uint8).numpy(), rgb2gray(frames_uint8), atol=1e-12, rtol=0)


def skimage_mean_adjacent_ssim(frames: np.ndarray) -> float:
    gray = rgb2gray(np.asarray(frames, np.float64))
    return float(np.mean([skimage_ssim(gray[i], gray[i + 1]) for i in range(len(gray) - 1)]))


def test_mean_adjacent_ssim_equals_a_loop_over_skimage():
    rng = np.random.default_rng(5)
    base = rng.random((48, 56, 3))
    frames = np.stack(
        [np.clip(np.roll(base, t, axis=1) + 0.05 * rng.standard_normal(base.shape), 0, 1) for t in range(9)]
    )
    assert mean_adjacent_ssim(torch.from_numpy(frames)) == pytest.approx(skimage_mean_adjacent_ssim(frames), abs=1e-6)


def test_mean_adjacent_ssim_is_the_same_when_pairs_are_split_into_chunks(monkeypatch):
    rng = np.random.default_rng(6)
    frames = rng.random((7, 16, 16, 3))
    whole = mean_adjacent_ssim(frames)
    monkeypatch.setattr(intensity, "_PIXELS_PER_CHUNK", 2 * 16 * 16)  # 2 pairs per chunk, last one short
    assert mean_adjacent_ssim(frames) == pytest.approx(whole, abs=1e-12)
    assert whole == pytest.approx(skimage_mean_adjacent_ssim(frames), abs=1e-6)


def test_level_rises_with_motion():
    spread = [mean_adjacent_ssim(moving_square_clip(speed)) for speed in range(16)]
    thresholds = fit_thresholds(spread)
    speeds = [0, 1, 2, 4, 8]
    ssims = [mean_adjacent_ssim(moving_square_clip(speed)) for speed in speeds]
    levels = [level_from_ssim(s, thresholds) for s in ssims]
    assert ssims == sorted(ssims, reverse=True)
    assert levels == sorted(levels)
    assert levels[0] == 1  # a still clip has SSIM 1, above every threshold
    assert levels[-1] >= levels[0] + 5


def test_fit_thresholds_are_the_deciles():
    values = np.random.default_rng(7).uniform(0.4, 1.0, 500)
    thresholds = fit_thresholds(values.tolist())
    expected = np.quantile(values, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    np.testing.assert_allclose(thresholds, expected, atol=1e-12, rtol=0)
    assert all(b > a for a, b in zip(thresholds, thresholds[1:]))
    assert isinstance(thresholds, tuple) and all(type(t) is float for t in thresholds)


def test_fit_thresholds_splits_ties_deterministically():
    values = [1.0] * 60 + list(np.linspace(0.5, 0.9, 40))  # most clips perfectly still
    thresholds = fit_thresholds(values)
    assert all(b > a for a, b in zip(thresholds, thresholds[1:]))
    assert thresholds == fit_thresholds(list(reversed(values)))
    expected = np.quantile(values, np.arange(1, 10) / 10)
    untied = expected < 1.0
    np.testing.assert_allclose(np.array(thresholds)[untied], expected[untied], atol=1e-12, rtol=0)
    tied = np.array(thresholds)[~untied]
    assert tied[0] == 1.0 and np.all(tied - 1.0 < 1e-14)  # nudged by single float steps
    assert validate_thresholds(thresholds) == thresholds


def test_fit_thresholds_refuses_too_few_or_non_finite_values():
    with pytest.raises(InvalidInputError, match="at least 10 SSIM values; got 9"):
        fit_thresholds([0.5] * 9)
    with pytest.raises(InvalidInputError, match="NaN"):
        fit_thresholds([0.5] * 10 + [math.nan])


def test_level_edges():
    thresholds = DEFAULT_THRESHOLDS
    assert level_from_ssim(1.0, thresholds) == 1
    assert level_from_ssim(thresholds[-1], thresholds) == 1
    assert level_from_ssim(math.nextafter(thresholds[-1], 0), thresholds) == 2
    assert level_from_ssim(thresholds[0], thresholds) == 9
    assert level_from_ssim(math.nextafter(thresholds[0], 0), thresholds) == 10
    assert level_from_ssim(-1.0, thresholds) == 10
    for s in np.random.default_rng(8).uniform(0.4, 1.0, 200):
        assert level_from_ssim(float(s), thresholds) == 10 - sum(t <= s for t in thresholds)


def test_default_thresholds_are_valid_and_spread_over_natural_ssims():
    assert validate_thresholds(DEFAULT_THRESHOLDS) == DEFAULT_THRESHOLDS
    assert 0.5 <= DEFAULT_THRESHOLDS[0] < 0.6 and 0.95 <= DEFAULT_THRESHOLDS[-1] < 0.98


@pytest.mark.parametrize(
    "thresholds",
    [DEFAULT_THRESHOLDS[:8], (0.5,) * 9, DEFAULT_THRESHOLDS[::-1], (*DEFAULT_THRESHOLDS[:8], math.nan), "abcdefghi"],
)
def test_bad_thresholds_are_refused(thresholds):
    with pytest.raises(InvalidInputError, match="intensity thresholds"):
        level_from_ssim(0.8, thresholds)


def test_level_from_nan_ssim_is_refused():
    with pytest.raises(InvalidInputError, match="finite"):
        level_from_ssim(math.nan)


@pytest.mark.parametrize("level", [1, 5, 10, 3.0, np.int64(7), np.float32(2.0)])
def test_validate_level_accepts_whole_numbers_1_to_10(level):
    assert validate_level(level) == int(level) and type(validate_level(level)) is int


@pytest.mark.parametrize("level", [0, 11, -3, 2.5, math.nan, math.inf, True, "5", None])
def test_validate_level_refuses_everything_else(level):
    with pytest.raises(InvalidInputError, match=r"whole number from 1 \(still\) to 10 \(most motion\); got"):
        validate_level(level)


def test_validate_level_takes_the_models_number_of_levels():
    assert validate_level(5, levels=5) == 5
    with pytest.raises(InvalidInputError, match=r"from 1 \(still\) to 5 \(most motion\); got 6"):
        validate_level(6, levels=5)


def test_validate_level_message():
    with pytest.raises(InvalidInputError) as caught:
        validate_level(11)
    assert str(caught.value) == "intensity must be a whole number from 1 (still) to 10 (most motion); got 11"
    for typed in ("11", "2.5"):  # the CLI's and the nodes' text, read as a float: shown as typed
        with pytest.raises(InvalidInputError, match=f"got {typed}$"):
            intensity_from_text(typed, 8)


def test_measure_intensity():
    clip = moving_square_clip(4)
    measurement = measure_intensity(torch.from_numpy(clip).float())
    assert isinstance(measurement, IntensityMeasurement)
    assert measurement.mean_ssim == pytest.approx(skimage_mean_adjacent_ssim(clip), abs=1e-6)
    assert measurement.level == level_from_ssim(measurement.mean_ssim, DEFAULT_THRESHOLDS)
    with pytest.raises(AttributeError):
        measurement.level = 3  # frozen
    assert measure_intensity(moving_square_clip(0), thresholds=fit_thresholds(np.linspace(0.5, 0.99, 10))).level == 1


def test_one_frame_is_refused_with_its_count():
    with pytest.raises(InvalidInputError, match="at least 2 frames; got 1"):
        mean_adjacent_ssim(np.zeros((1, 16, 16, 3)))


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((4, 16, 16)), r"\[F, H, W, 3\]"),
        (np.zeros((4, 16, 16, 4)), r"\[F, H, W, 3\]"),
        (np.full((4, 16, 16, 3), 2.0), "0..1"),
        (np.full((4, 16, 16, 3), np.nan), "0..1"),
        (np.zeros((4, 16, 16, 3), dtype=np.int32), "float in 0..1 or uint8"),
        (np.zeros((4, 6, 16, 3)), "at least 7x7"),
    ],
)
def test_bad_frames_are_refused(frames, message):
    with pytest.raises(InvalidInputError, match=message):
        mean_adjacent_ssim(frames)


def test_ssim_refuses_small_or_mismatched_images():
    with pytest.raises(InvalidInputError, match="at least 7x7 pixels; got 6x7"):
        ssim(np.zeros((7, 6)), np.zeros((7, 6)))
    with pytest.raises(InvalidInputError, match="same shape"):
        ssim(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(InvalidInputError, match=r"\[H, W\] or \[N, H, W\]"):
        ssim(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 8)))


def test_half_precision_frames_are_measured_in_float32():
    frames = torch.from_numpy(np.random.default_rng(9).random((4, 32, 40, 3))).to(torch.bfloat16)
    reference = skimage_mean_adjacent_ssim(frames.double().numpy())
    assert mean_adjacent_ssim(frames) == pytest.approx(reference, abs=1e-5)
    assert to_grayscale(frames).dtype == torch.float32


# --- intensity schedules ---------------------------------------------------------------------------------


def test_a_schedule_is_linear_between_keyframes_and_held_outside_them():
    keyframes = parse_intensity_schedule(" 2:0, 8:6 ,5:9")
    assert keyframes == ((2, 0), (8, 6), (5, 9))
    assert schedule_levels(keyframes, 12) == (2, 3, 4, 5, 6, 7, 8, 7, 6, 5, 5, 5)
    assert schedule_levels(parse_intensity_schedule("4:2,6:3"), 5) == (4, 4, 4, 6, 6)
    assert intensity_from_text("7", 5) == 7 and intensity_from_text("7.0", 5) == 7
    assert intensity_from_text("2:0,9:7", 8) == tuple(float(level) for level in range(2, 10))
    assert parse_intensity_schedule("5") == ((5, 0),)  # a plain level: one keyframe


@pytest.mark.parametrize(
    "text, message",
    [
        ("0:0,5:3", "level 0 is outside 1 (still) to 10"),
        ("2:0,11:3", "level 11 is outside 1 (still) to 10"),
        ("2:5,8:3", "keyframes must be in order of frame, each after the last; got frames 5, 3"),
        ("2:3,8:3", "keyframes must be in order of frame"),
        ("2:0,8:31", "keyframe at frame 31, beyond the video's last frame (15)"),
        ("2:-1,8:3", "frame -1 is negative"),
        ("2:0;8:3", "'2:0;8:3' is not LEVEL:FRAME"),
        ("2:0,,8:3", "'' is not LEVEL:FRAME"),
        ("fast", "intensity must be a level from 1 to 10 or a schedule of LEVEL:FRAME keyframes"),
        ("11", "intensity must be a whole number from 1 (still) to 10"),
    ],
)
def test_schedules_that_cannot_work_are_one_clear_error(text, message):
    with pytest.raises(InvalidInputError) as caught:
        intensity_from_text(text, 16)
    assert message in str(caught.value)


def test_per_frame_levels_are_checked_frame_by_frame():
    assert check_frame_levels(5, 3) == 5
    assert check_frame_levels([2, 2.5, 3], 3) == (2.0, 2.5, 3.0)
    assert check_frame_levels(np.array([2, 3, 4]), 3) == (2.0, 3.0, 4.0)
    for levels, message in [([2, 3], "intensity holds 2 levels but the video has 3 frames"),
                            ([2, 3, 10.5], "intensity of frame 2 must be a number from 1 (still) to 10"),
                            ([2, float("nan"), 3], "intensity of frame 1"), ([2, "3", 4], "intensity of frame 1"),
                            ([2, True, 4], "intensity of frame 1"), ("5", "intensity must be a whole number")]:
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            check_frame_levels(levels, 3)
    assert first_level((3.0, 4.0)) == 3.0 and first_level(6) == 6.0


# --- memory that does not grow with the clip ---------------------------------------------------------------------


def test_a_clip_fed_in_pieces_of_any_length_gives_the_mean_of_the_whole_clip():
    frames = (np.random.default_rng(11).random((9, 20, 24, 3)) * 255).astype(np.uint8)
    whole = mean_adjacent_ssim(frames)
    assert whole == pytest.approx(skimage_mean_adjacent_ssim(frames / 255), abs=1e-6)
    for cuts in ([1] * 9, [2, 3, 4], [5, 1, 3], [9]):
        meter = AdjacentSSIM()
        start = 0
        for length in cuts:
            meter.add(frames[start : start + length])
            start += length
        assert meter.frames == 9 and meter.mean() == pytest.approx(whole, abs=1e-12)


def test_frames_too_large_for_one_batch_are_measured_in_bands_of_rows_with_the_same_result(monkeypatch):
    frames = np.random.default_rng(12).random((3, 37, 40, 3))
    whole = mean_adjacent_ssim(frames)
    for band_pixels in (7 * 40, 9 * 40, 20 * 40):  # one window row a band, a few, two bands
        monkeypatch.setattr(intensity, "_PIXELS_PER_CHUNK", band_pixels)
        assert mean_adjacent_ssim(frames) == pytest.approx(whole, abs=1e-12)
        gray = to_grayscale(frames)
        assert float(ssim(gray[0], gray[1])) == pytest.approx(skimage_ssim(rgb2gray(frames[0]), rgb2gray(frames[1])),
                                                              abs=1e-9)


def test_frames_of_another_size_in_the_same_clip_are_refused():
    meter = AdjacentSSIM()
    meter.add(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="frame 2 is 24x16 but the frames before it are 16x16"):
        meter.add(np.zeros((1, 16, 24, 3), np.uint8))


MEASURE_IN_MEMORY = """
import numpy as np
from livephoto_core.intensity import mean_adjacent_ssim
base = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
frames = np.empty(({count}, 240, 320, 3), np.uint8)  # filled in place: no temporary of the clip's size
for index, frame in enumerate(frames):
    frame[:] = np.roll(base, index, axis=1)
mean_adjacent_ssim(frames)
"""


def test_measuring_a_clip_in_memory_needs_the_same_memory_beyond_the_clip_for_4x_the_frames():
    # Before batches were converted one at a time, the whole clip became float64 (RGB and grayscale) at once.
    short, _ = peak_rss_mib(MEASURE_IN_MEMORY.format(count=30))
    long, _ = peak_rss_mib(MEASURE_IN_MEMORY.format(count=120))
    clip_growth = 90 * 240 * 320 * 3 / 2**20  # 21 MiB: the uint8 frames the caller holds
    assert long - short < clip_growth + 30, (short, long)


def test_the_intensity_command_streams_a_video_in_the_same_memory_for_4x_the_frames(tmp_path):
    from test_video import encoded_mp4

    peaks = {}
    for count in (30, 120):
        path = encoded_mp4(tmp_path / f"clip{count}.mp4", count, 240, 320)
        peaks[count], _ = peak_rss_mib(f"from livephoto_core.cli import main; main(['intensity', {str(path)!r}])")
    # Before the command streamed, every frame was decoded first and the clip converted to float64 whole.
    assert peaks[120] - peaks[30] < 30, peaks
