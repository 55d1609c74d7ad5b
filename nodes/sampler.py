"""PriorInversion and LivePhotoSampler: the core's render steps (invert_reference, generate_latents) as nodes.

ComfyUI data in, core calls, ComfyUI data out: the reference LATENT holds raw VAE latents (scaled
going in, unscaled coming out, as ComfyUI's own samplers do), the photo IMAGE gives the DINOv2
content tokens, and frames travel in the batch axis of the output LATENT, [F, 4, h, w].

Batches: a batch (or list) of N photos and a list of prompts (LivePhoto Text Reweight gives one per
line) make one video each, paired by livephoto_core.batch's rule. As frames already fill a LATENT's
batch axis, the videos leave the sampler as a list, ComfyUI's idiom for "one after the other": VAE
Decode and Save Animated WEBP run once per video. Prior Inversion gives one prior per photo, a list.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import comfy.model_management
import torch
from comfy_api.latest import io, ui

from ..livephoto_core.batch import how_many, pair_photos_and_prompts
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
from .text import PROMPT_TEXT, reweighted_embeddings, single_prompt
from .windows import NodeWindows

VAE_FACTOR = 8  # pixels per latent pixel


@dataclass(frozen=True, repr=False)
class NodePrior:
    """One item of a LIVEPHOTO_PRIOR list: one photo's inverted latent (the core's Prior) and what it was made from."""

    prior: Prior
    model_token: str
    reference: torch.Tensor  # the scaled reference latent [1, 4, h, w] it was inverted from, on the intermediate device
    intensity: int
    intensity_schedule: str  # "" or keyframes, which win over `intensity`
    scheduler: str
    steps: int

    def __repr__(self) -> str:
        shape = tuple(self.reference.shape)
        intensity = self.intensity_schedule or self.intensity
        return f"NodePrior(intensity {intensity}, {self.scheduler} {self.steps} steps, latent {shape})"


def latent_samples(latent) -> torch.Tensor:
    """A LATENT from VAEEncode -> its raw latents [B, 4, h, w], one SD-1.5 image latent per photo."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor):
        raise InvalidInputError("the reference input is not a LATENT; connect VAEEncode of the photo")
    if samples.ndim != 4:
        raise InvalidInputError(
            f"the reference latent has shape {tuple(samples.shape)}; LivePhoto needs one SD-1.5 image latent "
            f"[1, 4, h, w] per photo: connect VAEEncode of the photo"
        )
    if samples.shape[1] != 4:
        raise InvalidInputError(
            f"the reference latent has {samples.shape[1]} channels; LivePhoto needs an SD-1.5 VAE latent (4): "
            f"encode the photo with the VAE of the SD-1.5 checkpoint"
        )
    return samples


def reference_latent(samples: torch.Tensor, scale: float) -> torch.Tensor:
    """One photo's raw latent [1, 4, h, w] -> the scaled latent the UNet reads."""
    height, width = (side * VAE_FACTOR for side in samples.shape[-2:])
    if not (MIN_SIZE <= height <= MAX_SIZE and MIN_SIZE <= width <= MAX_SIZE):
        raise InvalidInputError(
            f"the reference latent is for a {width}x{height} image; LivePhoto works from {MIN_SIZE} to {MAX_SIZE} "
            f"pixels a side: scale the photo with ImageScale before VAEEncode"
        )
    return samples.float() * scale


def image_batch(image) -> torch.Tensor:
    """An IMAGE [B, H, W, C], one photo per batch item."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InvalidInputError(f"the photo input is not an IMAGE [B, H, W, 3] (got {shape}); connect Load Image")
    return image


def photo_pixels(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """One photo [1, H, W, 3] at its reference latent's size -> pixels [1, 3, H, W], as the core prepares them."""
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


