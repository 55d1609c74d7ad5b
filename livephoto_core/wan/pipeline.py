"""Photo + prompt + intensity -> frames with LivePhoto-Wan2.1: umT5 and the Wan VAE around the DiT and the sampler.

The text encoder, tokenizer and VAE come from Wan2.1-T2V-1.3B in diffusers layout (the hub's
``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``: text_encoder/, tokenizer/, vae/ as safetensors), the same weights the
authors load from Wan's original .pth files, which this package does not read (they are pickles).

Memory: umT5-XXL is ~11 GB in bf16, so both prompts are encoded first and the encoder is freed before the
DiT (1.3B + 134M LivePhoto parameters) is loaded. Steps follow the authors' pipeline (``sampling``).
"""

from __future__ import annotations

import gc
import html
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError, ModelFileError
from . import sampling
from .defaults import WAN_DEFAULT_ALPHA, WAN_DEFAULT_FRAMES as DEFAULT_FRAMES, WAN_DEFAULT_HEIGHT as DEFAULT_HEIGHT
from .defaults import WAN_DEFAULT_INTENSITY as DEFAULT_INTENSITY, WAN_DEFAULT_WIDTH as DEFAULT_WIDTH, WAN_FPS as FPS
from .defaults import WAN_MAX_ALPHA, WAN_MAX_INTENSITY as MAX_INTENSITY, WAN_MIN_ALPHA
from .defaults import WAN_MIN_INTENSITY as MIN_INTENSITY

TEXT_LENGTH = 512  # umT5 tokens the authors encode (padded to, and truncated at)
TEMPORAL_FACTOR, SPATIAL_FACTOR, SIZE_MULTIPLE = 4, 8, 16
# The authors' sample.sh negative prompt (Wan's standard one).
DEFAULT_NEGATIVE = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall "
    "gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, "
    "poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three "
    "legs, many people in the background, walking backwards"
)
FOLDER_PARTS = ("text_encoder", "tokenizer", "vae")


def check_intensity(level) -> int:
    """A LivePhoto-Wan level, 1..6 (0 is the guidance's null level; the SD-1.5 model's 7..10 do not exist here)."""
    try:
        value = int(str(level).strip())
    except ValueError:
        value = None
    if value is None or not MIN_INTENSITY <= value <= MAX_INTENSITY:
        raise InvalidInputError(f"LivePhoto-Wan2.1 takes an intensity from {MIN_INTENSITY} to {MAX_INTENSITY} (one "
                                f"level for the whole video); got {level}")
    return value


def check_lora_alpha(alpha: float) -> float:
    if not WAN_MIN_ALPHA <= alpha <= WAN_MAX_ALPHA:
        raise InvalidInputError(f"--lora-alpha must be {WAN_MIN_ALPHA:g} to {WAN_MAX_ALPHA:g} (the authors use 1.2 to "
                                f"1.4); got {alpha:g}")
    return alpha


