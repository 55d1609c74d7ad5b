"""The VAE stage of from-scratch training: fit a small AutoencoderKL to the training frames.

Loss per batch of frames x in [-1, 1]: l1 |x - x'| + l2 (x - x')^2 (means over pixels) + kl KL(q(z|x)
|| N(0, I)) (summed over the latent, averaged over frames, as in LDM's VAE), with z sampled from the
posterior. Its reconstruction bounds every frame the LivePhoto model can produce, frame 0 included,
so the stage reports PSNR on held-out frames (posterior mode, as inference encodes the photo).

The stage can take an hour on a CPU, so it keeps its own checkpoints (the weights, the optimizer,
the LR schedule and the sampling generator, every ``checkpoint_every`` steps and when the run's
time limit comes) and continues from the newest one exactly where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..encoding import decode_latents, encode_photo
from .resume import list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint
from .recipe import VaeConfig


def vae_loss(vae, pixels: torch.Tensor, config: VaeConfig, generator: torch.Generator) -> torch.Tensor:
    posterior = vae.encode(pixels).latent_dist
    reconstruction = vae.decode(posterior.sample(generator=generator)).sample
    return (
        config.l1_weight * F.l1_loss(reconstruction, pixels)
        + config.l2_weight * F.mse_loss(reconstruction, pixels)
        + config.kl_weight * posterior.kl().mean()
    )


def train_vae(
    vae,
    batches_from: Callable[[int], Iterator[torch.Tensor]],
    config: VaeConfig,
    seed: int,
    log: Callable[[dict], None],
    eval_frames: np.ndarray,
    checkpoints: Path,
    out_of_time: Callable[[], bool] = lambda: False,
) -> float | None:
    """Train `vae` in place for config.steps steps on batches of frames [N, 3, H, W] in [-1, 1]
    (`batches_from(k)` yields them from the k-th on); log the loss and the reconstruction PSNR of
    `eval_frames` (uint8 [N, H, W, 3]) every config.log_every steps; return the final PSNR, or None
    when `out_of_time()` stopped it (after a checkpoint in `checkpoints`, which the next call resumes)."""
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, config.warmup_steps, config.steps))
    generator = torch.Generator().manual_seed(seed)
    done = 0
    if list_checkpoints(checkpoints):
        checkpoint = load_checkpoint(list_checkpoints(checkpoints)[-1][1])
        vae.load_state_dict(checkpoint.trainable)
        optimizer.load_state_dict(checkpoint.optimizer)
        schedule.load_state_dict(checkpoint.state["lr_scheduler"])
        generator.set_state(torch.tensor(checkpoint.state["generator"], dtype=torch.uint8))
        done = checkpoint.step
        log({"event": "vae_resumed", "step": done})

    def save(step: int) -> None:
        state = {"lr_scheduler": schedule.state_dict(), "generator": generator.get_state().tolist()}
        save_checkpoint(checkpoints, step, vae.state_dict(), None, optimizer.state_dict(), state)
        prune_checkpoints(checkpoints, 1)

    started, total = time.perf_counter(), 0.0
    psnr = None
    batches = batches_from(done)
    for step in range(done + 1, config.steps + 1):
        loss = vae_loss(vae, next(batches), config, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.item()
        if step % config.log_every == 0 or step == config.steps:
            count = (step - 1) % config.log_every + 1
            psnr = reconstruction_psnr(vae.eval(), eval_frames)
            vae.train()
            log({"event": "vae", "step": step, "loss": total / count, "psnr": psnr, "seconds": time.perf_counter() - started})
            total = 0.0
        if step % config.checkpoint_every == 0 and step < config.steps:
            save(step)
        if out_of_time() and step < config.steps:
            save(step)
            return None
    vae.eval().requires_grad_(False)
    return psnr if psnr is not None else reconstruction_psnr(vae, eval_frames)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor: linear warm-up over `warmup_steps`, then a cosine from 1 down to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))


@torch.no_grad()
def latent_scaling_factor(vae, frames: torch.Tensor) -> float:
    """1 / std of the unscaled posterior-mode latents of `frames` [N, 3, H, W] in [-1, 1] (LDM's rule)."""
    latents = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in frames.split(64)])
    return 1.0 / latents.float().std().item()


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """Mean over frames of the PSNR (data range 1) of [N, ...] images in 0..1."""
    mse = ((reference.double() - estimate.double()) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse)).mean())


@torch.no_grad()
def reconstruction_psnr(vae, frames: torch.Tensor) -> float:
    """PSNR of encode (posterior mode) then decode, exactly as the pipeline does it, on frames
    [N, H, W, 3] uint8."""
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255
    decoded = torch.cat([decode_latents(vae, encode_photo(vae, chunk)) for chunk in pixels.split(64)])
    return psnr(pixels.permute(0, 2, 3, 1), decoded)