def photo_batch(references: list, photos: list, scale: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Reference LATENTs and photo IMAGEs (each a batch; a list of them from a list output) -> each photo's
    (scaled reference latent [1, 4, h, w], pixels [1, 3, H, W]), in order: the k-th latent is the k-th photo's."""
    latents = [sample for latent in references for sample in latent_samples(latent).split(1)]
    images = [image for batch in photos for image in image_batch(batch).split(1)]
    if len(latents) != len(images):
        raise InvalidInputError(
            f"the photo input holds {how_many(len(images), 'image')} but the reference {how_many(len(latents), 'latent')}; "
            f"connect VAEEncode of these same photos as the reference"
        )
    checked = []
    for index, (samples, image) in enumerate(zip(latents, images)):
        try:
            latent = reference_latent(samples, scale)
            checked.append((latent, photo_pixels(image, latent.shape[-2] * VAE_FACTOR, latent.shape[-1] * VAE_FACTOR)))
        except InvalidInputError as error:
            if len(images) == 1:
                raise
            raise InvalidInputError(f"photo {index + 1} of {len(images)}: {error}") from None
    return checked


def photo_conditioning(
    model: LivePhotoModel, latent: torch.Tensor, pixels: torch.Tensor, intensity: int
) -> PhotoConditioning:
    """The node's scaled reference latent and photo pixels, as both render steps read them."""
    return PhotoConditioning(
        reference_latent=latent.to(device=model.device, dtype=model.dtype),
        content=model.encode_content(pixels),
        intensity=intensity,
    )


def check_priors(priors: list[NodePrior], handle: LivePhotoModelHandle, photos: list) -> None:
    """A prior per photo, each from the sampler's model and its photo's reference latent."""
    if len(priors) != len(photos):
        raise InvalidInputError(
            f"the prior holds {how_many(len(priors), 'inverted photo')} but the sampler has "
            f"{how_many(len(photos), 'photo')}; connect the same photos and VAEEncode LATENT to Prior Inversion and "
            f"the sampler"
        )
    for prior, (reference, _) in zip(priors, photos):
        if prior.model_token != handle.token:
            raise InvalidInputError(
                "the prior was inverted with another LivePhoto model; give Prior Inversion the sampler's "
                "LIVEPHOTO_MODEL"
            )
        if prior.reference.shape != reference.shape or not torch.equal(prior.reference, reference.to(prior.reference)):
            raise InvalidInputError(
                "the prior was inverted from another reference latent; connect the same VAEEncode LATENT to Prior "
                "Inversion and the sampler"
            )


def one_value(values: list, name: str):
    """A sampler setting's one value. The sampler takes its inputs as lists (is_input_list) to see every photo
    and prompt at once; each setting holds for every video."""
    if len(values) != 1:
        raise InvalidInputError(
            f"the sampler's {name} input holds a list of {len(values)}; it takes one {name} for all its videos: "
            f"connect a single value (or one sampler per value)"
        )
    return values[0]


def video_label(video: int, photo: int, prompt: int, options: dict) -> str:
    """Which photo and prompt a video is, numbered from 1 in the order they came in; the prompt's words where
    LivePhoto Text Reweight made it (a plain CLIPTextEncode conditioning carries none)."""
    words = options.get(PROMPT_TEXT)
    return f"video {video + 1}: photo {photo + 1}, prompt {prompt + 1}" + ("" if words is None else f' "{words}"')


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
    return io.Latent.Input(
        "reference", tooltip="The photo encoded by VAEEncode; its size is the video's size. A batch of photos: each "
        "photo's latent, in the same order."
    )


def _photo_input():
    return io.Image.Input(
        "photo", tooltip="The photo itself (the image given to VAEEncode), for LivePhoto's DINOv2 content tokens. A "
        "batch of N photos (e.g. from a folder loader) makes N videos."
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
                    display_name="prior", is_output_list=True,
                    tooltip="The inverted photo (one per photo of a batch), for the LivePhoto Sampler's prior input.",
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
        photos = photo_batch([reference], [photo], handle.latent_scale)
        empty = single_prompt(clip.encode_from_tokens_scheduled(clip.tokenize("")), config.cross_attention_dim,
                              "empty-prompt")

        output_device = comfy.model_management.intermediate_device()
        priors = []
        for latent, pixels in photos:
            model = handle.load(sampling_memory(1, *latent.shape[-2:], False, handle.model.dtype))
            request = InversionRequest(
                photo=photo_conditioning(model, latent, pixels, intensity),
                empty_text=reweighted_embeddings(handle, *empty, "empty-prompt"),
                schedule=schedule, steps=steps, start=start, end=end,
            )
            prior = invert_reference(model, request, NodeProgress(steps))
            priors.append(NodePrior(
                replace(prior, inverted=prior.inverted.to(output_device)), handle.token, latent.to(output_device),
                intensity, intensity_schedule.strip(), scheduler, steps,
            ))
        return io.NodeOutput(priors)


class LivePhotoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LivePhotoSampler",
            display_name="LivePhoto Sampler",
            category="LivePhoto",
            description="Animates the photo: denoises all frames together, conditioned on the reference latent, the "
            "photo's content tokens, the reweighted text and the motion intensity. Decode the LATENT with VAEDecode. "
            "Batches: N photos and one prompt, one photo and N prompts, or N of each (photo k with prompt k) make N "
            "videos, a LATENT list; the videos output says which is which.",
            is_input_list=True,  # every photo and prompt at once, to pair them; the settings hold for every video
            inputs=[
                _livephoto_input(),
                io.Conditioning.Input(
                    "positive",
                    tooltip="The motion prompt, from LivePhoto Text Reweight (or CLIPTextEncode: reweighted here). "
                    "Several prompts (Text Reweight: one a line) make a video each.",
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
                    tooltip="Seed of the starting noise; the same seed and settings give the same frames. Every "
                    "video of a batch starts from this seed, as it would alone.",
                ),
                _scheduler_input("The denoising schedule." + PRIOR_WINS),
                io.Float.Input(
                    "content_scale", default=DEFAULT_CONTENT_SCALE, min=0.0, max=MAX_CONTENT_SCALE, step=0.05,
                    tooltip="Strength of the photo's DINOv2 tokens; 1 is what the model was trained with, 0 turns them off.",
                ),
                io.Custom(LIVEPHOTO_PRIOR).Input(
                    "prior", optional=True,
                    tooltip="From LivePhoto Prior Inversion of the same photos and model; each video takes "
                    "intensity, scheduler and steps from its photo's prior. Without it every frame starts from pure "
                    "noise.",
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
                    display_name="latent", is_output_list=True,
                    tooltip="The frames as raw latents [frames, 4, h, w]; VAEDecode turns them into an IMAGE batch. "
                    "One per video: nodes after it run once per video, in the order of the videos output.",
                ),
                io.Float.Output(
                    display_name="fps",
                    tooltip="The playback rate the checkpoint was trained at: connect it to the fps of Save Animated "
                    "WEBP or Create Video (or set your own there).",
                ),
                io.String.Output(
                    display_name="videos", is_output_list=True,
                    tooltip="Which photo and prompt each video is ('video 2: photo 1, prompt 2 \"...\"'), one line "
                    "per latent, in order; Save Animated WEBP numbers its files in this order.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, intensity: list) -> bool | str:
        return next((message for message in map(intensity_message, intensity) if message is not True), True)

    @classmethod
    def execute(cls, livephoto_model: list, positive: list, negative: list, reference: list, photo: list,
                intensity: list, frames: list, steps: list, cfg: list, seed: list, scheduler: list,
                content_scale: list, prior: list | None = None, windows: list | None = None,
                intensity_schedule: list | None = None) -> io.NodeOutput:
        # Every input is a list (is_input_list): the photos and prompts to pair, and settings of one value each.
        handle = one_value(livephoto_model, "livephoto_model")
        config = handle.model.config
        # Every check before any model runs.
        frames = check_frames(one_value(frames, "frames"))
        asked = one_value(windows, "windows") if windows else NodeWindows(None, None, DEFAULT_WINDOW_SCHEDULE, False)
        windows = context_windows(frames, handle.model.unet.max_frames, config.num_frames, asked.length, asked.overlap,
                                  asked.schedule, asked.loop)
        cfg = check_guidance(one_value(cfg, "cfg"))
        seed = check_seed(one_value(seed, "seed"))
        content_scale = check_content_scale(one_value(content_scale, "content_scale"))
        photos = photo_batch(reference, photo, handle.latent_scale)
        prompts = [single_prompt(conditioning, config.cross_attention_dim, "positive") for conditioning in positive]
        negative = single_prompt(one_value(negative, "negative"), config.cross_attention_dim, "negative")
        pairs = pair_photos_and_prompts(len(photos), len(prompts))
        if prior is None:  # the widgets, for every photo
            widgets = (one_value(intensity, "intensity"), one_value(intensity_schedule, "intensity_schedule")
                       if intensity_schedule else "", one_value(scheduler, "scheduler"), one_value(steps, "steps"))
            settings = [widgets] * len(photos)
        else:  # one place for each setting: each photo's prior's, which it was inverted with
            check_priors(prior, handle, photos)
            settings = [(p.intensity, p.intensity_schedule, p.scheduler, p.steps) for p in prior]
        intensities = [node_intensity(level, schedule, frames, config.intensity_levels) for level, schedule, _, _ in settings]
        schedules = [Schedule(name, check_steps(count), handle.scheduler_config, config.prediction_type)
                     for _, _, name, count in settings]

        guided = cfg > 1  # as LivePhotoPipeline: no unconditional branch without guidance
        window_frames = frames if windows.is_single(frames) else windows.length  # one UNet call sees one window
        output_device = comfy.model_management.intermediate_device()
        latents, labels = [], []
        for video, (photo_index, prompt_index) in enumerate(pairs):
            latent, pixels = photos[photo_index]
            schedule = schedules[photo_index]
            model = handle.load(sampling_memory(window_frames, *latent.shape[-2:], guided, handle.model.dtype))
            request = SamplingRequest(
                photo=photo_conditioning(model, latent, pixels, intensities[photo_index]),
                text=reweighted_embeddings(handle, *prompts[prompt_index], "positive"),
                uncond_text=reweighted_embeddings(handle, *negative, "negative") if guided else None,
                schedule=schedule, num_frames=frames, guidance_scale=cfg, seed=seed, content_scale=content_scale,
                prior=None if prior is None else prior[photo_index].prior, windows=windows,
            )
            samples = generate_latents(model, request, NodeProgress(schedule.steps, previews=True))
            latents.append({"samples": (samples[0].float() / handle.latent_scale).to(output_device)})
            labels.append(video_label(video, photo_index, prompt_index, prompts[prompt_index][1]))
        return io.NodeOutput(latents, float(config.fps), labels, ui=ui.PreviewText("\n".join(labels)))
