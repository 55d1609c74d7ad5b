"""The from-scratch stages before LivePhoto training (the demo model: no pretrained base exists at
tiny size): build the tiny base, train its VAE, pretrain its text encoder, and write the base and
DINOv2 folders that the LivePhoto stage then loads like a pretrained base."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInputError
from .base import build_scratch_base, write_base_folder
from .data import VideoCaptionDataset, load_clip, read_index
from .recipe import TrainConfig
from .resume import atomic_directory
from .run_log import RunLog
from .text_stage import train_text_encoder
from .vae import latent_scaling_factor, train_vae
from .word_tokenizer import write_word_tokenizer


class TimeLimitReached(Exception):
    """The run's time limit came during the from-scratch VAE stage (which checkpointed first)."""


def prepare_scratch_base(config: TrainConfig, output_dir: Path, dataset: VideoCaptionDataset, log: RunLog,
                         out_of_time: Callable[[], bool]) -> None:
    """Build the tiny base (or take a bundled model's image side: scratch.images_from), train its VAE
    (kept in <output_dir>/vae, so a run stopped later does not train it again), pretrain its text
    encoder, and write <output_dir>/base and <output_dir>/dinov2 (atomically). Raises TimeLimitReached
    when `out_of_time()` stops the VAE stage."""
    scratch = build_scratch_base(config)
    log({"event": "scratch_base", "parameters": {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (("unet", scratch.unet), ("vae", scratch.vae), ("text_encoder", scratch.text_encoder),
                             ("dinov2", scratch.dinov2))}},
        "from scratch: the VAE, then the text encoder" if not scratch.vae_trained
        else f"from {config.scratch.images_from}'s UNet, VAE and DINOv2: pretraining a text encoder")
    vae_dir = output_dir / "vae"
    if scratch.vae_trained:
        log({"event": "vae_loaded", "path": config.scratch.images_from},
            f"VAE: trained before, from {config.scratch.images_from}")
    elif vae_dir.is_dir():
        from diffusers import AutoencoderKL

        scratch.vae = AutoencoderKL.from_pretrained(vae_dir)
        log({"event": "vae_loaded", "path": str(vae_dir)}, f"VAE: trained before, loaded from {vae_dir}")
    else:
        if not train_scratch_vae(config, scratch.vae, dataset, log, output_dir / "vae_checkpoints", out_of_time):
            raise TimeLimitReached
        with atomic_directory(vae_dir) as folder:
            scratch.vae.save_pretrained(folder)
    if config.text_stage.steps:
        started = time.perf_counter()
        separation = train_text_encoder(
            scratch.text_encoder, scratch.tokenizer, text_batches(dataset, config), config.data.num_frames,
            config.text_stage, config.seed,
            lambda r: log(r, f"text stage step {r['step']}/{config.text_stage.steps}: loss {r['loss']:.4f}, "
                             f"separation {', '.join(f'{v:.2f}' for v in r['separation'].values())}"),
        )
        log({"event": "text_stage_done", "separation": separation, "seconds": time.perf_counter() - started},
            "text encoder pretrained: " + "; ".join(f"{k}: {v:.2f}" for k, v in separation.items()))
    with atomic_directory(output_dir / "base") as folder:
        write_base_folder(folder, scratch.unet, scratch.vae, scratch.text_encoder, scratch.scheduler_config)
        write_word_tokenizer(folder / "tokenizer", scratch.words)
    with atomic_directory(output_dir / "dinov2") as folder:
        scratch.dinov2.eval().save_pretrained(folder)


