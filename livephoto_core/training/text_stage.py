"""Text-motion pretraining: the from-scratch text encoder's stand-in for CLIP's own pretraining.

SD-1.5 brings a CLIP text encoder pretrained on captioned images, whose embeddings already tell the
words of a caption apart. A text encoder trained from scratch only through the denoising loss has
no such head start: in the first demo model "moves left" and "moves right" encoded 21 % apart where
"red" and "blue" were 69 % apart, and the denoiser never learned the directions. This stage gives
the toy base a pretrained encoder: a CLIP-style contrastive objective (symmetric InfoNCE) between
each caption's pooled embedding and a small video encoder's embedding of the clip it describes, so
every word that changes the video (left/right/up/down, in/out, colours, shapes) gets an embedding
of its own. The video encoder is thrown away afterwards; the LivePhoto stage then uses the text
encoder as SD-1.5's is used, frozen.

In a batch of toy clips the colour and shape words alone almost always tell the right caption from
the others, so plain InfoNCE learns them and leaves the direction words where they started
(measured: 0.02-0.03 separation after 100 steps, colours 0.19). Each caption therefore also meets
its hard negative, the same caption with its motion words turned into their opposites ("left" ->
"right", "in" -> "out"), as NegCLIP adds word-order negatives (Yuksekgonul et al., ICLR 2023):
only the motion tells those two apart.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..defaults import CLIP_CONTEXT
from .recipe import TextStageConfig
from .vae import warmup_cosine


class ClipEncoder(nn.Module):
    """Frames [B, F, 3, H, W] in [-1, 1] -> one vector per clip.

    The first frame and every later frame's difference from it are stacked as channels: motion is
    what the differences show (measured: with the frames themselves a 4-way direction probe sat at
    chance for 150 steps before it learned), and the first frame says what moves. Two coordinate
    channels let it tell a zoom's outward flow from a translation; strided convolutions and a mean
    over positions follow.
    """

    def __init__(self, num_frames: int, dim: int, width: int = 64, size: int = 32):
        super().__init__()
        self.size = size
        self.net = nn.Sequential(
            nn.Conv2d(3 * num_frames + 2, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
        )
        self.proj = nn.Linear(2 * width, dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, num_frames = frames.shape[:2]
        pixels = F.interpolate(frames.flatten(0, 1), size=(self.size, self.size), mode="area")
        pixels = pixels.reshape(batch, num_frames, 3, self.size, self.size)
        pixels = torch.cat([pixels[:, :1], pixels[:, 1:] - pixels[:, :1]], dim=1).flatten(1, 2)
        grid = torch.linspace(-1, 1, self.size, device=frames.device)
        coords = torch.stack(torch.meshgrid(grid, grid, indexing="ij")).expand(batch, 2, self.size, self.size)
        return self.proj(self.net(torch.cat([pixels, coords], dim=1)).mean(dim=(2, 3)))


# Motion words and their opposites: a caption's hard negative swaps every one it contains.
OPPOSITES = {"left": "right", "right": "left", "up": "down", "down": "up", "in": "out", "out": "in",
             "clockwise": "counterclockwise", "counterclockwise": "clockwise"}


def opposite_caption(caption: str) -> str | None:
    """The caption with its motion words reversed; None when it has none (a still or rotating clip)."""
    words = caption.split()
    swapped = [OPPOSITES.get(w, w) for w in words]
    return " ".join(swapped) if swapped != words else None


class TextVideoContrast(nn.Module):
    """The text encoder, a video encoder and CLIP's learned temperature."""

    def __init__(self, text_encoder: nn.Module, num_frames: int, dim: int):
        super().__init__()
        self.text_encoder = text_encoder
        self.text_proj = nn.Linear(text_encoder.config.hidden_size, dim, bias=False)
        self.video = ClipEncoder(num_frames, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        # The pooled output is the end-of-text token's state, which (causal attention) has read the whole caption.
        return F.normalize(self.text_proj(self.text_encoder(input_ids).pooler_output), dim=-1)

    def forward(self, input_ids: torch.Tensor, frames: torch.Tensor, texts: list[str], batch: int) -> torch.Tensor:
        """input_ids [T, 77] of `texts`: the batch's captions first, then extra negative captions."""
        text = self.embed_text(input_ids)
        video = F.normalize(self.video(frames), dim=-1)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * video @ text.T  # [B, T]
        return contrastive_loss(logits, texts, batch)


def contrastive_loss(logits: torch.Tensor, texts: list[str], batch: int) -> torch.Tensor:
    """Symmetric InfoNCE over clips [B] and texts [T >= B] (the first B are the clips' captions), in
    which every text equal to a clip's caption counts as its match (a batch of toy clips often holds
    "zoom in" twice: pushing those apart would be learning noise). Text -> clip runs over the
    captions only; clip -> text also over the extra negatives."""
    same = torch.tensor([[a == b for b in texts] for a in texts[:batch]], dtype=logits.dtype, device=logits.device)
    targets = same / same.sum(dim=1, keepdim=True)
    clip_to_text = F.cross_entropy(logits, targets)
    text_to_clip = F.cross_entropy(logits[:, :batch].T, targets[:, :batch] / targets[:, :batch].sum(1, keepdim=True))
    return 0.5 * (clip_to_text + text_to_clip)


@torch.no_grad()
def word_separation(text_encoder: nn.Module, tokenizer, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """For each prompt pair, |E(a) - E(b)| / |E(a)| over the whole 77-token embedding the UNet reads."""
    out = {}
    for a, b in pairs:
        ids = tokenizer([a, b], padding="max_length", max_length=CLIP_CONTEXT, return_tensors="pt").input_ids
        first, second = text_encoder(ids.to(text_encoder.device)).last_hidden_state
        out[f"{a} | {b}"] = float((first - second).norm() / first.norm())
    return out


SEPARATION_PAIRS = [("the red circle moves left", "the red circle moves right"),
                    ("the red circle moves up", "the red circle moves down"),
                    ("the camera zooms in", "the camera zooms out"),
                    ("the red circle moves left", "the blue circle moves left")]


def train_text_encoder(
    text_encoder: nn.Module,
    tokenizer,
    batches: Iterator[tuple[torch.Tensor, list[str]]],
    num_frames: int,
    config: TextStageConfig,
    seed: int,
    log: Callable[[dict], None],
) -> dict[str, float]:
    """Train `text_encoder` (in place) on (frames [B, F, 3, H, W], captions) batches; returns the final
    word separations."""
    torch.manual_seed(seed)
    model = TextVideoContrast(text_encoder, num_frames, text_encoder.config.hidden_size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.warmup_steps, config.steps)
    )
    started, losses = time.perf_counter(), []
    for step in range(1, config.steps + 1):
        frames, captions = next(batches)
        texts = captions + [n for n in dict.fromkeys(map(opposite_caption, captions)) if n and n not in captions]
        ids = tokenizer(texts, padding="max_length", max_length=CLIP_CONTEXT, truncation=True,
                        return_tensors="pt").input_ids
        loss = model(ids, frames, texts, len(captions))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % config.log_every == 0 or step == config.steps:
            text_encoder.eval()
            separation = word_separation(text_encoder, tokenizer, SEPARATION_PAIRS)
            text_encoder.train()
            log({"event": "text_stage", "step": step, "loss": float(np.mean(losses)),
                 "separation": separation, "seconds": time.perf_counter() - started})
            losses = []
    text_encoder.eval().requires_grad_(False)
    return word_separation(text_encoder, tokenizer, SEPARATION_PAIRS)
