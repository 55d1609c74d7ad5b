"""The denoising loop, guidance, schedulers and prior inversion."""

from dataclasses import replace

import pytest
import torch
from livephoto_core.testing.tiny import SD_SCHEDULER, TINY_UNET, randomize_, tiny_model

from livephoto_core.errors import Cancelled, InvalidInputError
from livephoto_core.inversion import (
    ddim_invert,
    inversion_timesteps,
    mix_prior,
    prior_weights,
    to_epsilon,
)
from livephoto_core.modules.unet import conditioning_channels, frame_embedding
from livephoto_core.sampling import (
    SCHEDULERS,
    build_conditioning,
    guided_prediction,
    make_scheduler,
    sample_video,
)

F = 3
D = TINY_UNET["cross_attention_dim"]


@pytest.fixture(scope="module")
def model():
    model = tiny_model()
    randomize_(model.unet.motion_unet.conv_in, 1)
    for processor in model.unet.content_processors():
        randomize_(processor.to_out, 2)
    return model


@pytest.fixture(scope="module")
def inputs(model):
    torch.manual_seed(0)
    reference = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        content = model.encode_content(torch.rand(1, 3, 64, 64))
    return reference, torch.randn(1, 77, D), torch.randn(1, 77, D), content


def test_guidance_batches_uncond_and_cond_in_one_call(model, inputs):
    reference, text, uncond, content = inputs
    channels = conditioning_channels(reference, F, torch.tensor([5.0]))
    latents, t = torch.randn(1, F, 4, 8, 8), torch.tensor(500)
    calls = []
    hook = model.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            guided = guided_prediction(model.unet, latents, t, build_conditioning(text, uncond, content, channels), 7.5)
    finally:
        hook.remove()
    assert calls == [2]
    with torch.no_grad():
        e_text = model.unet(latents, t, *_unguided(text, content, channels))
        e_uncond = model.unet(latents, t, *_unguided(uncond, content, channels))
    # 7.5 times the difference of two batched forwards: float32 noise of a few 1e-6 grows to ~1e-5.
    torch.testing.assert_close(guided, e_uncond + 7.5 * (e_text - e_uncond), atol=1e-4, rtol=1e-4)


def test_split_guidance_makes_two_half_calls_with_the_same_result(model, inputs):
    reference, text, uncond, content = inputs
    channels = conditioning_channels(reference, F, torch.tensor([5.0]))
    latents, t = torch.randn(1, F, 4, 8, 8), torch.tensor(500)
    cond = build_conditioning(text, uncond, content, channels)
    calls = []
    hook = model.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            batched = guided_prediction(model.unet, latents, t, cond, 7.5)
            split = guided_prediction(model.unet, latents, t, replace(cond, split_guidance=True), 7.5)
    finally:
        hook.remove()
    assert calls == [2, 1, 1]
    torch.testing.assert_close(split, batched, atol=1e-4, rtol=1e-4)


def _unguided(text, content, channels):
    cond = build_conditioning(text, None, content, channels)
    return cond.context, cond.channels


def test_prompts_of_unequal_length_are_repeated_to_a_common_length(model, inputs):
    reference, text, uncond, content = inputs
    channels = conditioning_channels(reference, F, torch.tensor([5.0]))
    cond = build_conditioning(torch.cat([text, text], dim=1), uncond, content, channels)
    tokens = 154 + content.shape[1]
    assert cond.context.shape == (2 * F, tokens, D)
    torch.testing.assert_close(cond.context[0, :77], cond.context[0, 77:154])


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_samples_deterministically(model, inputs, name):
    reference, text, uncond, content = inputs
    cond = build_conditioning(text, uncond, content, conditioning_channels(reference, F, torch.tensor([5.0])))

    def run(seed):
        scheduler = make_scheduler(name, SD_SCHEDULER, "epsilon")
        generator = torch.Generator().manual_seed(seed)
        latents = torch.randn(1, F, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma
        with torch.no_grad():
            return sample_video(model.unet, latents, cond, scheduler, 3, 5.0, generator)

    first, again = run(0), run(0)
    assert torch.isfinite(first).all()
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, run(1))


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_step_reports_a_preview_of_the_video_and_the_last_is_the_result_s_own(model, inputs, name):
    reference, text, uncond, content = inputs
    cond = build_conditioning(text, uncond, content, conditioning_channels(reference, F, torch.tensor([5.0])))
    scheduler = make_scheduler(name, SD_SCHEDULER, "epsilon")
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, F, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma
    previews = []
    with torch.no_grad():
        result = sample_video(model.unet, latents, cond, scheduler, 3, 5.0, generator,
                              lambda event: previews.append(event.preview.clone()))
    assert len(previews) >= 3  # Heun and PNDM take more model steps than sampling steps
    assert all(p.shape == result.shape and torch.isfinite(p).all() for p in previews)
    # At the last step the scheduler's clean-latent prediction and its output agree up to its final noise.
    assert (previews[-1] - result).abs().mean() < 0.5 * result.abs().mean()


def test_unknown_scheduler_is_refused():
    with pytest.raises(InvalidInputError, match="ddim"):
        make_scheduler("k_lms_turbo", SD_SCHEDULER, "epsilon")