def check_wan_frames(num_frames: int) -> int:
    """Frames the Wan VAE makes: 4k + 1 (one photo frame, then 4 per latent frame)."""
    if num_frames < 5 or num_frames % TEMPORAL_FACTOR != 1:
        near = max(5, (num_frames - 1) // TEMPORAL_FACTOR * TEMPORAL_FACTOR + 1)
        raise InvalidInputError(f"LivePhoto-Wan2.1 makes 4k + 1 frames (5, 9, ..., 81); got {num_frames}, try {near}")
    return num_frames


def check_wan_size(height: int, width: int) -> tuple[int, int]:
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height < SIZE_MULTIPLE or width < SIZE_MULTIPLE:
        raise InvalidInputError(f"LivePhoto-Wan2.1 needs a height and width that are multiples of {SIZE_MULTIPLE} "
                                f"(default {DEFAULT_HEIGHT} x {DEFAULT_WIDTH}); got {height} x {width}")
    return height, width


def check_wan_folder(folder: str | os.PathLike, role: str = "--wan-base") -> Path:
    path = Path(folder)
    missing = [part for part in FOLDER_PARTS if not (path / part).is_dir()]
    if not path.is_dir() or missing:
        raise ModelFileError(f"{folder} is not a Wan2.1-T2V-1.3B folder in diffusers layout (missing "
                             f"{', '.join(missing) if path.is_dir() else 'the folder'}); {role} needs the hub's "
                             f"Wan-AI/Wan2.1-T2V-1.3B-Diffusers (its text_encoder, tokenizer and vae)")
    return path


def clean_prompt(text: str) -> str:
    """The authors' 'whitespace' cleaning (html entities, runs of whitespace), without ftfy's mojibake repair."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


def encode_prompts(folder: Path, prompts: list[str], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """umT5 embeddings (1, 512, 4096) of each prompt, zero past its end as the authors' prompter leaves them.
    The encoder is loaded for this and freed after it."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    from ..loading.files import load_pretrained

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    cleaned = [clean_prompt(prompt) for prompt in prompts]
    for what, text in zip(("prompt", "negative prompt"), cleaned):
        length = len(tokenizer(text, verbose=False).input_ids)  # refused below, in words, when too long
        if length > TEXT_LENGTH:
            raise InvalidInputError(f"the {what} is {length} umT5 tokens long; LivePhoto-Wan2.1 reads at most "
                                    f"{TEXT_LENGTH}: shorten it")
    encoder = load_pretrained(UMT5EncoderModel, folder / "text_encoder", "the umT5 text encoder", torch_dtype=dtype)
    encoder.to(device)
    embeddings = []
    with torch.no_grad():
        for text in cleaned:
            tokens = tokenizer(text, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                               return_tensors="pt")
            mask = tokens.attention_mask.to(device)
            hidden = encoder(tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
            embeddings.append(hidden * mask[..., None].to(hidden.dtype))
    del encoder
    free_memory(device)
    return embeddings


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def latent_normalisation(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the Wan VAE's latents, shaped to broadcast over (B, C, F, H, W)."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    return (torch.tensor(vae.config.latents_mean).view(shape), torch.tensor(vae.config.latents_std).view(shape))


def encode_photo(vae, photo, height: int, width: int) -> torch.Tensor:
    """The photo (resized to width x height with LANCZOS, as the authors do) as one normalised latent frame."""
    import numpy as np
    from PIL import Image

    image = photo.convert("RGB").resize((width, height), resample=Image.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) * (2 / 255) - 1).permute(2, 0, 1)
    parameter = next(vae.parameters())
    pixels = pixels[None, :, None].to(parameter.device, parameter.dtype)
    with torch.no_grad():
        latent = vae.encode(pixels).latent_dist.mode()
    mean, std = latent_normalisation(vae)
    return (latent.float().cpu() - mean) / std


def decode_frames(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents (1, C, F, H, W) -> frames [F', H, W, 3] float 0..1 on the CPU."""
    mean, std = latent_normalisation(vae)
    parameter = next(vae.parameters())
    with torch.no_grad():
        video = vae.decode((latents.float().cpu() * std + mean).to(parameter.device, parameter.dtype)).sample
    return ((video[0].float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0)


@dataclass
class WanResult:
    frames: torch.Tensor  # [F, H, W, 3] float 0..1
    settings: dict[str, Any]


def animate_wan(
    photo, prompt: str, *, dit: str | os.PathLike, base_folder: str | os.PathLike, lora: str | os.PathLike | None,
    lora_alpha: float = WAN_DEFAULT_ALPHA, intensity: int = DEFAULT_INTENSITY, negative_prompt: str = DEFAULT_NEGATIVE,
    steps: int = sampling.DEFAULT_STEPS, guidance: float = sampling.DEFAULT_GUIDANCE, num_frames: int = DEFAULT_FRAMES,
    height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH, seed: int = 0, device: str = "cpu",
    dtype: torch.dtype = torch.bfloat16, status: Callable[[str], None] = lambda message: None,
    callback: Callable[[int, int], None] | None = None,
) -> WanResult:
    """Animate ``photo`` (a PIL image) as ``prompt`` says at ``intensity`` 1..6, the authors' way."""
    from diffusers import AutoencoderKLWan

    from ..loading.files import load_pretrained
    from .keys import check_wan_base, load_livephoto_wan

    intensity = check_intensity(intensity)
    check_lora_alpha(lora_alpha)
    check_wan_frames(num_frames)
    check_wan_size(height, width)
    folder = check_wan_folder(base_folder)
    check_wan_base(dit)
    device = torch.device(device)

    status("encoding the prompts with umT5 ...")
    text, negative = encode_prompts(folder, [prompt, negative_prompt], device, dtype)
    status(f"loading {Path(dit).name}" + (f" with {Path(lora).name} at alpha {lora_alpha:g}" if lora else "") + " ...")
    model = load_livephoto_wan(dit, lora, lora_alpha, dtype).to(device)
    vae = load_pretrained(AutoencoderKLWan, folder / "vae", "the Wan VAE", torch_dtype=dtype).to(device)
    vae.enable_tiling()  # the authors decode tiled too: 81 frames at 832 x 480 in one piece take tens of GB
    photo_latent = encode_photo(vae, photo, height, width)
    shape = (1, vae.config.z_dim, (num_frames - 1) // TEMPORAL_FACTOR + 1, height // SPATIAL_FACTOR,
             width // SPATIAL_FACTOR)
    latents = sampling.initial_latents(photo_latent, shape, seed, dtype).to(device)
    latents = sampling.sample(model, latents, text, negative, intensity, steps=steps, guidance=guidance,
                              callback=callback)
    del model
    free_memory(device)
    frames = decode_frames(vae, latents)
    settings = {
        "model": "LivePhoto-Wan2.1", "dit": Path(dit).name, "lora": Path(lora).name if lora else None,
        "lora_alpha": lora_alpha if lora else None, "intensity": intensity, "prompt": prompt,
        "negative_prompt": negative_prompt, "steps": steps, "guidance_scale": guidance, "seed": seed,
        "num_frames": num_frames, "height": height, "width": width, "fps": FPS, "dtype": str(dtype).split(".")[-1],
    }
    return WanResult(frames=frames, settings=settings)