def train_scratch_vae(config: TrainConfig, vae, dataset: VideoCaptionDataset, log: RunLog, checkpoints: Path,
                      out_of_time: Callable[[], bool]) -> bool:
    """The VAE stage: train `vae` in place and set its latent scaling factor; False when the time
    limit stopped it (see train_vae)."""
    started = time.perf_counter()
    eval_frames, split = vae_eval_frames(config, dataset)
    psnr = train_vae(
        vae, lambda start: vae_batches(dataset, config, start=start), config.vae, config.seed,
        lambda r: log(r, f"VAE step {r['step']}/{config.vae.steps}: loss {r['loss']:.4f}, {split} PSNR "
                         f"{r['psnr']:.2f} dB ({r['seconds']:.0f} s)" if "psnr" in r
                      else f"VAE: resuming at step {r['step']}"),
        eval_frames, checkpoints, out_of_time,
    )
    if psnr is None:
        return False
    with torch.no_grad():
        frames = next(vae_batches(dataset, config, clips=min(len(dataset), 64)))
        scaling = latent_scaling_factor(vae, frames)
    vae.register_to_config(scaling_factor=scaling)
    log({"event": "vae_done", "psnr": psnr, "psnr_frames": split, "scaling_factor": scaling,
         "seconds": time.perf_counter() - started},
        f"VAE: reconstruction PSNR {psnr:.2f} dB on {len(eval_frames)} {split} frames, latent scaling factor "
        f"{scaling:.4f}")
    return True


def text_batches(dataset: VideoCaptionDataset, config: TrainConfig):
    """(frames [B, F, 3, H, W] in [-1, 1], captions) of text_stage.clips_per_batch clips, in seeded order."""
    clips = config.text_stage.clips_per_batch
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        order = np.random.default_rng([config.seed, epoch, 2]).permutation(len(dataset)).tolist()
        batches = [order[i : i + clips] for i in range(0, len(order) - clips + 1, clips)]
        if not batches:
            raise InvalidInputError(f"the text stage needs at least {clips} usable videos")
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=config.data.loader_workers)
        for batch in loader:
            yield batch["frames"], list(batch["caption"])
        epoch += 1


def vae_batches(dataset: VideoCaptionDataset, config: TrainConfig, clips: int | None = None, start: int = 0):
    """Frames [N, 3, H, W] in [-1, 1]: vae.frames_per_clip random frames of each of `clips` clips per
    batch (many scenes per batch, few decodes), from the `start`-th batch on. Clips are visited in a
    seeded order per epoch and each batch draws its frames from its own seeded generator, so the
    k-th batch is the same whether the stage ran through or resumed there."""
    clips = clips or config.vae.clips_per_batch
    batches_per_epoch = len(dataset) // clips
    if not batches_per_epoch:
        raise InvalidInputError(f"the VAE stage needs at least {clips} usable videos")
    epoch, offset = divmod(start, batches_per_epoch)
    while True:
        dataset.set_epoch(epoch)
        order = np.random.default_rng([config.seed, epoch, 1]).permutation(len(dataset)).tolist()
        batches = [order[i * clips : (i + 1) * clips] for i in range(offset, batches_per_epoch)]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=config.data.loader_workers)
        for index, batch in enumerate(loader, start=offset):
            rng = np.random.default_rng([config.seed, epoch, 1, index])
            frames = batch["frames"]  # [clips, F, 3, H, W]
            picks = min(config.vae.frames_per_clip, frames.shape[1])
            chosen = torch.from_numpy(np.stack([rng.choice(frames.shape[1], picks, replace=False) for _ in frames]))
            yield frames[torch.arange(len(frames))[:, None], chosen].flatten(0, 1)
        epoch, offset = epoch + 1, 0


def vae_eval_frames(config: TrainConfig, dataset: VideoCaptionDataset) -> tuple[np.ndarray, str]:
    """Up to vae.psnr_frames frames (uint8 [N, H, W, 3]) to measure the VAE on: held-out ones from the
    validation index, else (saying so) training frames."""
    frames, split = [], "held-out"
    if config.data.validation_index is not None:
        for entry in read_index(config.data.validation_index, config.data.root):
            if sum(len(f) for f in frames) >= config.vae.psnr_frames:
                break
            with contextlib.suppress(Exception):  # an unreadable held-out video: take the next one
                frames.append(load_clip(entry.path, dataset.sampling))
    if not frames:
        split = "training"
        for index in range(len(dataset)):
            if sum(len(f) for f in frames) >= config.vae.psnr_frames:
                break
            clip = dataset[index]["frames"]
            frames.append(((clip.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(frames)[: config.vae.psnr_frames], split
