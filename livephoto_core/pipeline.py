"""LivePhotoPipeline: photo + motion prompt + intensity -> frames.

The steps are module-level functions so that the ComfyUI nodes, which bring their own CLIP and
VAE, run exactly the same numerics: encode the text and reweight it, encode the photo (VAE latent
and DINOv2 tokens), optionally invert the reference latent, denoise, decode.
"""

from __future__ import annotations

import ctypes
import secrets
import shutil
import tempfile
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import __version__
from .checks import (
    MAX_SEED,
    check_content_scale,
    check_frames,
    check_guidance,
    check_prior_weights,
    check_prompt_tokens,
    check_seed,
    check_size,
    check_steps,
)
from .defaults import (
    CLIP_CONTEXT,
    DEFAULT_CONTENT_SCALE,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INVERSION_END,
    DEFAULT_INVERSION_START,
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
)
from .errors import InvalidInputError
from .images import load_image, prepare_photo
from .intensity import IntensityMeasurement, measure_intensity, validate_level
from .inversion import ddim_invert, inversion_timesteps, mix_prior, prior_weights
from .model import LivePhotoModel
from .sampling import (
    ProgressCallback,
    build_conditioning,
    initial_noise,
    make_scheduler,
    sample_video,
)

OFFLOAD_DEVICE = torch.device("cpu")
DECODE_CHUNK_SIZE = 2  # frames the VAE decodes at once: ~0.2 GB each in fp32 at 256x256, no faster in bigger batches


@dataclass(frozen=True)
class Prior:
    """The DDIM-inverted reference latent and how to mix it into each frame's starting noise."""

    inverted: torch.Tensor  # [1, 1, 4, h, w], scaled, at `timestep`
    timestep: int
    start: float
    end: float


@dataclass
class LivePhotoOutput:
    frames: torch.Tensor  # [F, H, W, 3] float 0..1, on the CPU
    token_weights: list[tuple[str, float]]  # the prompt's tokens and the weight the reweighter gave each
    intensity: IntensityMeasurement  # measured on the frames produced
    settings: dict  # every setting used, the seed, model hashes and the package version
    notes: list[str] = field(default_factory=list)  # what was changed about the input (resizing, ...)


def tokenize(tokenizer, prompt: str, what: str = "prompt") -> tuple[torch.Tensor, list[str]]:
    """-> input ids [1, 77] and the prompt's own tokens (without start, end and padding)."""
    ids = tokenizer(prompt, truncation=False).input_ids
    check_prompt_tokens(len(ids) - 2, what)
    tokens = [t.removesuffix("</w>") for t in tokenizer.convert_ids_to_tokens(ids[1:-1])]
    padded = ids + [tokenizer.pad_token_id] * (CLIP_CONTEXT - len(ids))
    return torch.tensor([padded]), tokens


