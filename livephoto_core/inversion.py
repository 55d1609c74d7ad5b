"""Prior inversion (paper §3.3, eq. 3): start sampling from noise that already knows the photo.

The reference latent r0 is DDIM-inverted, deterministically, through the same conditioned UNet
(empty prompt, no guidance) up to the first sampling timestep; frame n then starts from
a_n * Inv(r0) + (1 - a_n) * noise_n, with a_n falling linearly from 0.033 to 0.016.
"""

from __future__ import annotations

import torch

from .defaults import DEFAULT_INVERSION_END, DEFAULT_INVERSION_START
from .modules.unet import LivePhotoUNet
from .sampling import ProgressCallback, ProgressEvent, VideoConditioning, check_finite


def inversion_timesteps(target_timestep: int, steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """`steps` ascending timesteps ending exactly at the first sampling timestep.

    Spaced like DDIM's "leading" grid, so that with DDIM and as many inversion as sampling steps
    the inversion retraces the sampler's own timesteps; where that grid would go below 0 (more
    inversion than sampling steps), evenly spaced from 0 instead.
    """
    ratio = num_train_timesteps // steps
    if target_timestep - ratio * (steps - 1) >= 0:
        return [target_timestep - ratio * (steps - 1 - i) for i in range(steps)]
    return [round(target_timestep * (i + 1) / steps) for i in range(steps)]


def to_epsilon(prediction: torch.Tensor, sample: torch.Tensor, alpha_prod: torch.Tensor, prediction_type: str):
    if prediction_type == "epsilon":
        return prediction
    if prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x0  =>  eps = sqrt(a) v + sqrt(1 - a) x
        return alpha_prod.sqrt() * prediction + (1 - alpha_prod).sqrt() * sample
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def ddim_invert(
    unet: LivePhotoUNet,
    reference_latent: torch.Tensor,
    cond: VideoConditioning,
    alphas_cumprod: torch.Tensor,
    timesteps: list[int],
    prediction_type: str,
    callback: ProgressCallback | None = None,
) -> torch.Tensor:
    """DDIM inversion x0 -> x_T along ascending `timesteps`.

    reference_latent [B, 1, 4, h, w] (scaled); `cond` is unguided, for the same one frame.
    Each step takes the noise predicted at the current point and moves to the next, noisier,
    timestep on the deterministic DDIM path (eta = 0).
    """
    alphas = alphas_cumprod.to(device=reference_latent.device, dtype=torch.float32)
    latent = reference_latent.float()
    alpha_prev = alphas[0]  # the clean end of the schedule, as DDIM sampling (set_alpha_to_one=False) ends
    unet_timesteps = torch.tensor(timesteps, device=latent.device)  # moved once, not once per step
    for step, (timestep, unet_timestep) in enumerate(zip(timesteps, unet_timesteps), start=1):
        alpha = alphas[timestep]
        prediction = unet(
            latent.to(unet.dtype), unet_timestep, cond.video_context, cond.channels, cond.content_scale, cond.content_kv
        ).float()
        epsilon = to_epsilon(prediction, latent, alpha, prediction_type)
        original = (latent - (1 - alpha_prev).sqrt() * epsilon) / alpha_prev.sqrt()
        latent = alpha.sqrt() * original + (1 - alpha).sqrt() * epsilon
        alpha_prev = alpha
        event = ProgressEvent("inversion", step, len(timesteps))
        check_finite(latent, event)
        if callback is not None:
            callback(event)
    return latent.to(reference_latent.dtype)


def prior_weights(
    positions: torch.Tensor, start: float = DEFAULT_INVERSION_START, end: float = DEFAULT_INVERSION_END
) -> torch.Tensor:
    """a_n for frames at `positions` [F] (their frame embedding, 0 at the photo .. 1): linear from
    `start` at 0 to `end` at 1, so a long video's first window starts as a one-window video does."""
    return start + (end - start) * positions


def mix_prior(inverted: torch.Tensor, noise: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """inverted [B, 1, 4, h, w], noise [B, F, 4, h, w], weights [F] -> a_n Inv(r0) + (1 - a_n) z_n."""
    a = weights.to(noise).view(1, -1, 1, 1, 1)
    return a * inverted + (1 - a) * noise
