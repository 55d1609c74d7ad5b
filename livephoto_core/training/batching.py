"""What one training step reads: the clips of a micro-batch (ClipStream), each clip's own random
stream (noise, timestep, text dropout), and the frozen encoders' latents, text embeddings and
DINOv2 features (FrozenEncoders, memoised when the config caches them; or read from the latent
cache, latent_cache.py, which stores the same calls' outputs)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..defaults import CLIP_CONTEXT
from ..encoding import encode_photo, encode_text
from ..errors import InvalidInputError
from .data import VideoCaptionDataset
from .latent_cache import LatentCacheDataset
from .shards import ShardStream


TRAINING_STREAM, HELDOUT_STREAM = 0, 1


def clip_generator(seed: int, epoch: int, position: int, stream: int = TRAINING_STREAM) -> torch.Generator:
    """The generator of one training clip: its noise, timestep and text dropout.

    `position` is the clip's place in the epoch's visiting order, whichever process and batch it
    lands in, so batch_size x gradient_accumulation_steps x processes can be split any way and the
    same clips get the same noise.
    """
    high, low = np.random.SeedSequence([seed, stream, epoch, position]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(high) << 32 | int(low))


def draw_timestep(generator: torch.Generator, num_train_timesteps: int, high_noise_fraction: float,
                  high_noise_from: int) -> torch.Tensor:
    """One clip's timestep [1]: uniform, or with probability high_noise_fraction uniform over
    [high_noise_from, T). Without a high-noise share it makes exactly the draw it always made."""
    if high_noise_fraction and torch.rand(1, generator=generator).item() < high_noise_fraction:
        return torch.randint(high_noise_from, num_train_timesteps, (1,), generator=generator)
    return torch.randint(0, num_train_timesteps, (1,), generator=generator)


def denoising_target(scheduler, prediction_type: str, latents: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict from the noised latents: the noise, or the velocity."""
    if prediction_type == "epsilon":
        return noise
    return scheduler.get_velocity(latents, noise, timesteps)


def tokenize_captions(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids [B, 77], padded as the pipeline pads a prompt; captions longer than CLIP's window are cut."""
    return tokenizer(
        captions, padding="max_length", max_length=CLIP_CONTEXT, truncation=True, return_tensors="pt"
    ).input_ids


class FrozenEncoders:
    """The frozen encoders' outputs, one clip or caption at a time, optionally memoised.

    Memoising is exact: a clip is encoded by the same call whether its result is then cached or
    not, and the VAE latent is the posterior mode (no sampling), as inference encodes the photo.
    `content_encoder` is the model's (modules.content.ContentEncoder): its frozen DINOv2 half runs here.
    """

    def __init__(self, vae, text_encoder, tokenizer, content_encoder, device, cache_latents: bool, cache_text: bool):
        self.vae, self.text_encoder, self.tokenizer, self.device = vae, text_encoder, tokenizer, device
        self.content_encoder = content_encoder
        self.latents: dict[bytes, torch.Tensor] | None = {} if cache_latents else None
        self.text: dict[str, torch.Tensor] | None = {} if cache_text else None

    @torch.no_grad()
    def clip_latents(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, F, 3, H, W] in [-1, 1] -> scaled latents [B, F, 4, h, w] (float32)."""
        out = []
        for clip in frames:
            key = None if self.latents is None else hashlib.blake2b(clip.numpy().tobytes(), digest_size=16).digest()
            latent = None if key is None else self.latents.get(key)
            if latent is None:
                latent = encode_photo(self.vae, (clip.to(self.device) + 1) / 2).float()
                if key is not None:
                    self.latents[key] = latent
            out.append(latent)
        return torch.stack(out)

    @torch.no_grad()
    def text_embeddings(self, captions: list[str]) -> torch.Tensor:
        """captions -> CLIP embeddings [B, 77, D]."""
        out = []
        for caption in captions:
            embedding = None if self.text is None else self.text.get(caption)
            if embedding is None:
                embedding = encode_text(self.text_encoder, tokenize_captions(self.tokenizer, [caption]))[0]
                if self.text is not None:
                    self.text[caption] = embedding
            out.append(embedding)
        return torch.stack(out)

    def content_features(self, reference: torch.Tensor) -> torch.Tensor:
        """reference frames [B, 3, H, W] in [-1, 1] -> DINOv2 hidden states [B, N, hidden] (float32)."""
        return reference_features(self.content_encoder, reference.to(self.device))


@torch.no_grad()
def reference_features(content_encoder, reference: torch.Tensor) -> torch.Tensor:
    """The frozen DINOv2 half of the content encoder on reference frames [B, 3, H, W] in [-1, 1] ->
    hidden states [B, N, hidden] (float32): what the latent cache stores and training projects. Outside
    any autocast, so a run that reads the cache and one that encodes as it goes see the same features."""
    with torch.autocast(reference.device.type, enabled=False):
        return content_encoder.features((reference + 1) / 2).float()


class ClipStream:
    """This process's micro-batches.

    From a VideoCaptionDataset: epoch e visits the videos in the order
    ``default_rng([seed, e]).permutation``: micro-step k on process r (of `world`) reads the clips at
    places (k * batch_size + b) * world + r, b < batch_size, of that order; an epoch ends before the
    first micro-step that would run past its end.

    From a ShardStream: the stream deals epoch e's shards over processes and workers, and every
    process takes ``batches_per_rank(e)`` micro-steps; the places (for each clip's noise) are
    numbered as above.
    """

    def __init__(self, dataset: VideoCaptionDataset | LatentCacheDataset | ShardStream, batch_size: int, seed: int,
                 rank: int, world: int, workers: int):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world, self.workers = rank, world, workers
        if isinstance(dataset, ShardStream):
            dataset.split(batch_size, rank, world, workers)
        elif len(dataset) < batch_size * world:
            raise InvalidInputError(
                f"{len(dataset)} usable videos do not fill one batch of {batch_size} on each of {world} "
                f"process(es); lower batch_size or add videos"
            )

    def batches(self, epoch: int) -> int:
        """Micro-steps of this process in `epoch`."""
        if isinstance(self.dataset, ShardStream):
            return self.dataset.batches_per_rank(epoch)
        return len(self.dataset) // (self.batch_size * self.world)

    def positions(self, batch: int) -> list[int]:
        return [(batch * self.batch_size + b) * self.world + self.rank for b in range(self.batch_size)]

    def __call__(self, start_micro_step: int):
        """Yield (epoch, positions, batch) for every micro-step from `start_micro_step` on, without end."""
        epoch, offset = 0, start_micro_step
        while offset >= self.batches(epoch):
            offset, epoch = offset - self.batches(epoch), epoch + 1
        while True:
            places = [self.positions(k) for k in range(offset, self.batches(epoch))]
            if isinstance(self.dataset, ShardStream):
                self.dataset.start(epoch, offset)
                loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size,
                                                     num_workers=self.workers)
            else:
                self.dataset.set_epoch(epoch)
                order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
                loader = torch.utils.data.DataLoader(
                    self.dataset, batch_sampler=[order[p].tolist() for p in places], num_workers=self.workers
                )
            for positions, batch in zip(places, loader):
                yield epoch, positions, batch
            epoch, offset = epoch + 1, 0
