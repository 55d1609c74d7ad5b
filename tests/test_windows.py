"""Context windows: where they lie, how their predictions blend, and the settings they refuse."""

from dataclasses import replace

import pytest
import torch
from livephoto_core.testing.tiny import SD_SCHEDULER, TINY_UNET, randomize_, tiny_model

from livephoto_core.errors import InvalidInputError
from livephoto_core.modules.unet import FRAME_EMBEDDING_CHANNEL, conditioning_channels, frame_embedding
from livephoto_core.render import PhotoConditioning, SamplingRequest, Schedule, generate_latents
from livephoto_core.sampling import build_conditioning, guided_prediction, windowed_prediction
from livephoto_core.windows import ContextWindows, blend_weights, context_windows, ordered_halving

D = TINY_UNET["cross_attention_dim"]


def static_standard_reference(num_frames: int, length: int, overlap: int) -> list[list[int]]:
    """AnimateDiff-Evolved's static standard windows, as its context.py builds them: every
    `length - overlap` frames, the window that would run past the end moved back to end on it."""
    windows = []
    for start in range(0, num_frames, length - overlap):
        if start + length >= num_frames:
            windows.append(list(range(num_frames - length, num_frames)))
            break
        windows.append(list(range(start, start + length)))
    return windows


def looped_uniform_reference(num_frames: int, length: int, overlap: int) -> list[list[int]]:
    """AnimateDiff-Evolved's closed-loop uniform windows at step 0 (stride 1): every `length - overlap`
    frames up to the last, each wrapping over the end."""
    return [[e % num_frames for e in range(j, j + length)] for j in range(0, num_frames, length - overlap)]


@pytest.mark.parametrize("num_frames, length, overlap", [(32, 8, 4), (30, 8, 4), (17, 8, 2), (40, 16, 4), (9, 8, 7)])
def test_static_windows_are_animatediff_evolveds(num_frames, length, overlap):
    windows = ContextWindows(length, overlap)
    for step in range(3):  # the same at every step
        assert windows.windows(num_frames, step) == static_standard_reference(num_frames, length, overlap)
    looped = replace(windows, loop=True)
    assert looped.windows(num_frames, 0) == looped_uniform_reference(num_frames, length, overlap)


def test_uniform_windows_shift_each_step_and_cover_every_frame():
    windows = ContextWindows(8, 4, "uniform")
    assert [ordered_halving(step) for step in range(5)] == [0, 0.5, 0.25, 0.75, 0.125]
    starts = [[w[0] for w in windows.windows(32, step)] for step in range(4)]
    assert starts == [[0, 4, 8, 12, 16, 20, 24], [0, 2, 6, 10, 14, 18, 22, 24], [0, 1, 5, 9, 13, 17, 21, 24],
                      [0, 3, 7, 11, 15, 19, 23, 24]]
    for loop in (False, True):
        for step in range(8):
            frames = replace(windows, loop=loop).windows(29, step)
            assert all(len(w) == 8 for w in frames) and set().union(*frames) == set(range(29))


def test_a_loop_has_a_window_where_the_last_frame_is_followed_by_the_first():
    for schedule in ("static", "uniform"):
        for step in range(4):
            frames = ContextWindows(8, 4, schedule, loop=True).windows(20, step)
            assert any((19, 0) in zip(w, w[1:]) for w in frames)
    assert not any((19, 0) in zip(w, w[1:]) for w in ContextWindows(8, 4).windows(20, 0))


def test_a_video_within_one_window_is_one_window():
    windows = ContextWindows(8, 4)
    assert windows.is_single(8) and windows.windows(5, 0) == [list(range(5))]
    assert not replace(windows, loop=True).is_single(9)


def test_frame_positions_are_the_one_window_embedding_held_at_1_beyond_it():
    windows = ContextWindows(8, 4)
    torch.testing.assert_close(windows.frame_positions(5), frame_embedding(5))
    positions = windows.frame_positions(20)
    torch.testing.assert_close(positions[:8], frame_embedding(8))
    assert positions[8:].eq(1).all()
    wrapped = windows.window_embedding([12, 13, 14, 15, 0, 1, 2, 3], 16)
    assert wrapped.tolist() == [1, 1, 1, 1] + frame_embedding(8)[:4].tolist()
    assert replace(windows, frame_embedding="window").window_embedding([4, 5, 6, 7, 8, 9, 10, 11], 16).tolist() == \
        frame_embedding(8).tolist()
    assert replace(windows, frame_embedding="video").window_embedding([15], 16).tolist() == [1.0]


def test_blend_weights_are_a_pyramid():
    assert blend_weights(8).tolist() == [1, 2, 3, 4, 4, 3, 2, 1]
    assert blend_weights(5).tolist() == [1, 2, 3, 2, 1]


