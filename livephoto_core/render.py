"""The UNet steps of a render, shared by LivePhotoPipeline and the ComfyUI nodes.

A front end encodes the prompt and the photo its own way (the pipeline with its CLIP, VAE and
DINOv2; the nodes with ComfyUI's CLIP and VAE), then runs LivePhoto's UNet through two calls, each
given one request whose fields are passed by name:

    prior = invert_reference(model, InversionRequest(photo=..., empty_text=..., schedule=..., ...))
    latents = generate_latents(model, SamplingRequest(photo=..., text=..., schedule=..., prior=prior, ...))

Every setting of a call (schedule, intensity, content scale, guidance, seed) travels in its request
and the model keeps none of them, so threads that share one model get the frames they would get
one after the other. Front ends check the user's settings (``checks``) before they build requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .defaults import DEFAULT_CONTENT_SCALE
from .errors import InvalidInputError
from .intensity import first_level
from .inversion import ddim_invert, inversion_timesteps, mix_prior, prior_weights
from .model import LivePhotoModel
from .sampling import ProgressCallback, build_conditioning, initial_noise, make_scheduler, sample_video
from .windows import ContextWindows


@dataclass(frozen=True)
class Schedule:
    """A sampler of the SD family, by name, on the base model's noise schedule, and its step count."""

    scheduler: str  # a name in sampling.SCHEDULERS
    steps: int
    base_config: dict  # the base model's scheduler config: its noise schedule
    prediction_type: str  # what the UNet predicts (the LivePhoto config says)

    def __post_init__(self):
        self.make()  # an unknown scheduler name is refused here, before any model runs

    def make(self):
        """A new diffusers scheduler: schedulers keep state while they run, so each step makes its own."""
        return make_scheduler(self.scheduler, self.base_config, self.prediction_type)


@dataclass(frozen=True)
class PhotoConditioning:
    """What both steps read from the photo, and the motion asked of it."""

    reference_latent: torch.Tensor  # [1, 4, h, w]: the VAE latent times its scaling factor, as the UNet reads it
    content: torch.Tensor  # [1, N, D]: the photo's content tokens (LivePhotoModel.encode_content)
    # The motion level, 1 (still) .. 10 (most motion): one for every frame, or one per frame (a schedule).
    intensity: int | tuple[float, ...]


@dataclass(frozen=True)
class Prior:
    """The DDIM-inverted reference latent and how to mix it into each frame's starting noise."""

    inverted: torch.Tensor  # [1, 1, 4, h, w], scaled, at `timestep`
    timestep: int
    start: float
    end: float


@dataclass(frozen=True)
class InversionRequest:
    """Prior inversion (paper §3.3): take the photo's latent to the timestep sampling starts from."""

    photo: PhotoConditioning
    empty_text: torch.Tensor  # the empty prompt, reweighted, [1, 77, D]: the inversion runs unguided
    schedule: Schedule  # the sampler's: the inversion ends at its first timestep
    steps: int  # inversion steps (usually the sampler's)
    start: float  # the inverted latent's weight in the first frame's starting noise
    end: float  # ... and in the last frame's


@dataclass(frozen=True)
class SamplingRequest:
    """Denoise every frame of the video together, from the prior or from pure noise."""

    photo: PhotoConditioning
    text: torch.Tensor  # the prompt, reweighted, [1, L, D]
    uncond_text: torch.Tensor | None  # the negative prompt, reweighted; None: no guidance
    schedule: Schedule
    num_frames: int
    guidance_scale: float
    seed: int
    content_scale: float = DEFAULT_CONTENT_SCALE
    prior: Prior | None = None  # from invert_reference with the same photo and schedule
    split_guidance: bool = False  # guidance as two half-batch UNet calls: a lower peak, one more call a step
    # How frames beyond one window are sampled, and loops (``windows``); None: all frames in one window.
    windows: ContextWindows | None = None

    @property
    def context_windows(self) -> ContextWindows:
        return self.windows if self.windows is not None else ContextWindows(length=self.num_frames, overlap=0)


def invert_reference(
    model: LivePhotoModel, request: InversionRequest, callback: ProgressCallback | None = None
) -> Prior:
    """DDIM-invert the reference latent with the empty prompt, no guidance and the trained content
    scale, up to the first timestep of the request's schedule."""
    photo, schedule = request.photo, request.schedule
    scheduler = schedule.make()
    target = first_timestep(scheduler, schedule.steps)
    # One frame: the photo's own, at frame 0's level and position.
    channels = model.conditioning_channels(photo.reference_latent, 1, torch.tensor([first_level(photo.intensity)]))
    cond = build_conditioning(request.empty_text, None, photo.content, channels)
    inverted = ddim_invert(
        model.unet,
        photo.reference_latent.unsqueeze(1),
        cond,
        scheduler.alphas_cumprod,
        inversion_timesteps(target, request.steps, scheduler.config.num_train_timesteps),
        model.config.prediction_type,
        callback,
    )
    return Prior(inverted, target, request.start, request.end)


def generate_latents(
    model: LivePhotoModel, request: SamplingRequest, callback: ProgressCallback | None = None
) -> torch.Tensor:
    """-> the denoised scaled latents of every frame, [1, F, 4, h, w]."""
    photo, schedule, prior = request.photo, request.schedule, request.prior
    scheduler = schedule.make()
    _, latent_channels, height, width = photo.reference_latent.shape
    # One generator for the starting noise and, in ancestral schedulers, every later draw.
    generator = torch.Generator("cpu").manual_seed(request.seed)
    shape = (1, request.num_frames, latent_channels, height, width)
    noise = initial_noise(shape, generator, model.device, model.dtype)
    windows = request.context_windows
    windows.check(request.num_frames, model.unet.max_frames)  # front ends checked theirs; this is for requests made by hand
    positions = windows.frame_positions(request.num_frames)
    if prior is not None:
        start = first_timestep(scheduler, schedule.steps)
        if start != prior.timestep:
            raise InvalidInputError(
                f"the prior was inverted to timestep {prior.timestep} but this sampler starts at {start}: "
                f"give the prior inversion the sampler's scheduler and step count"
            )
        weights = prior_weights(positions, prior.start, prior.end)
        noise = mix_prior(prior.inverted.to(noise), noise, weights)
    latents = noise * scheduler.init_noise_sigma
    cond = build_conditioning(
        request.text, request.uncond_text, photo.content, photo_channels(model, photo, positions),
        content_scale=request.content_scale, split_guidance=request.split_guidance,
    )
    return sample_video(
        model.unet, latents, cond, scheduler, schedule.steps, request.guidance_scale, generator, callback, windows
    )


def photo_channels(model: LivePhotoModel, photo: PhotoConditioning, positions: torch.Tensor) -> torch.Tensor:
    """The UNet's conditioning channels for the frames at `positions` (their frame embedding, [F]), [1, F, 6, h, w]."""
    num_frames = len(positions)
    levels = photo.intensity if isinstance(photo.intensity, tuple) else (float(photo.intensity),) * num_frames
    if len(levels) != num_frames:
        raise InvalidInputError(f"the intensity holds {len(levels)} levels for a video of {num_frames} frames")
    return model.conditioning_channels(photo.reference_latent, num_frames, torch.tensor([levels]), positions)


def first_timestep(scheduler, num_inference_steps: int) -> int:
    scheduler.set_timesteps(num_inference_steps)
    return int(scheduler.timesteps[0])
