"""Content encoder (paper §3.3): DINOv2 tokens of the photo, injected by new cross-attention layers.

The photo's CLS + patch tokens from a frozen DINOv2 are projected to the UNet's cross-attention
width by one Linear. Each SD cross-attention layer (attn2) gets a parallel, decoupled attention
over those tokens whose output projection starts at zero, so an untrained model is exactly SD.
The content tokens ride at the end of ``encoder_hidden_states``; the processor splits them off.
The content scale is an argument of each UNet call (``cross_attention_kwargs``), never processor
state, so one model serves calls at different scales at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from ..defaults import DEFAULT_CONTENT_SCALE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ContentEncoder(nn.Module):
    """Frozen DINOv2 + trainable projection: photo pixels -> content tokens."""

    def __init__(self, dinov2: nn.Module, cross_attention_dim: int, image_size: int = 224):
        super().__init__()
        self.dinov2 = dinov2.eval().requires_grad_(False)
        self.image_size = image_size
        self.proj = nn.Linear(dinov2.config.hidden_size, cross_attention_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.dinov2.eval()  # frozen: no dropout, whatever the caller's mode
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] in 0..1 -> tokens [B, 1 + (size/patch)^2, cross_attention_dim]."""
        return self.project(self.features(pixels))

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen half: pixels [B, 3, H, W] in 0..1 -> DINOv2's last hidden states [B, N, hidden]
        (what training's latent cache stores, since the projection trains)."""
        pixels = F.interpolate(
            pixels.float(), size=(self.image_size, self.image_size), mode="bicubic", antialias=True, align_corners=False
        ).clamp(0, 1)
        pixels = ((pixels - self.mean) / self.std).to(self.dinov2.dtype)
        return self.dinov2(pixel_values=pixels).last_hidden_state

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The trained half: DINOv2 hidden states -> content tokens."""
        return self.proj(features.to(self.proj.weight.dtype))


class ContentKeyValues:
    """The content tokens' keys and values in every content-attention layer, projected once per loop.

    The photo's content tokens are the same at every step, in both rows of guidance, in every window of
    a long video and whatever the content scale, so each layer projects them once, from one row, and
    keeps them for the rest of the loop: per UNet call that saves projecting them for every context
    row. It serves only contexts whose rows all carry the same content tokens (``build_conditioning``
    makes them so, with one of these per conditioning: a render's inversion and its sampling each have
    their own); a training batch of different photos uses none. It holds no setting, and one loop's
    calls run one after another.
    """

    def __init__(self):
        self.projected: dict[ContentAttnProcessor, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, processor: ContentAttnProcessor, content: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`processor`'s keys and values of the content tokens, [1, N, inner] each, projected from
        `content` [rows, N, D] the first time."""
        if processor not in self.projected:
            first = content[:1]
            self.projected[processor] = processor.to_k(first), processor.to_v(first)
        return self.projected[processor]


class ContentAttnProcessor(nn.Module):
    """SD cross-attention over text plus a decoupled attention over content tokens.

    ``encoder_hidden_states`` is ``[text tokens ; content tokens]`` with exactly ``num_content_tokens``
    content tokens at the end. Output = attn2(text) + content_scale * to_out(attention(q, content)).

    It has one row per frame, or one row per video shared by that video's frames (fewer rows than
    ``hidden_states``, which are frame-major): then the keys and values are projected once per video
    rather than once per frame, and each video's frames attend to them as one long query sequence.
    The result is the same; per step it saves projecting (text + content) tokens for every frame.
    Given a loop's ``ContentKeyValues``, every row's queries attend to its one row of content keys
    and values as one sequence, and the content tokens are projected once per loop.
    """

    def __init__(self, attn: nn.Module, num_content_tokens: int):
        super().__init__()
        if attn.residual_connection or attn.rescale_output_factor != 1.0 or attn.group_norm is not None:
            raise ValueError("ContentAttnProcessor supports SD-style cross-attention only")
        cross_dim = attn.to_k.in_features
        self.num_content_tokens = num_content_tokens
        self.to_k = nn.Linear(cross_dim, attn.inner_dim, bias=False)
        self.to_v = nn.Linear(cross_dim, attn.inner_dim, bias=False)
        self.to_out = nn.Linear(attn.inner_dim, attn.out_dim)
        with torch.no_grad():
            # Start from the text projections (as IP-Adapter does) so the new branch attends sensibly,
            # and from a zero output so that it changes nothing until trained.
            self.to_k.weight.copy_(attn.to_k.weight)
            self.to_v.weight.copy_(attn.to_v.weight)
            self.to_out.weight.zero_()
            self.to_out.bias.zero_()

    # __call__, not forward: diffusers' Attention hands a processor only the keyword arguments its
    # __call__ names (here content_scale and content_kv, from the UNet call's cross_attention_kwargs).
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 content_scale=DEFAULT_CONTENT_SCALE, content_kv: ContentKeyValues | None = None):
        if attention_mask is not None:
            raise ValueError("ContentAttnProcessor does not take an attention mask (SD-1.5 uses none)")
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] <= self.num_content_tokens:
            raise ValueError(
                f"LivePhoto cross-attention needs text tokens followed by {self.num_content_tokens} content tokens"
            )
        rows, tokens, _ = hidden_states.shape
        videos = encoder_hidden_states.shape[0]
        if rows % videos:
            raise ValueError(f"{videos} context rows cannot be shared by {rows} frames")
        text = encoder_hidden_states[:, : -self.num_content_tokens]
        content = encoder_hidden_states[:, -self.num_content_tokens :]
        heads = attn.heads

        def split_heads(x, groups):
            return x.view(groups, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        def merge_heads(x):
            return x.transpose(1, 2).reshape(-1, x.shape[1] * x.shape[-1])

        # Frame-major rows: a video's frames are consecutive, so this view puts their queries side by side.
        query = attn.to_q(hidden_states.reshape(videos, -1, hidden_states.shape[-1]))
        text_out = F.scaled_dot_product_attention(
            split_heads(query, videos), split_heads(attn.to_k(text), videos), split_heads(attn.to_v(text), videos)
        )
        out = attn.to_out[1](attn.to_out[0](merge_heads(text_out)))  # [rows * tokens, out]
        if content_scale != 0:
            if content_kv is None:
                key, value = self.to_k(content), self.to_v(content)
            else:
                key, value = content_kv.get(self, content)
            groups = key.shape[0]  # one per video, or one for all rows when the render's projection is shared
            content_out = F.scaled_dot_product_attention(
                split_heads(query, groups), split_heads(key, groups), split_heads(value, groups)
            )
            # out + content_scale * to_out(content_out) as one GEMM that adds onto out, and the scaled bias:
            # no scaled copy of the branch's output and no separate sum over the whole activation.
            out = torch.addmm(out, merge_heads(content_out), self.to_out.weight.t(), alpha=content_scale)
            out = out.add_(self.to_out.bias, alpha=content_scale)
        return out.reshape(rows, tokens, -1)


class SpatialSelfAttnProcessor(AttnProcessor2_0):
    """SD's own self-attention (attn1), unchanged. A transformer block hands its cross_attention_kwargs
    to attn1 as well as attn2; this processor takes the content scale and leaves it unused, where
    diffusers' would log a warning on every call. The same for a loop's content keys and values."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 content_scale=DEFAULT_CONTENT_SCALE, content_kv=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