class FrameLocal(torch.nn.Module):
    """A stand-in denoiser whose prediction for a frame depends on that frame's inputs only (not on
    the frame embedding), so windows of any shape must give what one call on all frames gives."""

    def __init__(self):
        super().__init__()
        self.windows_seen = []

    def forward(self, latents, timestep, context, channels, content_scale, content_kv):
        self.windows_seen.append(channels[0, :, FRAME_EMBEDDING_CHANNEL, 0, 0].tolist())
        levels = channels[:, :, -1:]
        return torch.sin(latents) * levels + context.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)


@pytest.mark.parametrize("loop, schedule", [(False, "static"), (True, "static"), (False, "uniform"), (True, "uniform")])
def test_blended_windows_of_a_frame_local_denoiser_equal_one_call(loop, schedule):
    generator = torch.Generator().manual_seed(0)
    num_frames = 21
    latents = torch.randn(1, num_frames, 4, 3, 3, generator=generator)
    levels = torch.linspace(2, 9, num_frames).view(1, -1)
    channels = conditioning_channels(torch.randn(1, 4, 3, 3, generator=generator), num_frames, levels)
    cond = build_conditioning(torch.randn(1, 5, 8, generator=generator), torch.zeros(1, 5, 8),
                              torch.randn(1, 2, 8, generator=generator), channels)
    unet, windows = FrameLocal(), ContextWindows(8, 3, schedule, loop)
    whole = guided_prediction(unet, latents, torch.tensor(500), cond, 7.5)
    for step in range(3):
        unet.windows_seen.clear()
        frames = windows.windows(num_frames, step)
        blended = windowed_prediction(unet, latents, torch.tensor(500), cond, 7.5, windows, frames)
        torch.testing.assert_close(blended, whole, rtol=1e-6, atol=1e-6)
        # Each window's UNet call saw that window's own frame embedding.
        assert unet.windows_seen == [windows.window_embedding(w, num_frames).tolist() for w in frames]


@pytest.fixture(scope="module")
def model():
    model = tiny_model()
    randomize_(model.unet.motion_unet.conv_in, 1)
    return model


def request(model, num_frames: int, windows: ContextWindows | None, intensity=6) -> SamplingRequest:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        content = model.encode_content(torch.rand(1, 3, 64, 64, generator=generator))
    photo = PhotoConditioning(torch.randn(1, 4, 8, 8, generator=generator), content, intensity)
    schedule = Schedule("ddim", 2, SD_SCHEDULER, "epsilon")
    return SamplingRequest(photo=photo, text=torch.randn(1, 77, D, generator=generator), uncond_text=None,
                           schedule=schedule, num_frames=num_frames, guidance_scale=1.0, seed=3, windows=windows)


def test_a_video_within_one_window_samples_as_it_did_before_windows(model):
    with torch.no_grad():
        plain = generate_latents(model, request(model, 6, None))
        windowed = generate_latents(model, request(model, 6, ContextWindows(8, 4)))
    torch.testing.assert_close(windowed, plain, rtol=0, atol=0)


def test_a_long_video_calls_the_unet_once_per_window_and_step(model):
    calls = []
    hook = model.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            latents = generate_latents(model, request(model, 20, ContextWindows(8, 4, loop=True)))
    finally:
        hook.remove()
    assert latents.shape == (1, 20, 4, 8, 8) and torch.isfinite(latents).all()
    assert calls == [8] * 5 * 2  # 5 closed windows, 2 steps


def test_a_per_frame_intensity_reaches_the_intensity_map(model):
    levels = tuple(float(level) for level in torch.linspace(2, 9, 20).tolist())
    seen = []
    hook = model.unet.register_forward_hook(lambda module, args, out: seen.append(args[3][0, :, -1, 0, 0].tolist()))
    try:
        with torch.no_grad():
            generate_latents(model, request(model, 20, ContextWindows(8, 4), intensity=levels))
    finally:
        hook.remove()
    windows = ContextWindows(8, 4).windows(20, 0)
    assert seen[: len(windows)] == [pytest.approx([levels[f] for f in w]) for w in windows]


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(length=17), "window length must be from 2 to 16 frames (the longest clip this model's motion modules"),
        (dict(length=8, overlap=8), "window overlap must be from 0 to 7 frames (less than the window length, 8); got 8"),
        (dict(length=8, overlap=-1), "window overlap must be from 0 to 7"),
        (dict(loop=True), "a loop needs at least two windows"),
        (dict(schedule="zigzag"), "unknown window schedule 'zigzag'; choose one of: static, uniform"),
        (dict(loop=1), "loop must be True or False"),
    ],
)
def test_window_settings_that_cannot_work_are_refused(settings, message):
    with pytest.raises(InvalidInputError) as caught:
        context_windows(8, 16, 8, **settings)
    assert message in str(caught.value)


def test_the_defaults_are_the_trained_clip_and_half_of_it_overlapping():
    assert context_windows(40, 32, 16) == ContextWindows(16, 8, "static", False)
    assert context_windows(40, 16, 24) == ContextWindows(16, 8)  # never longer than the motion modules handle


def test_a_hand_made_request_longer_than_the_motion_modules_is_refused_before_sampling(model):
    with pytest.raises(InvalidInputError, match="window length must be from 2 to 16"):
        generate_latents(model, request(model, 20, None))
