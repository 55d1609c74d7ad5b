"""The denoising loop: small functions over tensors, read top to bottom.

Latents are [B, F, 4, h, w], already multiplied by the VAE scaling factor. Conditioning is built
once per video (``VideoConditioning``); each step runs the unconditional and conditional branches
in one batch.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from .defaults import DEFAULT_CONTENT_SCALE, DEFAULT_GUIDANCE_SCALE
from .errors import InvalidInputError
from .modules.content import ContentKeyValues
from .modules.unet import FRAME_EMBEDDING_CHANNEL, LivePhotoUNet
from .windows import ContextWindows, blend_weights

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {}),
}


@dataclass(frozen=True)
class ProgressEvent:
    phase: str  # "inversion" or "sampling"
    step: int  # steps done, 1..total
    total: int
    # Sampling only: the video so far as scaled latents [B, F, 4, h, w], for live previews: the
    # scheduler's prediction of the clean latents where it gives one (DDIM, Euler, LMS), else the
    # latents after this step. A view of the loop's tensors: copy it to keep it.
    preview: torch.Tensor | None = field(default=None, repr=False, compare=False)


# Called after every step. To cancel, raise (livephoto_core.Cancelled, or the front end's own
# interrupt exception): the loop stops before the next UNet call.
ProgressCallback = Callable[[ProgressEvent], None]


def supports_zero_terminal_snr(name: str) -> bool:
    """Whether the scheduler implements diffusers' rescale_betas_zero_snr; the others would silently sample
    on SD's schedule. Karras sigmas start from the huge sigma that zero SNR stands in for (4096) and spend
    their steps there."""
    cls, overrides = SCHEDULERS[name]
    return "rescale_betas_zero_snr" in inspect.signature(cls.__init__).parameters and "use_karras_sigmas" not in overrides


def check_scheduler_name(name) -> str:
    """A name in SCHEDULERS; the CLI checks it before loading, make_scheduler again for every caller."""
    if not isinstance(name, str) or name not in SCHEDULERS:
        raise InvalidInputError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    return name


def make_scheduler(name: str, base_config: dict, prediction_type: str):
    """A diffusers scheduler of the SD family, by name, on the base model's noise schedule."""
    cls, overrides = SCHEDULERS[check_scheduler_name(name)]
    if base_config.get("rescale_betas_zero_snr") and not supports_zero_terminal_snr(name):
        usable = ", ".join(n for n in SCHEDULERS if supports_zero_terminal_snr(n))
        raise InvalidInputError(
            f"scheduler {name!r} cannot sample this model's zero-terminal-SNR noise schedule; choose one of: {usable}"
        )
    config = {**base_config, **overrides, "prediction_type": prediction_type}
    if cls is DDIMScheduler:
        # DDIM as AnimateDiff samples it: no clipping of x0 (latents are not in [-1, 1]).
        config.setdefault("clip_sample", False)
    return cls.from_config(config)


@dataclass
class VideoConditioning:
    """Everything but the noisy latent that the UNet reads, built once per video.

    ``video_context`` and ``channels`` hold the batch that one UNet call sees: [uncond, cond] stacked
    on the batch axis when guidance is on, [cond] alone when it is off. The context has one row per
    video, which the UNet shares between that video's frames.
    """

    video_context: torch.Tensor  # [B, text + content tokens, D]
    channels: torch.Tensor  # [B, F, 6, h, w]
    guided: bool
    # Guidance as two UNet calls of half the batch: the same arithmetic with half the activations
    # (low-memory mode), at the cost of one more call per step.
    split_guidance: bool = False
    content_scale: float = DEFAULT_CONTENT_SCALE  # the weight of the photo's content tokens in every UNet call
    # The content tokens' keys and values in each layer, projected by the first UNet call of the loop and
    # reused by every later one: every row of the context carries the same photo. None: every call projects
    # them for each row.
    content_kv: ContentKeyValues | None = field(default_factory=ContentKeyValues)

    @property
    def num_frames(self) -> int:
        return self.channels.shape[1]

    @property
    def context(self) -> torch.Tensor:
        """The context repeated for every frame, [B*F, tokens, D] frame-major: diffusers' motion-UNet layout."""
        return self.video_context.repeat_interleave(self.num_frames, dim=0)


def build_conditioning(
    text: torch.Tensor,
    uncond_text: torch.Tensor | None,
    content: torch.Tensor,
    channels: torch.Tensor,
    content_scale: float = DEFAULT_CONTENT_SCALE,
    split_guidance: bool = False,
) -> VideoConditioning:
    """text/uncond_text [1, L, D] (reweighted), content [1, N, D], channels [1, F, 6, h, w]."""
    texts = [text] if uncond_text is None else [uncond_text, text]
    length = math.lcm(*(t.shape[1] for t in texts))
    context = torch.cat([torch.cat([pad_to_length(t, length), content.to(t)], dim=1) for t in texts])
    channels = channels.expand(len(texts), *channels.shape[1:])
    return VideoConditioning(context, channels, uncond_text is not None, split_guidance, content_scale)


