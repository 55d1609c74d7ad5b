"""The latent cache: the frozen encoders' outputs for every clip training will read, written once.

SD-1.5 mode spends most of a step's frozen work in the VAE encoder (16 frames a clip), then CLIP's
text encoder and DINOv2 (the reference frame). ``build_latent_cache`` (``scripts/cache_latents.py``,
one process or several under ``accelerate launch``) writes, per clip: the VAE latents (posterior
mode times the scaling factor), CLIP's last hidden states of the caption (the frozen input of the
trained reweighter, not its output), DINOv2's last hidden states of frame 0 (the frozen input of the
trained projection), and the clip's SSIM. A run with ``data.latent_cache`` reads these and loads
neither the VAE, nor the text encoder, nor DINOv2's weights.

Which clips. The cached clip of video i in epoch e is ``VideoCaptionDataset``'s item i of epoch e:
the same start (drawn from ``(seed, e, i)``), the same replacement when the video fails, the same
SSIM (measured on those frames, the label rule). So a run from the cache trains on exactly the clips
it would have decoded, and its losses match an uncached run's (tested). With ``random_start`` every
epoch has new starts, so the cache holds ``--epochs`` epochs and a run that needs more is refused
before it starts; without it, the clips are the same every epoch and one epoch is cached. The level
is binned from the cached SSIM by the run's thresholds (a checkpoint's, the config's, or the
labelling pass's, which the cache records).

Format (a folder):

- ``epoch-EEEE/part-PPPPPP.safetensors``: videos [P K, (P + 1) K) of epoch E, K = clips_per_part:
  ``latents`` [k, F, 4, h, w], ``text`` [k, 77, D], ``content`` [k, N, H] in the cache's dtype,
  ``ssim`` float64 [k], ``video`` and ``replaced`` int64 [k]; its metadata names the spec digest.
- ``empty_text.safetensors``: CLIP's hidden states of the empty prompt (``text`` [77, D]), which
  replace a caption with probability ``text_dropout``.
- ``index.json``: the spec (the models' content hashes, the index file's hash, the clip sampling,
  seed, random_start, DINOv2's input size), the shapes, the dtype, the epochs done, the labelling
  pass's thresholds and counts, and DINOv2's config. Written last: a folder without it is a pass
  that has not finished.

Every file is written under a temporary name and renamed when complete; a rerun skips the parts
that exist (after checking their spec), so a killed pass continues, and rerunning with more
``--epochs`` adds epochs. A run whose models, index, sampling or seed differ from the cache's is
refused with the differences named.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import LivePhotoConfig
from ..errors import InvalidInputError
from ..fileio import atomic_write
from ..intensity import level_from_ssim, validate_thresholds
from ..loading.files import content_hash, file_sha256
from .recipe import TrainConfig

logger = logging.getLogger(__name__)

FORMAT = 1
INDEX = "index.json"
EMPTY_TEXT = "empty_text.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def part_path(folder: Path, epoch: int, part: int) -> Path:
    return folder / f"epoch-{epoch:04d}" / f"part-{part:06d}.safetensors"


def tokenizer_source(config: TrainConfig) -> Path | None:
    """The tokenizer folder load_sd15 reads for this config (None: open-clip's installed vocabulary)."""
    if config.model.tokenizer is not None:
        return Path(config.model.tokenizer)
    folder = Path(config.model.base) / "tokenizer"
    return folder if folder.is_dir() else None


def encoder_hashes(config: TrainConfig) -> dict[str, str]:
    """Content hashes of what made the cached tensors, read from the files (no model is loaded): the
    VAE and the text encoder (one hash for both when the base is a single file), the tokenizer's
    files, and DINOv2."""
    base = Path(config.model.base)
    tokenizer = tokenizer_source(config)
    if tokenizer is None:
        tokenizer_hash = "open-clip vocabulary"
    else:  # vocab.json and merges.txt (content_hash covers weights and JSON only)
        digest = hashlib.sha256()
        for file in sorted(p for p in tokenizer.iterdir() if p.is_file()):
            digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
        tokenizer_hash = digest.hexdigest()
    return {
        "vae": content_hash(base / "vae" if base.is_dir() else base),
        "text_encoder": content_hash(base / "text_encoder" if base.is_dir() else base),
        "tokenizer": tokenizer_hash,
        "dinov2": content_hash(config.model.dinov2),
    }


def cache_spec(config: TrainConfig) -> dict:
    """What a cache must have been built with for this config to train on it."""
    data = config.data
    image_size = config.model.livephoto.get("dinov2_image_size", LivePhotoConfig.dinov2_image_size)
    return {
        "format": FORMAT,
        "models": encoder_hashes(config),
        "index_sha256": file_sha256(data.index),
        "clips": {"num_frames": data.num_frames, "stride": data.stride, "size": data.size, "seed": config.seed,
                  "random_start": data.random_start},
        "dinov2_image_size": image_size,
    }


def spec_digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    from .engine import config_changes  # the engine imports this module

    return config_changes(old, new, prefix)


class CachedDinov2(nn.Module):
    """Stands in for DINOv2 in a model trained from the cache: it carries DINOv2's config (the model's
    shapes need it) and no weights; the content tokens' frozen half comes from the cache."""

    def __init__(self, config: dict):
        from transformers import Dinov2Config

        super().__init__()
        self.config = Dinov2Config.from_dict(config)

    def forward(self, *args, **kwargs):
        raise RuntimeError("this model was built for training from a latent cache and has no DINOv2 weights; "
                           "load DINOv2 (loading.dinov2.load_dinov2) to encode photos")


# --- reading ------------------------------------------------------------------------------------


@dataclass
class LatentCache:
    folder: Path
    index: dict

    @property
    def epochs(self) -> int:
        return self.index["epochs"]

    @property
    def random_start(self) -> bool:
        return self.index["spec"]["clips"]["random_start"]

    @property
    def videos(self) -> int:
        return self.index["videos"]

    def empty_text(self) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(self.folder / EMPTY_TEXT)["text"].float()


def open_latent_cache(config: TrainConfig) -> LatentCache:
    """The cache config.data.latent_cache names, checked against this config: refused with the
    differences and the fix when it was built with other models, another index or other sizes."""
    folder = Path(config.data.latent_cache)
    build = "build it with scripts/cache_latents.py and the same --config and --set"
    if not (folder / INDEX).is_file():
        if folder.is_dir() and any(folder.iterdir()):
            raise InvalidInputError(f"data.latent_cache {folder}: the cache pass has not finished (no {INDEX}); "
                                    f"run scripts/cache_latents.py again with the same config: it keeps what is written")
        raise InvalidInputError(f"data.latent_cache {folder} does not exist; {build}")
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        recorded = index["spec"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InvalidInputError(f"data.latent_cache {folder}/{INDEX} is damaged; {build} into a new folder") from None
    expected = cache_spec(config)
    changed = _differences(recorded, expected)
    if changed:
        raise InvalidInputError(
            f"data.latent_cache {folder} was built with other {', '.join(changed)} than this config has; "
            f"train with the models, index and data settings it was built with, or {build} into a new folder"
        )
    return LatentCache(folder, index)


class LatentCacheDataset(torch.utils.data.Dataset):
    """The cached clips as training items, indexed as VideoCaptionDataset is (item i of epoch e is its
    item i of epoch e): latents, text (CLIP hidden states), content (DINOv2 hidden states), ssim,
    level (by `thresholds`), index and replaced."""

    def __init__(self, cache: LatentCache, thresholds):
        self.cache, self.thresholds = cache, validate_thresholds(thresholds)
        self.clips_per_part = cache.index["clips_per_part"]
        self.epoch = 0
        self._open: dict[Path, object] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch if self.cache.random_start else 0  # without random_start every epoch is epoch 0's
        if self.epoch >= self.cache.epochs:
            raise InvalidInputError(f"data.latent_cache {self.cache.folder} holds {self.cache.epochs} epochs, "
                                    f"epoch {epoch} was asked for")  # Trainer checks this before training

    def __len__(self) -> int:
        return self.cache.videos

    def __getitem__(self, index: int) -> dict:
        from safetensors import safe_open

        path = part_path(self.cache.folder, self.epoch, index // self.clips_per_part)
        if path not in self._open:
            self._open[path] = safe_open(path, framework="pt")
        part, row = self._open[path], index % self.clips_per_part
        item = {name: part.get_slice(name)[row : row + 1][0] for name in ("latents", "text", "content")}
        item = {name: tensor.float() for name, tensor in item.items()}
        ssim, video, replaced = (part.get_slice(name)[row : row + 1][0].item() for name in ("ssim", "video", "replaced"))
        return {**item, "ssim": ssim, "level": level_from_ssim(ssim, self.thresholds), "index": int(video),
                "replaced": int(replaced)}


def epochs_needed(config: TrainConfig, videos: int, world: int) -> int:
    """Epochs a run of config.steps optimizer steps reads (ClipStream: whole batches per epoch)."""
    batches = videos // (config.batch_size * world)
    return math.ceil(config.steps * config.gradient_accumulation_steps / batches) if batches else 0


# --- writing ------------------------------------------------------------------------------------


def _write(path: Path, tensors: dict[str, torch.Tensor], digest: str) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as temporary:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary), metadata={"spec": digest})


def _written_with(path: Path, digest: str) -> bool:
    """Whether `path` exists; refused when it was written for another spec (never overwritten)."""
    from safetensors import safe_open

    if not path.exists():
        return False
    with safe_open(path, framework="pt") as handle:
        found = (handle.metadata() or {}).get("spec")
    if found != digest:
        raise InvalidInputError(f"{path} was written for another config (spec {found}, this one's is {digest}); "
                                f"give data.latent_cache a new folder")
    return True


def build_latent_cache(config: TrainConfig, epochs: int, dtype: str = "float32", clips_per_part: int = 256,
                       rank: int = 0, world: int = 1, device: torch.device | str = "cpu",
                       barrier: Callable[[], None] = lambda: None) -> dict:
    """Write (or complete) the cache config.data.latent_cache names; this process writes parts
    rank, rank + world, ... of the work. `barrier` waits for every process (accelerate's
    wait_for_everyone). Returns the counts: parts written now, parts kept, clips written now."""
    from .base import load_training_base
    from .batching import FrozenEncoders, tokenize_captions
    from .data import ClipSampling, VideoCaptionDataset, label_videos, read_index
    from .engine import make_livephoto_config
    from ..encoding import encode_text
    from ..modules.content import ContentEncoder

    data = config.data
    if data.latent_cache is None:
        raise InvalidInputError("set data.latent_cache to the folder the cache is written to")
    if dtype not in DTYPES:
        raise InvalidInputError(f"the cache dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    if epochs < 1 or clips_per_part < 1:
        raise InvalidInputError("epochs and clips per part must be >= 1")
    folder = Path(data.latent_cache)
    spec = cache_spec(config)
    digest = spec_digest(spec)
    if (folder / INDEX).is_file():
        recorded = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        changed = _differences(recorded["spec"], spec) + (["dtype"] if recorded["dtype"] != dtype else []) + (
            ["clips_per_part"] if recorded["clips_per_part"] != clips_per_part else [])
        if changed:
            raise InvalidInputError(f"{folder} holds a cache built with other {', '.join(changed)}; give "
                                    f"data.latent_cache a new folder")

    sampling = ClipSampling(data.num_frames, data.stride, data.size)
    ssim_cache = Path(data.ssim_cache) if data.ssim_cache else Path(config.output_dir) / "ssim_cache.jsonl"
    entries = read_index(data.index, data.root)
    if rank == 0:  # the main process labels; the others then read its SSIM cache
        labelled = label_videos(entries, sampling, ssim_cache, data.label_workers, data.thresholds)
    barrier()
    if rank != 0:
        labelled = label_videos(entries, sampling, ssim_cache, 1, data.thresholds)
    base = load_training_base(config, Path(config.output_dir))
    # The content encoder training builds (its input size from the LivePhoto config); only its frozen
    # DINOv2 half runs here, so the width of its projection does not matter.
    image_size = make_livephoto_config(config, base, labelled.thresholds).dinov2_image_size
    content = ContentEncoder(base.dinov2, 1, image_size).to(device)
    encoders = FrozenEncoders(base.vae.to(device), base.text_encoder.to(device), base.tokenizer, content, device,
                              False, False)
    store = DTYPES[dtype]
    if rank == 0 and not _written_with(folder / EMPTY_TEXT, digest):
        with torch.no_grad():
            empty = encode_text(encoders.text_encoder, tokenize_captions(base.tokenizer, [""]))[0]
        _write(folder / EMPTY_TEXT, {"text": empty.to(store)}, digest)

    dataset = VideoCaptionDataset(labelled.videos, labelled.thresholds, sampling, config.seed, data.random_start)
    epochs = epochs if data.random_start else 1
    parts = math.ceil(len(dataset) / clips_per_part)
    work = [(epoch, part) for epoch in range(epochs) for part in range(parts)][rank::world]
    counts = {"parts_written": 0, "parts_kept": 0, "clips_written": 0}
    for epoch, part in work:
        path = part_path(folder, epoch, part)
        if _written_with(path, digest):
            counts["parts_kept"] += 1
            continue
        dataset.set_epoch(epoch)
        places = range(part * clips_per_part, min((part + 1) * clips_per_part, len(dataset)))
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=list(places),
                                             num_workers=data.loader_workers)
        rows = {name: [] for name in ("latents", "text", "content", "ssim", "video", "replaced")}
        with torch.no_grad():
            for item in loader:
                rows["latents"].append(encoders.clip_latents(item["frames"][None])[0])
                rows["text"].append(encoders.text_embeddings([item["caption"]])[0])
                rows["content"].append(encoders.content_features(item["reference"][None])[0])
                rows["ssim"].append(torch.tensor(item["ssim"], dtype=torch.float64))
                rows["video"].append(torch.tensor(item["index"]))
                rows["replaced"].append(torch.tensor(item["replaced"]))
        tensors = {name: torch.stack(values).cpu() for name, values in rows.items()}
        for name in ("latents", "text", "content"):
            tensors[name] = tensors[name].to(store)
        _write(path, tensors, digest)
        counts["parts_written"] += 1
        counts["clips_written"] += len(places)
        logger.info("latent cache: epoch %d part %d of %d written (%d clips)", epoch, part + 1, parts, len(places))
    barrier()
    if rank == 0:
        missing = [str(part_path(folder, e, p)) for e in range(epochs) for p in range(parts)
                   if not part_path(folder, e, p).exists()]
        if missing:  # another process failed: its error is in its own output
            raise InvalidInputError(f"{len(missing)} parts of {folder} were not written (e.g. {missing[0]}); run the "
                                    f"cache pass again: it keeps what is written")
        from safetensors import safe_open

        with safe_open(part_path(folder, 0, 0), framework="pt") as handle:
            shapes = {name: handle.get_slice(name).get_shape()[1:] for name in ("latents", "text", "content")}
        index = {"spec": spec, "digest": digest, "dtype": dtype, "clips_per_part": clips_per_part,
                 "videos": len(dataset), "epochs": epochs, "shapes": shapes,
                 "thresholds": list(labelled.thresholds), "counts": labelled.counts,
                 "dinov2_config": base.dinov2.config.to_dict()}
        with atomic_write(folder / INDEX, overwrite=True) as temporary:
            temporary.write_text(json.dumps(index, indent=2), encoding="utf-8")
    barrier()
    return counts
