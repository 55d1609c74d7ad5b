"""PriorInversion and LivePhotoSampler: the core's render steps (invert_reference, generate_latents) as nodes.

ComfyUI data in, core calls, ComfyUI data out: the reference LATENT holds raw VAE latents (scaled
going in, unscaled coming out, as ComfyUI's own samplers do), the photo IMAGE gives the DINOv2
content tokens, and frames travel in the batch axis of the output LATENT, [F, 4, h, w].
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import comfy.model_management
import torch
from comfy_api.latest import io

from ..livephoto_core.checks import (
    MAX_CONTENT_SCALE,
    MAX_FRAMES,
    MAX_GUIDANCE,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MIN_FRAMES,
    MIN_SIZE,
    check_content_scale,
    check_frames,
    check_guidance,
    check_prior_weights,
    check_seed,
    check_steps,
)
from ..livephoto_core.defaults import (
    DEFAULT_CONTENT_SCALE,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INTENSITY,
    DEFAULT_INVERSION_END,
    DEFAULT_INVERSION_START,
    DEFAULT_NUM_FRAMES,
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    DEFAULT_WINDOW_SCHEDULE,
)
from ..livephoto_core.errors import InvalidInputError
from ..livephoto_core.images import prepare_photo
from ..livephoto_core.intensity import LEVELS, intensity_from_text, parse_intensity_schedule, validate_level
from ..livephoto_core.model import LivePhotoModel
from ..livephoto_core.render import (
    InversionRequest,
    PhotoConditioning,
    Prior,
    SamplingRequest,
    Schedule,
    generate_latents,
    invert_reference,
)
from ..livephoto_core.sampling import SCHEDULERS
from ..livephoto_core.windows import context_windows
from .handle import LIVEPHOTO_MODEL, LIVEPHOTO_PRIOR, LIVEPHOTO_WINDOWS, LivePhotoModelHandle, NodeProgress, sampling_memory
from .text import reweighted_embeddings, single_prompt
from .windows import NodeWindows

VAE_FACTOR = 8  # pixels per latent pixel


@dataclass(frozen=True, repr=False)
class NodePrior:
    """What flows along a LIVEPHOTO_PRIOR link: the core's Prior and what it was made from."""

    prior: Prior
    model_token: str
    reference: torch.Tensor  # the scaled reference latent it was inverted from, on the intermediate device
    intensity: int
    intensity_schedule: str  # "" or keyframes, which win over `intensity`
    scheduler: str
    steps: int

    def __repr__(self) -> str:
        shape = tuple(self.reference.shape)
        intensity = self.intensity_schedule or self.intensity
        return f"NodePrior(intensity {intensity}, {self.scheduler} {self.steps} steps, latent {shape})"


def reference_latent(latent, scale: float) -> torch.Tensor:
    """A LATENT from VAEEncode (raw latents [1, 4, h, w]) -> the scaled latent the UNet reads."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor):
        raise InvalidInputError("the reference input is not a LATENT; connect VAEEncode of the photo")
    if samples.ndim != 4:
        raise InvalidInputError(
            f"the reference latent has shape {tuple(samples.shape)}; LivePhoto needs one SD-1.5 image latent "
            f"[1, 4, h, w]: connect VAEEncode of the photo"
        )
    if samples.shape[0] != 1:
        raise InvalidInputError(
            f"the reference latent holds a batch of {samples.shape[0]}; LivePhoto animates one photo: encode a "
            f"single image (or pick one with Latent From Batch)"
        )
    if samples.shape[1] != 4:
        raise InvalidInputError(
            f"the reference latent has {samples.shape[1]} channels; LivePhoto needs an SD-1.5 VAE latent (4): "
            f"encode the photo with the VAE of the SD-1.5 checkpoint"
        )
    height, width = (side * VAE_FACTOR for side in samples.shape[-2:])
    if not (MIN_SIZE <= height <= MAX_SIZE and MIN_SIZE <= width <= MAX_SIZE):
        raise InvalidInputError(
            f"the reference latent is for a {width}x{height} image; LivePhoto works from {MIN_SIZE} to {MAX_SIZE} "
            f"pixels a side: scale the photo with ImageScale before VAEEncode"
        )
    return samples.float() * scale


def photo_pixels(image, height: int, width: int) -> torch.Tensor:
    """The photo IMAGE [1, H, W, 3] at the reference latent's size -> pixels [1, 3, H, W], as the core prepares them."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InvalidInputError(f"the photo input is not an IMAGE [1, H, W, 3] (got {shape}); connect Load Image")
    if image.shape[0] != 1:
        raise InvalidInputError(
            f"the photo input is a batch of {image.shape[0]} images; LivePhoto animates one photo: pick one with "
            f"ImageFromBatch and encode only that one"
        )
    photo_height, photo_width = image.shape[1:3]
    if not (MIN_SIZE <= photo_height <= MAX_SIZE and MIN_SIZE <= photo_width <= MAX_SIZE):
        raise InvalidInputError(
            f"the photo is {photo_width}x{photo_height} pixels; LivePhoto works from {MIN_SIZE} to {MAX_SIZE} pixels "
            f"a side: scale it with ImageScale before VAEEncode"
        )
    if photo_height % VAE_FACTOR or photo_width % VAE_FACTOR:
        raise InvalidInputError(
            f"the photo is {photo_width}x{photo_height} pixels; LivePhoto needs sides that are multiples of 8: scale "
            f"it to {photo_width // 8 * 8}x{photo_height // 8 * 8} with ImageScale before VAEEncode"
        )
    if (photo_height, photo_width) != (height, width):
        raise InvalidInputError(
            f"the photo is {photo_width}x{photo_height} pixels but the reference latent is for {width}x{height}: "
            f"encode this same photo with VAEEncode and connect that latent as the reference"
        )
    return prepare_photo(image[0, ..., :3], (height, width)).pixels.unsqueeze(0)


