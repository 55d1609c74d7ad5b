"""Pusa sampling as LivePhoto-Wan2.1 runs it: small pure functions and the loop that uses them.

From the authors' ``PusaMultiFramesPipeline.__call__`` and ``FlowMatchSchedulerPusaV2V`` (shift 5, sigma_min 0,
extra_one_step) with the photo at latent frame 0 and noise multiplier 0, as their sample.sh runs it:

- sigmas: linspace(1, 0, steps + 1) without its last value, shifted to s * x / (1 + (s - 1) * x);
- each latent frame has its own timestep, 1000 * sigma, and frame 0 (the photo) has 0 and never moves;
- three passes a step, v = N + s (P - N) + s (P - E): P = (prompt, level k), N = (negative, level 0),
  E = (prompt, level 0); at scale 1 only P runs, as in their code;
- Euler: x += v * (sigma_next - sigma), sigma_next = 0 after the last step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .defaults import WAN_DEFAULT_GUIDANCE as DEFAULT_GUIDANCE
from .defaults import WAN_DEFAULT_STEPS as DEFAULT_STEPS

NUM_TRAIN_TIMESTEPS = 1000
SHIFT = 5.0
NULL_INTENSITY = 0
CONDITION_FRAME = 0  # the photo's latent frame


def pusa_sigmas(steps: int, shift: float = SHIFT) -> torch.Tensor:
    """The ``steps`` noise levels, from 1 down (float32, as the authors' scheduler computes them)."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def frame_timesteps(sigma: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(1, F) timesteps for one step: 1000 * sigma (in float32, as theirs) for every latent frame but the clean
    photo frame, which has 0. Truncated to whole numbers, as the authors' pipeline does before the model sees
    them (``.to(torch.long)``); a bf16 model then rounds them further, as theirs does."""
    timesteps = (sigma.float() * NUM_TRAIN_TIMESTEPS).expand(1, num_frames).clone()
    timesteps[:, CONDITION_FRAME] = 0
    return timesteps.to(torch.long).float()


def guided_velocity(
    positive: torch.Tensor, negative: torch.Tensor, empty: torch.Tensor, scale: float
) -> torch.Tensor:
    """v = N + s (P - N) + s (P - E): text guidance plus intensity guidance at the same scale."""
    return negative + scale * (positive - negative) + scale * (positive - empty)


def euler_step(latents: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
               ) -> torch.Tensor:
    """One flow-matching Euler step of every latent frame but the photo frame, which keeps sigma 0 and stays as it is.
    The step size is a float32 difference, as in the authors' scheduler."""
    delta = (sigma_next.float() - sigma.float()).expand(latents.shape[2]).clone().to(latents.device)
    delta[CONDITION_FRAME] = 0
    return latents + velocity * delta.view(1, 1, -1, 1, 1)


def initial_latents(photo_latent: torch.Tensor, shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Seeded noise of ``shape`` with the photo's latent as frame 0, in float32.

    The noise is drawn in float32 on the CPU from ``seed`` (so a seed gives the same video on any device, and the
    authors' seeds theirs) and rounded through the model's dtype as their pipeline stores it.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype).float()
    noise[:, :, CONDITION_FRAME:CONDITION_FRAME + 1] = photo_latent.to(dtype).float().cpu()
    return noise


@torch.no_grad()  # the DiT's weights require grad: with autograd on, each pass kept its activations (22 GB at 5 frames)
def sample(
    model: Callable[..., torch.Tensor],
    latents: torch.Tensor,
    prompt: torch.Tensor,
    negative: torch.Tensor,
    intensity: int,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    shift: float = SHIFT,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Denoise ``latents`` (B, C, F, H, W; frame 0 the clean photo). ``model(latents, frame_timesteps, text,
    intensity)`` returns a velocity; ``callback(step, steps)`` runs after each step. Latents stay float32 between
    steps (the authors' update promotes them to float32 too); the three velocities are combined in float32, where
    a bf16 run of theirs rounds after each operation."""
    sigmas = pusa_sigmas(steps, shift)
    batch = latents.shape[0]
    level = torch.full((batch,), intensity, dtype=torch.long)
    null = torch.full((batch,), NULL_INTENSITY, dtype=torch.long)
    latents = latents.float()
    for index in range(steps):
        sigma = sigmas[index]
        sigma_next = sigmas[index + 1] if index + 1 < steps else torch.zeros(())
        timesteps = frame_timesteps(sigma, latents.shape[2]).expand(batch, -1).to(latents.device)
        positive = model(latents, timesteps, prompt, level).float()
        if guidance != 1.0:
            velocity = guided_velocity(
                positive, model(latents, timesteps, negative, null).float(),
                model(latents, timesteps, prompt, null).float(), guidance,
            )
        else:
            velocity = positive
        latents = euler_step(latents, velocity, sigma, sigma_next)
        if callback is not None:
            callback(index + 1, steps)
    return latents