def encode_text(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """CLIP's last hidden state (after the final layer norm, as SD-1.5 reads it): [1, 77, D]."""
    return text_encoder(input_ids.to(text_encoder.device)).last_hidden_state


def encode_photo(vae, pixels: torch.Tensor) -> torch.Tensor:
    """pixels [B, 3, H, W] in 0..1 -> scaled latent [B, 4, H/8, W/8] (posterior mode, like ComfyUI)."""
    weight = first_weight(vae)
    posterior = vae.encode((pixels * 2 - 1).to(device=weight.device, dtype=weight.dtype)).latent_dist
    return posterior.mode() * vae.config.scaling_factor


def decode_latents(vae, latents: torch.Tensor, chunk_size: int = DECODE_CHUNK_SIZE) -> torch.Tensor:
    """Scaled latents [F, 4, h, w] -> frames [F, H, W, 3] float 0..1 on the CPU, `chunk_size` at a time."""
    weight = first_weight(vae)
    frames = []
    for chunk in latents.split(chunk_size):
        pixels = vae.decode(chunk.to(device=weight.device, dtype=weight.dtype) / vae.config.scaling_factor).sample
        frames.append(((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu())
    return torch.cat(frames)


def first_weight(module: torch.nn.Module) -> torch.Tensor:
    """A weight that tells the module's device and dtype (cheaper than diffusers' properties, which walk
    every submodule)."""
    return next(module.parameters())


def offload_to_file(module: torch.nn.Module, path: Path) -> Path:
    """Write `module`'s parameters to `path` and free them (left on the meta device) -> path."""
    from safetensors.torch import save_file

    save_file({name: param.detach().contiguous() for name, param in module.named_parameters()}, str(path))
    leave_for_file(module)
    return path


def leave_for_file(module: torch.nn.Module) -> None:
    for name, param in list(module.named_parameters()):
        set_parameter(module, name, torch.empty_like(param, device="meta"), param.requires_grad)
    return_freed_memory()


def return_freed_memory() -> None:
    """Hand the C heap's free pages back to the system. glibc keeps what freed tensors below its mmap
    threshold leave behind, so weights moved to a file would otherwise still count as resident."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc; other C libraries have no malloc_trim
    except (OSError, AttributeError):
        pass


def restore_from_file(module: torch.nn.Module, path: Path, device: torch.device) -> None:
    from safetensors.torch import load_file

    flags = {name: param.requires_grad for name, param in module.named_parameters()}
    for name, value in load_file(str(path), device=str(device)).items():
        set_parameter(module, name, value, flags[name])


def set_parameter(module: torch.nn.Module, name: str, value: torch.Tensor, requires_grad: bool) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner), leaf, torch.nn.Parameter(value, requires_grad=requires_grad))


def first_timestep(scheduler, num_inference_steps: int) -> int:
    scheduler.set_timesteps(num_inference_steps)
    return int(scheduler.timesteps[0])


def invert_reference(
    model: LivePhotoModel,
    scheduler,
    num_inference_steps: int,
    reference_latent: torch.Tensor,
    empty_text: torch.Tensor,
    content: torch.Tensor,
    intensity: int,
    inversion_steps: int,
    start: float = DEFAULT_INVERSION_START,
    end: float = DEFAULT_INVERSION_END,
    callback: ProgressCallback | None = None,
) -> Prior:
    """DDIM-invert the reference latent [1, 4, h, w] with the empty prompt, no guidance and the trained
    content scale, up to the first timestep that `scheduler` samples from with `num_inference_steps` steps."""
    target = first_timestep(scheduler, num_inference_steps)
    channels = model.conditioning_channels(reference_latent, 1, torch.tensor([float(intensity)]))
    cond = build_conditioning(empty_text, None, content, channels)
    inverted = ddim_invert(
        model.unet,
        reference_latent.unsqueeze(1),
        cond,
        scheduler.alphas_cumprod,
        inversion_timesteps(target, inversion_steps, scheduler.config.num_train_timesteps),
        model.config.prediction_type,
        callback,
    )
    return Prior(inverted, target, start, end)


def generate_latents(
    model: LivePhotoModel,
    scheduler,
    text: torch.Tensor,
    uncond_text: torch.Tensor | None,
    content: torch.Tensor,
    reference_latent: torch.Tensor,
    intensity: int,
    num_frames: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    content_scale: float = DEFAULT_CONTENT_SCALE,
    prior: Prior | None = None,
    callback: ProgressCallback | None = None,
    split_guidance: bool = False,
) -> torch.Tensor:
    """Reweighted text [1, L, D] (uncond None = no guidance), content [1, N, D], reference latent
    [1, 4, h, w] -> denoised scaled latents [1, F, 4, h, w]."""
    _, latent_channels, height, width = reference_latent.shape
    # One generator for the starting noise and, in ancestral schedulers, every later draw.
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = initial_noise((1, num_frames, latent_channels, height, width), generator, model.device, model.dtype)
    if prior is not None:
        start = first_timestep(scheduler, num_inference_steps)
        if start != prior.timestep:
            raise InvalidInputError(
                f"the prior was inverted to timestep {prior.timestep} but this sampler starts at {start}: "
                f"give the prior inversion the sampler's scheduler and step count"
            )
        noise = mix_prior(prior.inverted.to(noise), noise, prior_weights(num_frames, prior.start, prior.end))
    latents = noise * scheduler.init_noise_sigma
    channels = model.conditioning_channels(reference_latent, num_frames, torch.tensor([float(intensity)]))
    cond = replace(
        build_conditioning(text, uncond_text, content, channels),
        split_guidance=split_guidance, content_scale=content_scale,
    )
    return sample_video(model.unet, latents, cond, scheduler, num_inference_steps, guidance_scale, generator, callback)


class LivePhotoPipeline:
    """Animate a photo: ``pipe(image, "shaking head", intensity=5)`` -> LivePhotoOutput.

    ``low_memory=True`` trades a little speed for a lower peak. The parts each video uses once (text
    encoder, DINOv2, VAE) hold no memory on the UNet's device while idle: with the UNet on an
    accelerator they wait in CPU memory; with the UNet on the CPU their weights wait in a temporary
    file and are read back for each use. The UNet's feed-forward layers and the VAE decoder work a
    frame at a time, and guidance runs as two half batches. Choose the device before building the
    pipeline; it sets the UNet's feed-forward chunking on `model`.
    """

    def __init__(
        self,
        model: LivePhotoModel,
        vae,
        text_encoder,
        tokenizer,
        scheduler_config: dict,
        model_hashes: dict[str, str] | None = None,
        low_memory: bool = False,
    ):
        self.model = model
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.model_hashes = dict(model_hashes or {})
        self.low_memory = low_memory
        self.offload_files: dict[int, Path] = {}  # id(module) -> its weights, when idle parts wait in files
        self.visitors: set[int] = set()  # ids of the occasional modules in use now
        if low_memory:
            model.unet.set_feed_forward_chunking(True)
            if self.model.device == OFFLOAD_DEVICE:
                folder = Path(tempfile.mkdtemp(prefix="livephoto-offload-"))
                weakref.finalize(self, shutil.rmtree, folder, True)
                for index, module in enumerate(self.occasional_modules()):
                    self.offload_files[id(module)] = offload_to_file(module, folder / f"{index}.safetensors")
            else:
                for module in self.occasional_modules():
                    module.to(OFFLOAD_DEVICE)

    @property
    def config(self):
        return self.model.config

    def occasional_modules(self) -> tuple[torch.nn.Module, ...]:
        """The parts each video uses once, which low-memory mode keeps off the UNet's device."""
        return self.text_encoder, self.model.content_encoder.dinov2, self.vae

    @contextmanager
    def visiting(self, module: torch.nn.Module):
        """In low-memory mode, bring `module`'s weights to the UNet's device for the duration of its use."""
        if not self.low_memory or id(module) in self.visitors:
            yield
            return
        device, path = self.model.device, self.offload_files.get(id(module))
        # Weights brought here must stay ordinary tensors, usable outside inference mode.
        with torch.inference_mode(False):
            restore_from_file(module, path, device) if path else module.to(device)
        self.visitors.add(id(module))
        try:
            yield
        finally:
            self.visitors.discard(id(module))
            with torch.inference_mode(False):
                leave_for_file(module) if path else module.to(OFFLOAD_DEVICE)

    def reweighted_text(self, prompt: str, what: str = "prompt") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """-> (reweighted embeddings [1, 77, D], weights [1, 77], the prompt's tokens)."""
        input_ids, tokens = tokenize(self.tokenizer, prompt, what)
        with self.visiting(self.text_encoder):
            embeddings = encode_text(self.text_encoder, input_ids)
        embeddings, weights = self.model.reweight_text(embeddings)
        return embeddings, weights, tokens

    @torch.inference_mode()
    def __call__(
        self,
        image,
        prompt: str,
        intensity: int | None = None,
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
        callback: ProgressCallback | None = None,
    ) -> LivePhotoOutput:
        config = self.config
        # Every setting is checked before any model runs.
        intensity = validate_level(config.default_intensity if intensity is None else intensity, config.intensity_levels)
        num_frames = check_frames(config.num_frames if num_frames is None else num_frames, self.model.unet.max_frames)
        num_inference_steps = check_steps(num_inference_steps)
        inversion_steps = check_steps(num_inference_steps if inversion_steps is None else inversion_steps,
                                      "inversion steps")
        guidance_scale = check_guidance(guidance_scale)
        height, width = check_size(height or config.height, width or config.width)
        content_scale = check_content_scale(content_scale)
        start, end = check_prior_weights(
            config.inversion_start if inversion_start is None else inversion_start,
            config.inversion_end if inversion_end is None else inversion_end,
        )
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else check_seed(seed)
        if decode_chunk_size is None:
            decode_chunk_size = 1 if self.low_memory else DECODE_CHUNK_SIZE
        elif not isinstance(decode_chunk_size, int) or decode_chunk_size < 1:
            raise InvalidInputError(f"decode chunk size must be 1 or more frames, not {decode_chunk_size!r}")
        if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
            raise InvalidInputError("prompt and negative prompt must be text")
        sampler = make_scheduler(scheduler, self.scheduler_config, config.prediction_type)
        tokenize(self.tokenizer, prompt)  # checks the lengths now, before the photo work
        tokenize(self.tokenizer, negative_prompt, "negative prompt")
        photo = prepare_photo(load_image(image), (height, width))

        guided = guidance_scale > 1
        # Each distinct prompt once: the negative prompt is usually the inversion's empty prompt too.
        prompts = {prompt: "prompt"}
        if guided:
            prompts.setdefault(negative_prompt, "negative prompt")
        if prior_inversion:
            prompts.setdefault("", "prompt")
        with self.visiting(self.text_encoder):
            encoded = {words: self.reweighted_text(words, what) for words, what in prompts.items()}
        text, weights, tokens = encoded[prompt]
        uncond = encoded[negative_prompt][0] if guided else None
        empty = encoded[""][0] if prior_inversion else None
        pixels = photo.pixels.unsqueeze(0)
        with self.visiting(self.model.content_encoder.dinov2):
            content = self.model.encode_content(pixels)
        with self.visiting(self.vae):
            reference = encode_photo(self.vae, pixels).to(self.model.dtype)
        prior = None
        if prior_inversion:
            prior = invert_reference(
                self.model, sampler, num_inference_steps, reference, empty, content, intensity,
                inversion_steps, start, end, callback,
            )
        latents = generate_latents(
            self.model, sampler, text, uncond, content, reference, intensity, num_frames,
            num_inference_steps, guidance_scale, seed, content_scale, prior, callback,
            split_guidance=self.low_memory,
        )
        with self.visiting(self.vae):
            frames = decode_latents(self.vae, latents[0], decode_chunk_size)

        settings = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "intensity": intensity,
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
            "fps": config.fps,
            "model_hashes": self.model_hashes,
            "livephoto_version": __version__,
        }
        return LivePhotoOutput(
            frames=frames,
            token_weights=list(zip(tokens, weights[0, 1 : 1 + len(tokens)].tolist())),
            intensity=measure_intensity(frames, config.intensity_thresholds),
            settings=settings,
            notes=[photo.note] if photo.resized else [],
        )