def photo_conditioning(
    model: LivePhotoModel, latent: torch.Tensor, pixels: torch.Tensor, intensity: int
) -> PhotoConditioning:
    """The node's scaled reference latent and photo pixels, as both render steps read them."""
    return PhotoConditioning(
        reference_latent=latent.to(device=model.device, dtype=model.dtype),
        content=model.encode_content(pixels),
        intensity=intensity,
    )


def check_prior(prior: NodePrior, handle: LivePhotoModelHandle, reference: torch.Tensor) -> None:
    """A prior belongs to one model and one reference latent; its intensity, scheduler and steps are
    the sampler's own when it is connected (set once, on Prior Inversion)."""
    if prior.model_token != handle.token:
        raise InvalidInputError(
            "the prior was inverted with another LivePhoto model; give Prior Inversion the sampler's LIVEPHOTO_MODEL"
        )
    if prior.reference.shape != reference.shape or not torch.equal(prior.reference, reference.to(prior.reference)):
        raise InvalidInputError(
            "the prior was inverted from another reference latent; connect the same VAEEncode LATENT to Prior "
            "Inversion and the sampler"
        )


def intensity_message(intensity) -> bool | str:
    """The intensity widget checked when the prompt is queued, so that 0 or 11 is refused with the range.

    Only intensity is named here: ComfyUI attaches a validate_inputs message to every input it names,
    and skips its own min/max checks for them; the other widgets keep ComfyUI's checks (and the core
    checks them all again when the node runs). None means the value comes from a link.
    """
    if intensity is None:
        return True
    try:
        validate_level(intensity)
    except InvalidInputError as error:
        return str(error)
    return True


def node_intensity(intensity: int, intensity_schedule: str, num_frames: int, levels: int) -> int | tuple[float, ...]:
    """The intensity widget, or the schedule string when one is written: one level, or one per frame."""
    if intensity_schedule.strip():
        return intensity_from_text(intensity_schedule, num_frames, levels)
    return validate_level(intensity, levels)


def _livephoto_input():
    return io.Custom(LIVEPHOTO_MODEL).Input("livephoto_model", tooltip="From Load LivePhoto Model.")


def _reference_input():
    return io.Latent.Input("reference", tooltip="The photo encoded by VAEEncode (one image); its size is the video's size.")


def _photo_input():
    return io.Image.Input(
        "photo", tooltip="The photo itself (the image given to VAEEncode), for LivePhoto's DINOv2 content tokens."
    )


# The sampler's intensity, steps and scheduler when a prior is connected: the prior's, set on Prior Inversion.
PRIOR_WINS = " With a prior connected, the prior's value is used (set it on Prior Inversion)."


def _intensity_input(note: str = ""):
    return io.Int.Input(
        "intensity", default=DEFAULT_INTENSITY, min=1, max=LEVELS,
        tooltip="Motion intensity: 1 = nearly still, 10 = the most motion." + note,
    )


def _intensity_schedule_input(note: str = ""):
    return io.String.Input(
        "intensity_schedule", default="", optional=True,
        tooltip="Intensity that changes over time: LEVEL:FRAME keyframes, linear in between, e.g. 2:0,8:31 (level 2 "
        "at frame 0 rising to 8 at frame 31; held before the first and after the last). Empty: the intensity "
        "widget for every frame." + note,
    )


def _steps_input(tooltip: str):
    return io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=MAX_STEPS, tooltip=tooltip)