def test_callback_reports_each_step_and_cancel_stops_within_one_step(model, inputs):
    reference, text, uncond, content = inputs
    cond = build_conditioning(text, uncond, content, conditioning_channels(reference, F, torch.tensor([5.0])))
    events, unet_calls = [], []
    hook = model.unet.register_forward_hook(lambda *a: unet_calls.append(1))

    def cancel_after_two(event):
        events.append((event.phase, event.step, event.total))
        if event.step == 2:
            raise Cancelled("stopped")

    try:
        with torch.no_grad(), pytest.raises(Cancelled):
            sample_video(model.unet, torch.randn(1, F, 4, 8, 8), cond, make_scheduler("ddim", SD_SCHEDULER, "epsilon"),
                         10, 5.0, callback=cancel_after_two)
    finally:
        hook.remove()
    assert events == [("sampling", 1, 10), ("sampling", 2, 10)]
    assert len(unet_calls) == 2


def test_ddim_inversion_then_sampling_reconstructs_the_reference(model, inputs):
    """Deterministic DDIM there and back. The error of DDIM inversion is first order in the step size:
    on this random (rough) UNet the reconstruction is within 20% (relative L2) at 100 steps, and the
    error halves with twice the steps (measured: 26% at 50, 13% at 100, 6.5% at 200)."""
    reference, text, _, content = inputs
    cond = build_conditioning(text, None, content, conditioning_channels(reference, 1, torch.tensor([5.0])))
    errors = []
    for steps in (50, 100):
        scheduler = make_scheduler("ddim", SD_SCHEDULER, "epsilon")
        scheduler.set_timesteps(steps)
        target = int(scheduler.timesteps[0])
        with torch.no_grad():
            inverted = ddim_invert(model.unet, reference[:, None], cond, scheduler.alphas_cumprod,
                                   inversion_timesteps(target, steps), "epsilon")
            rebuilt = sample_video(model.unet, inverted, cond, scheduler, steps, 1.0)
        errors.append(((rebuilt[:, 0] - reference).norm() / reference.norm()).item())
    assert errors[1] < 0.20
    assert errors[1] < 0.6 * errors[0]


def test_inversion_retraces_the_ddim_grid():
    scheduler = make_scheduler("ddim", SD_SCHEDULER, "epsilon")
    scheduler.set_timesteps(25)
    assert inversion_timesteps(int(scheduler.timesteps[0]), 25) == scheduler.timesteps.flip(0).tolist()
    steps = inversion_timesteps(801, 50)  # more inversion steps than the grid allows: even spacing
    assert len(steps) == 50 and steps[-1] == 801 and steps == sorted(steps) and steps[0] > 0


def test_prior_mix_follows_equation_3():
    weights = prior_weights(frame_embedding(16))
    assert weights[0].item() == pytest.approx(0.033) and weights[-1].item() == pytest.approx(0.016)
    torch.testing.assert_close(weights[5], torch.tensor(0.033 - 0.017 * 5 / 15))
    inverted, noise = torch.randn(1, 1, 4, 2, 2), torch.randn(1, 16, 4, 2, 2)
    mixed = mix_prior(inverted, noise, weights)
    torch.testing.assert_close(mixed[0, 7], weights[7] * inverted[0, 0] + (1 - weights[7]) * noise[0, 7])


def test_v_prediction_converts_to_epsilon():
    x0, eps, alpha = torch.randn(5), torch.randn(5), torch.tensor(0.3)
    xt = alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps
    v = alpha.sqrt() * eps - (1 - alpha).sqrt() * x0
    torch.testing.assert_close(to_epsilon(v, xt, alpha, "v_prediction"), eps)


def overflowing_from_call(unet, first_bad: int):
    """A forward hook that makes the UNet's prediction infinite from its `first_bad`-th call on (1-based)."""
    calls = []

    def hook(module, args, output):
        calls.append(1)
        return torch.full_like(output, float("inf")) if len(calls) >= first_bad else output

    return unet.register_forward_hook(hook), calls


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_latents_that_stop_being_finite_stop_the_sampling_naming_the_settings(model, inputs, name):
    """Whatever the scheduler, the step whose latents hold NaN or inf is the last: one line names the settings
    that push a model there, and no later step (nor the callback of the bad one) runs."""
    reference, text, uncond, content = inputs
    cond = build_conditioning(text, uncond, content, conditioning_channels(reference, F, torch.tensor([5.0])))
    scheduler = make_scheduler(name, SD_SCHEDULER, "epsilon")
    hook, calls = overflowing_from_call(model.unet, 2)
    events = []
    try:
        with torch.no_grad(), pytest.raises(InvalidInputError) as caught:
            sample_video(model.unet, torch.randn(1, F, 4, 8, 8), cond, scheduler, 5, 7.5, callback=events.append)
    finally:
        hook.remove()
    message = str(caught.value)
    assert "latents became NaN or infinite at sampling step" in message
    assert all(words in message for words in ("guidance scale", "content scale", "prior weights"))
    bad_step = int(message.split("sampling step ")[1].split()[0])
    assert [event.step for event in events] == list(range(1, bad_step))  # the bad step reports no progress
    assert len(calls) <= 2 * bad_step  # Heun calls the UNet twice a step; nothing ran past the bad step


def test_an_inversion_that_stops_being_finite_stops_at_that_step(model, inputs):
    reference, text, _, content = inputs
    cond = build_conditioning(text, None, content, conditioning_channels(reference, 1, torch.tensor([5.0])))
    scheduler = make_scheduler("ddim", SD_SCHEDULER, "epsilon")
    hook, calls = overflowing_from_call(model.unet, 3)
    try:
        with torch.no_grad(), pytest.raises(InvalidInputError, match="NaN or infinite at inversion step 3 of 10"):
            ddim_invert(model.unet, reference[:, None], cond, scheduler.alphas_cumprod,
                        inversion_timesteps(900, 10), "epsilon")
    finally:
        hook.remove()
    assert len(calls) == 3
