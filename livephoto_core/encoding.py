"""The edges of a render: prompts through CLIP's tokenizer and text encoder, photos into the VAE's
latent space and frames back out of it.

LivePhotoPipeline and the trainer use these with their own CLIP and VAE; the ComfyUI nodes leave
this work to ComfyUI's CLIPTextEncode, VAEEncode and VAEDecode.
"""

from __future__ import annotations

import torch

from .checks import check_prompt_tokens
from .defaults import CLIP_CONTEXT

DECODE_CHUNK_SIZE = 2  # frames the VAE decodes at once: ~0.2 GB each in fp32 at 256x256, no faster in bigger batches


def tokenize(tokenizer, prompt: str, what: str = "prompt") -> tuple[torch.Tensor, list[str]]:
    """-> input ids [1, 77] and the prompt's own tokens (without start, end and padding)."""
    # Not verbose: the tokenizer would warn of "indexing errors" before the clear refusal below.
    ids = tokenizer(prompt, truncation=False, verbose=False).input_ids
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
