"""The LivePhoto-Wan2.1 network: diffusers' WanTransformer3DModel plus the two LivePhoto additions.

The additions follow the authors' ``WanModelPusa`` (LivePhoto-Wan2.1/PusaV1/diffsynth/models/wan_video_pusa.py):

- ``motion_intensity_embed``: Embedding(7, 2 * text_dim). Level k gives two text-width tokens; level 0 is the
  null level the guidance contrasts with.
- ``text_reweight``: the umT5 tokens attend to those two tokens through two residual cross-attention layers,
  and the result is blended in by a learned gate, before the DiT's own text projection.

Their parameter names are kept as the released file has them, so those keys load without renaming.
Pusa's per-frame timesteps reach diffusers' transformer as one timestep per token (its Wan2.2 TI2V path),
which computes the same per-frame modulation the authors' code broadcasts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The authors' TextReweight fixes these; they are not in the file's shapes.
REWEIGHT_HEADS = 8
REWEIGHT_EPS = 1e-6
INTENSITY_TOKENS = 2  # motion_intensity_embed's width is INTENSITY_TOKENS * text_dim


class RMSNorm(nn.Module):
    """The authors' RMSNorm: normalised in float32, cast back, then scaled (the order matters in bf16)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


class ReweightAttention(nn.Module):
    """One of TextReweight's cross-attention layers (the authors' ``CrossAttention`` without image input):
    q/k/v/o Linear with bias, RMSNorm over the full width on q and k, no mask, no rotary embedding."""

    def __init__(self, dim: int, heads: int = REWEIGHT_HEADS, eps: float = REWEIGHT_EPS):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q, k, v = self.norm_q(self.q(x)), self.norm_k(self.k(context)), self.v(context)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o(out.transpose(1, 2).flatten(2))


class TextReweight(nn.Module):
    """Condition the umT5 tokens on the intensity tokens: x = prompt; x += attn_0(ln0_1(x)); x += attn_1(ln1_1(x));
    out = (1 - a) * prompt + a * ln0_0(x), a = clamp(relu(warmup), 0, 1). With ``warmup`` <= 0 it is the identity.
    There is no mask, so padding tokens change too, as in the authors' code."""

    def __init__(self, text_dim: int):
        super().__init__()
        self.cross_attn_0 = ReweightAttention(text_dim)
        self.cross_attn_1 = ReweightAttention(text_dim)
        self.ln0_0 = nn.LayerNorm(text_dim, eps=REWEIGHT_EPS)
        self.ln0_1 = nn.LayerNorm(text_dim, eps=REWEIGHT_EPS)
        self.ln1_1 = nn.LayerNorm(text_dim, eps=REWEIGHT_EPS)
        self.warmup = nn.Parameter(torch.tensor(-9.0))

    def forward(self, prompt: torch.Tensor, intensity_tokens: torch.Tensor) -> torch.Tensor:
        x = prompt
        x = x + self.cross_attn_0(self.ln0_1(x), intensity_tokens)
        x = x + self.cross_attn_1(self.ln1_1(x), intensity_tokens)
        gate = torch.clamp(F.relu(self.warmup), 0.0, 1.0)
        return (1 - gate) * prompt + gate * self.ln0_0(x)


def transformer_config(
    dim: int, num_heads: int, in_channels: int, out_channels: int, text_dim: int, freq_dim: int, ffn_dim: int,
    num_layers: int, patch_size: tuple[int, int, int], eps: float = 1e-6,
) -> dict[str, Any]:
    """diffusers' WanTransformer3DModel config for a text-to-video Wan2.1 DiT of these sizes."""
    return {
        "patch_size": tuple(patch_size), "num_attention_heads": num_heads, "attention_head_dim": dim // num_heads,
        "in_channels": in_channels, "out_channels": out_channels, "text_dim": text_dim, "freq_dim": freq_dim,
        "ffn_dim": ffn_dim, "num_layers": num_layers, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
        "eps": eps, "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
    }


class LivePhotoWan(nn.Module):
    """velocity = model(latents, frame_timesteps, text, intensity).

    latents: (B, C, F, H, W) VAE latents; frame_timesteps: (B, F), one timestep (0..1000) per latent frame;
    text: (B, L, text_dim) umT5 embeddings, zero past each prompt's end; intensity: (B,) levels, 0 the null level.
    """

    def __init__(self, config: dict[str, Any], intensity_levels: int = 7):
        super().__init__()
        from diffusers import WanTransformer3DModel

        if config["patch_size"][0] != 1:  # the authors give each latent frame its own timestep
            raise ValueError(f"LivePhoto-Wan needs a temporal patch size of 1, got {config['patch_size'][0]}")
        self.transformer = WanTransformer3DModel(**config)
        text_dim = config["text_dim"]
        self.motion_intensity_embed = nn.Embedding(intensity_levels, INTENSITY_TOKENS * text_dim)
        self.text_reweight = TextReweight(text_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.motion_intensity_embed.weight.dtype

    def condition_text(self, text: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        """The umT5 tokens after the intensity-conditioned re-weighting (what the DiT's text projection sees)."""
        tokens = self.motion_intensity_embed(intensity.to(torch.int64).reshape(-1))
        tokens = tokens.to(text.dtype).reshape(tokens.shape[0], INTENSITY_TOKENS, -1)
        return self.text_reweight(text, tokens)

    def forward(
        self, latents: torch.Tensor, frame_timesteps: torch.Tensor, text: torch.Tensor, intensity: torch.Tensor
    ) -> torch.Tensor:
        dtype = self.dtype
        _, _, frames, height, width = latents.shape
        _, patch_h, patch_w = self.transformer.config.patch_size
        if frame_timesteps.shape[-1] != frames:
            raise ValueError(f"{frame_timesteps.shape[-1]} timesteps for {frames} latent frames")
        context = self.condition_text(text.to(dtype), intensity)
        # Every token of a frame shares the frame's timestep: diffusers embeds one per token.
        token_timesteps = frame_timesteps.repeat_interleave((height // patch_h) * (width // patch_w), dim=1)
        return self.transformer(
            latents.to(dtype), timestep=token_timesteps.to(dtype), encoder_hidden_states=context, return_dict=False
        )[0]
