"""LivePhotoPipeline: photo + motion prompt + intensity -> frames, with its own CLIP, VAE and DINOv2.

A call checks every setting, encodes the prompts (``encoding``) and the photo, runs the UNet steps
that the ComfyUI nodes run too (``render``), and decodes the frames. In low-memory mode the parts
each video uses once wait off the UNet's device between uses (``offload``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from . import __version__
from .batch import pair_photos_and_prompts
from .checks import (
    MAX_SEED,
    check_content_scale,
    check_frames,
    check_guidance,
    check_prior_weights,
    check_seed,
    check_size,
    check_steps,
    check_text,
    whole_number,
)
from .defaults import (
    DEFAULT_CONTENT_SCALE,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    DEFAULT_WINDOW_SCHEDULE,
)
from .encoding import DECODE_CHUNK_SIZE, decode_latents, encode_photo, encode_text, tokenize
from .errors import InvalidInputError
from .images import load_image, prepare_photo
from .intensity import IntensityMeasurement, check_frame_levels, measure_intensity
from .model import LivePhotoModel
from .offload import IdleOffload, choose_low_memory
from .render import (
    InversionRequest,
    PhotoConditioning,
    SamplingRequest,
    Schedule,
    generate_latents,
    invert_reference,
)
from .sampling import ProgressCallback
from .vocabulary import prompt_notes
from .windows import context_windows


@dataclass
class LivePhotoOutput:
    frames: torch.Tensor  # [F, H, W, 3] float 0..1, on the CPU
    token_weights: list[tuple[str, float]]  # the prompt's tokens and the weight the reweighter gave each
    intensity: IntensityMeasurement  # measured on the frames produced
    settings: dict  # every setting used, the seed, model hashes and the package version
    notes: list[str] = field(default_factory=list)  # what was changed about the input (resizing, ...)


class LivePhotoPipeline:
    """Animate a photo: ``pipe(image, "shaking head", intensity=5)`` -> LivePhotoOutput.

    Longer than the model's window: ``num_frames=32`` (sampled as overlapping windows, see ``windows``);
    ``loop=True`` makes the last frame flow into the first; ``intensity=[...]``, one level per frame,
    changes the motion over time (``intensity.schedule_levels`` turns keyframes into such a list).

    ``low_memory=True`` trades a little speed for a lower peak. The parts each video uses once (text
    encoder, DINOv2, VAE) hold no memory on the UNet's device while idle (see ``offload``); the
    UNet's feed-forward layers and the VAE decoder work a frame at a time, and guidance runs as two
    half batches. Choose the device before building the pipeline; it sets the UNet's feed-forward
    chunking on `model`. ``low_memory=None`` (the default) chooses it when a render at the model's size
    would not fit in the memory free on the device with every part loaded, and every output's notes say
    so (``offload.choose_low_memory``). Threads may share a pipeline.
    """

    def __init__(
        self,
        model: LivePhotoModel,
        vae,
        text_encoder,
        tokenizer,
        scheduler_config: dict,
        model_hashes: dict[str, str] | None = None,
        low_memory: bool | None = None,
    ):
        self.model = model
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.model_hashes = dict(model_hashes or {})
        config = model.config
        # Why low-memory mode was chosen for the caller, said in every output; None when the caller chose.
        self.memory_note = None if low_memory is not None else choose_low_memory(
            model.device, config.num_frames, config.height, config.width, model.dtype)
        self.low_memory = low_memory if low_memory is not None else self.memory_note is not None
        if self.low_memory:
            model.unet.set_feed_forward_chunking(True)
        self.offload = IdleOffload(self.occasional_modules() if self.low_memory else (), model.device)

    @property
    def config(self):
        return self.model.config

    def occasional_modules(self) -> tuple[torch.nn.Module, ...]:
        """The parts each video uses once, which low-memory mode keeps off the UNet's device."""
        return self.text_encoder, self.model.content_encoder.dinov2, self.vae

    def reweighted_text(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [1, 77] -> (reweighted embeddings [1, 77, D], weights [1, 77])."""
        with self.offload.visiting(self.text_encoder):
            embeddings = encode_text(self.text_encoder, input_ids)
        return self.model.reweight_text(embeddings)

    @torch.inference_mode()
    def __call__(
        self,
        image,
        prompt: str,
        intensity: int | Sequence[float] | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        negative_prompt: str = "",
        seed: int | None = None,
        height: int | None = None,
        width: int | None = None,
        content_scale: float = DEFAULT_CONTENT_SCALE,
        prior_inversion: bool = True,
        inversion_start: float | None = None,
        inversion_end: float | None = None,
        inversion_steps: int | None = None,
        scheduler: str = DEFAULT_SCHEDULER,
        decode_chunk_size: int | None = None,
        window_length: int | None = None,
        window_overlap: int | None = None,
        window_schedule: str = DEFAULT_WINDOW_SCHEDULE,
        loop: bool = False,
        callback: ProgressCallback | None = None,
    ) -> LivePhotoOutput:
        """`intensity` (one level, or one per frame), `num_frames`, `height`, `width` and the inversion
        endpoints default to the checkpoint's config; `inversion_steps` to `num_inference_steps`; `seed`
        to a new one; `window_length` to the clip length the model was trained on, `window_overlap` to
        half the window."""
        config = self.config
        # Every setting is checked before any model runs.
        num_frames = check_frames(config.num_frames if num_frames is None else num_frames)
        intensity = check_frame_levels(config.default_intensity if intensity is None else intensity, num_frames,
                                       config.intensity_levels)
        windows = context_windows(num_frames, self.model.unet.max_frames, config.num_frames, window_length,
                                  window_overlap, window_schedule, loop)
        num_inference_steps = check_steps(num_inference_steps)
        inversion_steps = check_steps(num_inference_steps if inversion_steps is None else inversion_steps,
                                      "inversion steps")
        guidance_scale = check_guidance(guidance_scale)
        # None, not any falsy value, means the default: height=0 is refused, not read as "the model's".
        height, width = check_size(config.height if height is None else height,
                                   config.width if width is None else width)
        content_scale = check_content_scale(content_scale)
        start, end = check_prior_weights(
            config.inversion_start if inversion_start is None else inversion_start,
            config.inversion_end if inversion_end is None else inversion_end,
        )
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else check_seed(seed)
        if decode_chunk_size is None:
            decode_chunk_size = 1 if self.low_memory else DECODE_CHUNK_SIZE
        decode_chunk_size = whole_number("decode chunk size", decode_chunk_size)
        if decode_chunk_size < 1:
            raise InvalidInputError(f"decode chunk size must be 1 or more frames, not {decode_chunk_size!r}")
        prompt, negative_prompt = check_text(prompt, "prompt"), check_text(negative_prompt, "negative prompt")
        schedule = Schedule(scheduler, num_inference_steps, self.scheduler_config, config.prediction_type)
        # Each distinct prompt tokenized once, now: a prompt that is too long is refused before the photo
        # work. The negative prompt is usually the inversion's empty prompt too.
        prompts = {prompt: "prompt"}
        prompts.setdefault(negative_prompt, "negative prompt")
        if prior_inversion:
            prompts.setdefault("", "prompt")
        token_ids = {words: tokenize(self.tokenizer, words, what) for words, what in prompts.items()}
        photo = prepare_photo(load_image(image), (height, width))

        guided = guidance_scale > 1
        needed = [prompt, *([negative_prompt] if guided else []), *([""] if prior_inversion else [])]
        with self.offload.visiting(self.text_encoder):
            encoded = {words: self.reweighted_text(token_ids[words][0]) for words in dict.fromkeys(needed)}
        text, weights = encoded[prompt]
        tokens = token_ids[prompt][1]
        pixels = photo.pixels.unsqueeze(0)
        with self.offload.visiting(self.model.content_encoder.dinov2):
            content = self.model.encode_content(pixels)
        with self.offload.visiting(self.vae):
            reference = encode_photo(self.vae, pixels).to(self.model.dtype)
        conditioning = PhotoConditioning(reference_latent=reference, content=content, intensity=intensity)
        prior = None
        if prior_inversion:
            inversion = InversionRequest(
                photo=conditioning, empty_text=encoded[""][0], schedule=schedule, steps=inversion_steps,
                start=start, end=end,
            )
            prior = invert_reference(self.model, inversion, callback)
        sampling = SamplingRequest(
            photo=conditioning, text=text, uncond_text=encoded[negative_prompt][0] if guided else None,
            schedule=schedule, num_frames=num_frames, guidance_scale=guidance_scale, seed=seed,
            content_scale=content_scale, prior=prior, split_guidance=self.low_memory, windows=windows,
        )
        latents = generate_latents(self.model, sampling, callback)
        with self.offload.visiting(self.vae):
            frames = decode_latents(self.vae, latents[0], decode_chunk_size)

        settings = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "intensity": list(intensity) if isinstance(intensity, tuple) else intensity,
            "num_frames": num_frames,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "seed": seed,
            "height": height,
            "width": width,
            "content_scale": content_scale,
            "prior_inversion": prior_inversion,
            "inversion_start": start,
            "inversion_end": end,
            "inversion_steps": inversion_steps if prior_inversion else None,
            "scheduler": scheduler,
            "window_length": windows.length,
            "window_overlap": windows.overlap,
            "window_schedule": windows.schedule,
            "loop": windows.loop,
            "low_memory": self.low_memory,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "fps": config.fps,
            "model_hashes": self.model_hashes,
            "livephoto_version": __version__,
        }
        return LivePhotoOutput(
            frames=frames,
            token_weights=list(zip(tokens, weights[0, 1 : 1 + len(tokens)].tolist())),
            intensity=measure_intensity(frames, config.intensity_thresholds),
            settings=settings,
            notes=([photo.note] if photo.resized else []) + prompt_notes(config.base_model, self.tokenizer, prompt)
            + ([self.memory_note] if self.memory_note else []),
        )

    def batch(self, images: Sequence, prompts: Sequence[str], **settings) -> list[LivePhotoOutput]:
        """One video per (photo, prompt) pair, in order, by the rule the CLI and the nodes follow
        (``batch.pair_photos_and_prompts``): one photo with each prompt, each photo with the one prompt,
        or photo k with prompt k. `settings` are a call's keyword arguments, the same for every video; a
        `seed` given makes every video from the same starting noise (None: a new seed each)."""
        for name, values in (("images", images), ("prompts", prompts)):
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise InvalidInputError(f"{name} must be a list; got {type(values).__name__} (a single photo and "
                                        f"prompt go to the pipeline's call)")
        pairs = pair_photos_and_prompts(len(images), len(prompts))
        return [self(images[photo], prompts[prompt], **settings) for photo, prompt in pairs]