def pad_to_length(text: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat a prompt's tokens up to `length` (a multiple), as ComfyUI batches prompts of unequal length."""
    return text.repeat(1, length // text.shape[1], 1)


def guided_prediction(
    unet: LivePhotoUNet,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    cond: VideoConditioning,
    guidance_scale: float,
) -> torch.Tensor:
    """Classifier-free guidance over [uncond, cond]: one UNet call on both, or one each when split."""
    scale = cond.content_scale
    if not cond.guided:
        return unet(latents, timestep, cond.video_context, cond.channels, scale, cond.content_kv)
    if cond.split_guidance:
        uncond, text = (
            unet(latents, timestep, cond.video_context[i : i + 1], cond.channels[i : i + 1], scale, cond.content_kv)
            for i in (0, 1)
        )
    else:
        prediction = unet(
            torch.cat([latents, latents]), timestep, cond.video_context, cond.channels, scale, cond.content_kv
        )
        uncond, text = prediction.chunk(2)
    return uncond + guidance_scale * (text - uncond)


def windowed_prediction(
    unet: LivePhotoUNet,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    cond: VideoConditioning,
    guidance_scale: float,
    windows: ContextWindows,
    window_frames: list[list[int]],
) -> torch.Tensor:
    """The guided prediction of a video longer than a window: each window's frames on their own (the
    photo, text and intensity as for the whole video, the window's own frame embedding), blended where
    windows overlap."""
    num_frames = latents.shape[1]
    weights = blend_weights(windows.length).to(latents.device)
    # Summed in float32: in half precision the sums of a frame's windows would round.
    total = torch.zeros(latents.shape, dtype=torch.float32, device=latents.device)
    weight_sum = torch.zeros(num_frames, device=latents.device)
    for frames in window_frames:
        index = torch.tensor(frames, device=latents.device)
        channels = cond.channels[:, index]  # a copy: indexing with a tensor
        embedding = windows.window_embedding(frames, num_frames).to(channels)
        channels[:, :, FRAME_EMBEDDING_CHANNEL] = embedding.view(1, -1, 1, 1)
        prediction = guided_prediction(unet, latents[:, index], timestep, replace(cond, channels=channels), guidance_scale)
        total.index_add_(1, index, prediction.float() * weights.view(1, -1, 1, 1, 1))
        weight_sum.index_add_(0, index, weights)
    return (total / weight_sum.view(1, -1, 1, 1, 1)).to(latents.dtype)


def sample_video(
    unet: LivePhotoUNet,
    latents: torch.Tensor,
    cond: VideoConditioning,
    scheduler,
    num_inference_steps: int,
    guidance_scale: float,
    generator: torch.Generator | None = None,
    callback: ProgressCallback | None = None,
    windows: ContextWindows | None = None,
) -> torch.Tensor:
    """Denoise `latents` (already scaled by the scheduler's initial sigma) over the scheduler's steps:
    all frames in one UNet call, or, with `windows` and more frames than one window, window by window."""
    num_frames = latents.shape[1]
    # The scheduler keeps its timesteps on the CPU: its steps index tables and compare timesteps, which
    # with accelerator tensors would wait for the device every step. The UNet gets its own copies, moved once.
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps
    unet_timesteps = timesteps.to(latents.device)
    # Only the stochastic schedulers take a generator.
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for step, (timestep, unet_timestep) in enumerate(zip(timesteps, unet_timesteps), start=1):
        model_input = scheduler.scale_model_input(latents, timestep)
        if windows is None or windows.is_single(num_frames):
            prediction = guided_prediction(unet, model_input, unet_timestep, cond, guidance_scale)
        else:
            prediction = windowed_prediction(
                unet, model_input, unet_timestep, cond, guidance_scale, windows, windows.windows(num_frames, step - 1)
            )
        # diffusers' step returns (prev_sample,) or (prev_sample, pred_original_sample).
        outputs = scheduler.step(prediction, timestep, latents, return_dict=False, **step_kwargs)
        latents = outputs[0]
        clean = outputs[1] if len(outputs) > 1 and outputs[1] is not None else latents
        event = ProgressEvent("sampling", step, len(timesteps), clean)
        check_finite(latents, event)
        if callback is not None:
            callback(event)
    return latents


def check_finite(latents: torch.Tensor, event: ProgressEvent) -> None:
    """Stop at the first step whose latents hold NaN or infinity: later steps only carry them on, to a
    black video. One reduction and one device sync a step, small beside the step's UNet call."""
    if torch.isfinite(latents).all():
        return
    low_precision = " or run in float32" if latents.dtype in (torch.float16, torch.bfloat16) else ""
    raise InvalidInputError(
        f"the latents became NaN or infinite at {event.phase} step {event.step} of {event.total}: the settings "
        f"push the model past its range; lower the guidance scale ({DEFAULT_GUIDANCE_SCALE} is usual), the content "
        f"scale ({DEFAULT_CONTENT_SCALE:g} is trained) or the prior weights (inversion start and end){low_precision}"
    )


def initial_noise(shape: tuple[int, ...], generator: torch.Generator, device, dtype) -> torch.Tensor:
    """Gaussian noise drawn on the CPU, so a seed gives the same video on every device."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