def _scheduler_input(tooltip: str):
    return io.Combo.Input("scheduler", options=list(SCHEDULERS), default=DEFAULT_SCHEDULER, tooltip=tooltip)


class PriorInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LivePhotoPriorInversion",
            display_name="LivePhoto Prior Inversion",
            category="LivePhoto",
            description="DDIM-inverts the photo's latent through the LivePhoto UNet (empty prompt, no guidance) to "
            "the sampler's first timestep, so every frame starts from noise that already knows the photo.",
            inputs=[
                _livephoto_input(),
                io.Clip.Input(
                    "clip", tooltip="The CLIP of the SD-1.5 checkpoint; encodes the empty prompt the inversion runs with."
                ),
                _reference_input(),
                _photo_input(),
                _intensity_input(),
                _steps_input("The sampler's step count (the inversion runs as many); must match the LivePhoto Sampler."),
                _scheduler_input("The sampler's scheduler; must match the LivePhoto Sampler."),
                io.Float.Input(
                    "start", default=DEFAULT_INVERSION_START, min=0.0, max=1.0, step=0.001,
                    tooltip=f"Weight of the inverted photo in the first frame's starting noise "
                    f"(paper: {DEFAULT_INVERSION_START}).",
                ),
                io.Float.Input(
                    "end", default=DEFAULT_INVERSION_END, min=0.0, max=1.0, step=0.001,
                    tooltip=f"Weight of the inverted photo in the last frame's starting noise "
                    f"(paper: {DEFAULT_INVERSION_END}).",
                ),
                _intensity_schedule_input(" The inversion runs at frame 0's level; the sampler uses the schedule."),
            ],
            outputs=[
                io.Custom(LIVEPHOTO_PRIOR).Output(
                    display_name="prior", tooltip="The inverted photo, for the LivePhoto Sampler's prior input."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, intensity: int) -> bool | str:
        return intensity_message(intensity)

    @classmethod
    def execute(cls, livephoto_model: LivePhotoModelHandle, clip, reference, photo, intensity: int, steps: int,
                scheduler: str, start: float, end: float, intensity_schedule: str = "") -> io.NodeOutput:
        handle = livephoto_model
        config = handle.model.config
        intensity = validate_level(intensity, config.intensity_levels)
        if intensity_schedule.strip():  # checked here; the sampler expands it over its frames
            intensity = parse_intensity_schedule(intensity_schedule, config.intensity_levels)[0][0]  # frame 0's level
        steps = check_steps(steps)
        start, end = check_prior_weights(start, end)
        schedule = Schedule(scheduler, steps, handle.scheduler_config, config.prediction_type)
        latent = reference_latent(reference, handle.latent_scale)
        pixels = photo_pixels(photo, latent.shape[-2] * VAE_FACTOR, latent.shape[-1] * VAE_FACTOR)
        empty = single_prompt(clip.encode_from_tokens_scheduled(clip.tokenize("")), config.cross_attention_dim,
                              "empty-prompt")

        model = handle.load(sampling_memory(1, *latent.shape[-2:], False, handle.model.dtype))
        request = InversionRequest(
            photo=photo_conditioning(model, latent, pixels, intensity),
            empty_text=reweighted_embeddings(handle, *empty, "empty-prompt"),
            schedule=schedule, steps=steps, start=start, end=end,
        )
        prior = invert_reference(model, request, NodeProgress(steps))
        output_device = comfy.model_management.intermediate_device()
        prior = replace(prior, inverted=prior.inverted.to(output_device))
        return io.NodeOutput(NodePrior(
            prior, handle.token, latent.to(output_device), intensity, intensity_schedule.strip(), scheduler, steps
        ))


class LivePhotoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LivePhotoSampler",
            display_name="LivePhoto Sampler",
            category="LivePhoto",
            description="Animates the photo: denoises all frames together, conditioned on the reference latent, the "
            "photo's content tokens, the reweighted text and the motion intensity. Decode the LATENT with VAEDecode.",
            inputs=[
                _livephoto_input(),
                io.Conditioning.Input(
                    "positive",
                    tooltip="The motion prompt, from LivePhoto Text Reweight (or CLIPTextEncode: reweighted here).",
                ),
                io.Conditioning.Input(
                    "negative", tooltip="The negative prompt (usually empty), from CLIPTextEncode or Text Reweight."
                ),
                _reference_input(),
                _photo_input(),
                _intensity_input(PRIOR_WINS),
                io.Int.Input(
                    "frames", default=DEFAULT_NUM_FRAMES, min=MIN_FRAMES, max=MAX_FRAMES,
                    tooltip=f"Number of frames, up to {MAX_FRAMES}. More than one window (the model's clip length, or "
                    f"what LivePhoto Context Windows sets) are sampled as overlapping windows.",
                ),
                _steps_input("Denoising steps." + PRIOR_WINS),
                io.Float.Input(
                    "cfg", default=DEFAULT_GUIDANCE_SCALE, min=0.0, max=MAX_GUIDANCE, step=0.1, round=0.01,
                    tooltip="Classifier-free guidance scale; 1 or less turns guidance (and the negative prompt) off.",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                    tooltip="Seed of the starting noise; the same seed and settings give the same frames.",
                ),
                _scheduler_input("The denoising schedule." + PRIOR_WINS),
                io.Float.Input(
                    "content_scale", default=DEFAULT_CONTENT_SCALE, min=0.0, max=MAX_CONTENT_SCALE, step=0.05,
                    tooltip="Strength of the photo's DINOv2 tokens; 1 is what the model was trained with, 0 turns them off.",
                ),
                io.Custom(LIVEPHOTO_PRIOR).Input(
                    "prior", optional=True,
                    tooltip="From LivePhoto Prior Inversion (same model, latent, intensity, scheduler and steps); "
                    "without it every frame starts from pure noise.",
                ),
                io.Custom(LIVEPHOTO_WINDOWS).Input(
                    "windows", optional=True,
                    tooltip="From LivePhoto Context Windows: window length, overlap, schedule and loop. Without it: "
                    "the model's clip length, half overlapping, static, no loop.",
                ),
                _intensity_schedule_input(PRIOR_WINS),
            ],
            outputs=[
                io.Latent.Output(
                    display_name="latent",
                    tooltip="The frames as raw latents [frames, 4, h, w]; VAEDecode turns them into an IMAGE batch.",
                ),
                io.Float.Output(
                    display_name="fps",
                    tooltip="The playback rate the checkpoint was trained at: connect it to the fps of Save Animated "
                    "WEBP or Create Video (or set your own there).",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, intensity: int) -> bool | str:
        return intensity_message(intensity)

    @classmethod
    def execute(cls, livephoto_model: LivePhotoModelHandle, positive, negative, reference, photo, intensity: int,
                frames: int, steps: int, cfg: float, seed: int, scheduler: str, content_scale: float,
                prior: NodePrior | None = None, windows: NodeWindows | None = None,
                intensity_schedule: str = "") -> io.NodeOutput:
        handle = livephoto_model
        config = handle.model.config
        if prior is not None:  # one place for each setting: the prior's, which it was inverted with
            intensity, intensity_schedule = prior.intensity, prior.intensity_schedule
            scheduler, steps = prior.scheduler, prior.steps
        # Every check before any model runs.
        frames = check_frames(frames)
        intensity = node_intensity(intensity, intensity_schedule, frames, config.intensity_levels)
        asked = windows or NodeWindows(None, None, DEFAULT_WINDOW_SCHEDULE, False)  # no Context Windows: the defaults
        windows = context_windows(frames, handle.model.unet.max_frames, config.num_frames, asked.length, asked.overlap,
                                  asked.schedule, asked.loop)
        steps = check_steps(steps)
        cfg = check_guidance(cfg)
        seed = check_seed(seed)
        content_scale = check_content_scale(content_scale)
        schedule = Schedule(scheduler, steps, handle.scheduler_config, config.prediction_type)
        latent = reference_latent(reference, handle.latent_scale)
        pixels = photo_pixels(photo, latent.shape[-2] * VAE_FACTOR, latent.shape[-1] * VAE_FACTOR)
        positive = single_prompt(positive, config.cross_attention_dim, "positive")
        negative = single_prompt(negative, config.cross_attention_dim, "negative")
        if prior is not None:
            check_prior(prior, handle, latent)

        guided = cfg > 1  # as LivePhotoPipeline: no unconditional branch without guidance
        window_frames = frames if windows.is_single(frames) else windows.length  # one UNet call sees one window
        model = handle.load(sampling_memory(window_frames, *latent.shape[-2:], guided, handle.model.dtype))
        request = SamplingRequest(
            photo=photo_conditioning(model, latent, pixels, intensity),
            text=reweighted_embeddings(handle, *positive, "positive"),
            uncond_text=reweighted_embeddings(handle, *negative, "negative") if guided else None,
            schedule=schedule, num_frames=frames, guidance_scale=cfg, seed=seed, content_scale=content_scale,
            prior=None if prior is None else prior.prior, windows=windows,
        )
        latents = generate_latents(model, request, NodeProgress(steps, previews=True))
        samples = latents[0].float() / handle.latent_scale
        return io.NodeOutput({"samples": samples.to(comfy.model_management.intermediate_device())}, float(config.fps))
