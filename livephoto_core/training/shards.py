"""WebDataset tar shards: a converter, the labelling pass per shard, and a stream for training.

Format, as video2dataset writes it for WebVid and HD-VILA: a tar file holds samples as consecutive
members that share a key (the member's name up to the first dot of its file name): the video
(``key.mp4``, or another suffix of VIDEO_SUFFIXES) and its caption in ``key.txt`` and/or
``key.json`` (its ``caption`` field; ``.txt`` wins when both are there).

1. ``write_shards`` converts an index (``data.read_index``: CSV, JSON lines, WebVid in either
   layout) into shards of `samples_per_shard` videos each (``scripts/make_shards.py``).
2. ``label_shards`` measures every sample at start 0, as ``data.label_videos`` does for an index,
   caches one JSON line per shard (keyed by the shard's path, size, mtime and the sampling), and
   fits the thresholds. What it keeps per shard is the number of usable samples and the keys of
   the bad ones; no list of the samples themselves.
3. ``ShardStream`` reads the shards as a stream. Epoch e deals the shards, in the order
   ``default_rng([seed, e]).permutation``, round-robin over the slots (process rank x DataLoader
   worker); every slot yields the same number of clips, so every process takes the same number of
   steps (DDP needs that) and batch k of a process is its worker k mod W's; the position to resume
   from is therefore a function of the step (``ClipStream`` passes it), and a worker skips the
   samples it already gave without decoding them.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import re
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInputError
from ..intensity import LEVELS, fit_thresholds, validate_thresholds
from .data import (
    ClipSampling,
    VideoEntry,
    _appending,
    _cache_key,
    _load_cache,
    _measure,
    _probe_frame_count,
    _reason,
    load_training_clip,
    run_tasks,
    training_item,
)

logger = logging.getLogger(__name__)

# What read_video decodes (PyAV; Pillow for WebP and odd GIFs).
VIDEO_SUFFIXES = ("mp4", "webm", "mkv", "mov", "avi", "gif", "webp")
# webdataset's rule: the key is the member name up to the first dot of its file name.
_MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]+)$")


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    samples: int  # samples the labelling pass read: training reads no further (a damaged shard's end)
    usable: int  # of them, those it decoded and measured
    bad: frozenset[str] = frozenset()  # keys of the others, skipped in training


@dataclass
class ShardLabelling:
    """counts: total, usable, decoded (samples labelled in this run), cached (samples whose shard's
    record was in the cache), missing (samples without a video or a caption), undecodable,
    too_short, shards, damaged_shards (unreadable from some point on: the samples before count)."""

    shards: list[ShardInfo]
    thresholds: tuple[float, ...]
    counts: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Reading and writing tar shards
# ---------------------------------------------------------------------------------------------


def list_shards(spec: str | os.PathLike) -> list[Path]:
    """The shards of `spec`, sorted: a folder's ``*.tar`` files, or a glob pattern (``shards/*.tar``)."""
    folder = Path(spec)
    paths = sorted(folder.glob("*.tar")) if folder.is_dir() else sorted(Path(p) for p in glob(str(spec)))
    paths = [path for path in paths if path.is_file()]
    if not paths:
        raise InvalidInputError(
            f"data.shards {spec}: no .tar files there; give a folder of shards or a pattern such as "
            f"shards/*.tar (scripts/make_shards.py writes them from an index)"
        )
    return paths


@dataclass
class Sample:
    """One sample of a shard: its key and members by suffix. `video` and `caption` read the member
    data on demand, so that skipping a sample reads nothing but its headers."""

    key: str
    members: dict[str, tarfile.TarInfo]
    tar: tarfile.TarFile

    @property
    def video_suffix(self) -> str | None:
        return next((suffix for suffix in VIDEO_SUFFIXES if suffix in self.members), None)

    def video(self) -> bytes:
        return self._read(self.video_suffix)

    def caption(self) -> str | None:
        if "txt" in self.members:
            return self._read("txt").decode("utf-8").strip()
        if "json" in self.members:
            caption = json.loads(self._read("json")).get("caption")
            return caption.strip() if isinstance(caption, str) else None
        return None

    def _read(self, suffix: str) -> bytes:
        return self.tar.extractfile(self.members[suffix]).read()


def iter_samples(path: Path) -> Iterator[Sample]:
    """The samples of a shard in order. A damaged tar raises tarfile.TarError (or OSError) where the
    damage starts, after the samples before it; reading the same file again stops at the same place."""
    with tarfile.open(path, "r:") as tar:  # "r:": seekable, so skipped members' data is never read
        key, members = None, {}
        while (member := tar.next()) is not None:
            match = _MEMBER.match(member.name)
            if not member.isfile() or match is None:
                continue
            if match[1] != key and members:
                yield Sample(key, members, tar)
                members = {}
            key = match[1]
            members[match[2].lower()] = member
        if members:
            yield Sample(key, members, tar)


@contextmanager
def _as_file(data: bytes, suffix: str) -> Iterator[Path]:
    """`data` as a temporary file: the decoders (video.read_video, used by the labelling pass too)
    read files, and this keeps a sample's decode the same whether it came from a folder or a shard."""
    handle = tempfile.NamedTemporaryFile(suffix=f".{suffix}", delete=False)
    try:
        with handle:
            handle.write(data)
        yield Path(handle.name)
    finally:
        os.unlink(handle.name)


def write_shards(entries: Sequence[VideoEntry], out_dir: str | os.PathLike, samples_per_shard: int = 1000) -> dict:
    """Write `entries` as tar shards ``out_dir/000000.tar, ...``: entries [i N, (i + 1) N) go to
    shard i, each as ``<key>.<video suffix>`` (the file's bytes), ``<key>.txt`` (the caption) and
    ``<key>.json`` (caption and source path), where the key is the entry's place in the index.

    Missing files and files of other suffixes are skipped and counted. A shard is written to a
    temporary name and renamed when complete, and existing shards are kept, so a killed conversion
    continues where it stopped. Returns the counts: total, written, missing, not_video, shards,
    existing_shards (kept from an earlier run).
    """
    if isinstance(samples_per_shard, bool) or not isinstance(samples_per_shard, int) or samples_per_shard < 1:
        raise InvalidInputError(f"samples per shard must be a whole number >= 1; got {samples_per_shard!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = Counter(total=len(entries), written=0, missing=0, not_video=0, shards=0, existing_shards=0)
    for shard, first in enumerate(range(0, len(entries), samples_per_shard)):
        path = out_dir / f"{shard:06d}.tar"
        counts["shards"] += 1
        if path.exists():
            counts["existing_shards"] += 1
            continue
        partial = path.with_suffix(".tar.partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for number, entry in enumerate(entries[first : first + samples_per_shard], first):
                suffix = entry.path.suffix.lower().lstrip(".")
                if suffix not in VIDEO_SUFFIXES:
                    counts["not_video"] += 1
                    logger.warning("not converting %s: not one of the video suffixes %s", entry.path, VIDEO_SUFFIXES)
                    continue
                try:
                    video = entry.path.read_bytes()
                except OSError as error:
                    counts["missing"] += 1
                    logger.warning("not converting %s: %s", entry.path, error.strerror or error)
                    continue
                key = f"{number:09d}"
                meta = json.dumps({"caption": entry.caption, "source": str(entry.path)}, ensure_ascii=False)
                for name, data in ((f"{key}.{suffix}", video), (f"{key}.txt", entry.caption.encode("utf-8")),
                                   (f"{key}.json", meta.encode("utf-8"))):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)  # mtime stays 0: the same index gives the same bytes
                    tar.addfile(info, io.BytesIO(data))
                counts["written"] += 1
        os.replace(partial, path)
    return dict(counts)


# ---------------------------------------------------------------------------------------------
# Labelling pass
# ---------------------------------------------------------------------------------------------


def _label_shard(task: tuple[str, str, ClipSampling]) -> tuple[str, dict]:
    """One shard's record: samples seen, the usable ones' SSIMs in order, the bad ones' keys and
    status, and the damage that stopped reading it (None when read to the end)."""
    key, path, sampling = task
    ssims, bad, damaged = [], {}, None
    try:
        for sample in iter_samples(Path(path)):
            caption = sample.caption()
            if sample.video_suffix is None or caption is None:
                bad[sample.key] = "missing"
                continue
            with _as_file(sample.video(), sample.video_suffix) as file:
                record = _measure(file, sampling)
            if record["status"] == "ok":
                ssims.append(record["ssim"])
            else:
                bad[sample.key] = record["status"]
    except (tarfile.TarError, OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        damaged = _reason(error)
    return key, {"samples": len(ssims) + len(bad), "ssims": ssims, "bad": bad, "damaged": damaged}


def label_shards(
    shards: Sequence[Path],
    sampling: ClipSampling,
    cache_path: str | os.PathLike,
    workers: int = 1,
    thresholds: Sequence[float] | None = None,
) -> ShardLabelling:
    """The labelling pass over shards: like ``data.label_videos`` (start 0, the same measurement,
    the same cache file format, resumable per shard, `workers` processes over shards), and the
    thresholds fitted on every usable sample (one float each in memory) unless given."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidInputError(f"workers must be a whole number >= 1; got {workers!r}")
    cache_path = Path(cache_path)
    cache = _load_cache(cache_path)
    keys = [_cache_key(path, path.stat(), sampling) for path in shards]
    pending = [(key, str(path), sampling) for key, path in zip(keys, shards) if key not in cache]
    pending_keys = {task[0] for task in pending}
    counts = Counter(decoded=0, cached=0, missing=0, undecodable=0, too_short=0, shards=len(shards),
                     damaged_shards=0)
    with _appending(cache_path) as append:
        for key, record in run_tasks(_label_shard, pending, workers):
            record = {"key": key, **record}
            append(record)
            cache[key] = record
            counts["decoded"] += record["samples"]

    infos, ssims = [], []
    for path, key in zip(shards, keys):
        record = cache[key]
        if key not in pending_keys:
            counts["cached"] += record["samples"]
        counts.update(record["bad"].values())
        if record["damaged"] is not None:
            counts["damaged_shards"] += 1
            logger.warning("shard %s is unreadable after %d samples: %s", path, record["samples"], record["damaged"])
        infos.append(ShardInfo(path, record["samples"], len(record["ssims"]), frozenset(record["bad"])))
        ssims.append(np.asarray(record["ssims"], dtype=np.float64))
    ssims = np.concatenate(ssims)
    counts["usable"] = len(ssims)
    counts["total"] = counts["usable"] + counts["missing"] + counts["undecodable"] + counts["too_short"]
    skipped = counts["total"] - counts["usable"]
    if skipped:
        logger.warning("labelling skipped %d of %d samples (%d without a video or caption, %d undecodable, "
                       "%d too short)", skipped, counts["total"], counts["missing"], counts["undecodable"],
                       counts["too_short"])
    if thresholds is None:
        if len(ssims) < LEVELS:
            raise InvalidInputError(
                f"only {len(ssims)} of {counts['total']} samples in the shards are usable; fitting {LEVELS} intensity "
                f"levels needs at least {LEVELS}: add samples or pass the thresholds of a trained checkpoint"
            )
        fitted = fit_thresholds(ssims)
    else:
        fitted = validate_thresholds(thresholds)
    return ShardLabelling(infos, fitted, dict(counts))


# ---------------------------------------------------------------------------------------------
# The stream
# ---------------------------------------------------------------------------------------------


class ShardStream(torch.utils.data.IterableDataset):
    """Labelled shards as a stream of training items (``data.training_item`` plus key and
    replaced), dealt over processes and DataLoader workers by shard (see the module docstring).

    ``ClipStream`` calls ``split`` once, then ``start(epoch, batches_done)`` before each epoch's
    DataLoader. Each sample's clip start is drawn from ``default_rng([seed, epoch, shard, n])``
    (n: its place in its shard), whichever slot reads it. A sample that the labelling pass could
    use but that fails now is skipped and counted in the next item's `replaced`; a slot whose
    shards run out before its share of clips starts over on them.
    """

    def __init__(self, shards: Sequence[ShardInfo], thresholds: Sequence[float], sampling: ClipSampling,
                 seed: int = 0, random_start: bool = True):
        self.shards = list(shards)
        self.thresholds = validate_thresholds(thresholds)
        self.sampling, self.seed, self.random_start = sampling, seed, random_start
        self.batch_size, self.rank, self.world, self.workers = 1, 0, 1, 1
        self.epoch = self.batches_done = 0

    def split(self, batch_size: int, rank: int, world: int, loader_workers: int) -> None:
        """Deal the shards over `world` processes x `loader_workers` workers (0: the process reads)."""
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.workers = max(loader_workers, 1)
        slots = world * self.workers
        if len(self.shards) < slots:
            raise InvalidInputError(
                f"{len(self.shards)} shards cannot feed {world} process(es) x {self.workers} loader worker(s): each "
                f"reads whole shards; write more, smaller shards (scripts/make_shards.py --samples-per-shard) "
                f"or lower data.loader_workers"
            )

    def _slot_shards(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        slots = self.world * self.workers
        return [order[slot::slots].tolist() for slot in range(slots)]

    def batches_per_worker(self, epoch: int) -> int:
        """Batches every worker gives in `epoch`: what the slot with the fewest usable samples fills."""
        fewest = min(sum(self.shards[i].usable for i in shards) for shards in self._slot_shards(epoch))
        if fewest < self.batch_size:
            raise InvalidInputError(
                f"epoch {epoch}: a process's loader worker gets shards with only {fewest} usable samples, less than "
                f"one batch of {self.batch_size}; write more samples per shard or lower batch_size"
            )
        return fewest // self.batch_size

    def batches_per_rank(self, epoch: int) -> int:
        return self.batches_per_worker(epoch) * self.workers

    def start(self, epoch: int, batches_done: int) -> None:
        """The next iteration reads `epoch` from this process's batch `batches_done` on."""
        self.epoch, self.batches_done = epoch, batches_done

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        # Batch k of an epoch comes from slot k mod W: DataLoader takes batches from its workers
        # round-robin, starting with worker 0, which therefore plays the slot of the next batch.
        worker = ((info.id if info is not None else 0) + self.batches_done) % self.workers
        shard_ids = self._slot_shards(self.epoch)[self.rank * self.workers + worker]
        skip = len(range(worker, self.batches_done, self.workers)) * self.batch_size
        clips = self.batches_per_worker(self.epoch) * self.batch_size - skip
        items = self._items(shard_ids, skip)
        for _ in range(clips):
            yield next(items)

    def _items(self, shard_ids: list[int], skip: int) -> Iterator[dict]:
        replaced = 0
        while True:
            given = skipped = 0
            for shard_id in shard_ids:
                shard = self.shards[shard_id]
                try:
                    for number, sample in enumerate(itertools.islice(iter_samples(shard.path), shard.samples)):
                        if sample.key in shard.bad:
                            continue
                        if skip:
                            skip, skipped = skip - 1, skipped + 1
                            continue
                        item = self._item(shard, shard_id, number, sample)
                        if item is None:
                            replaced += 1
                            continue
                        yield {**item, "replaced": replaced}
                        given, replaced = given + 1, 0
                except (tarfile.TarError, OSError) as error:  # damaged since labelling, or a failing disk
                    logger.warning("shard %s: %s", shard.path, _reason(error))
            if not given and not skipped:
                raise InvalidInputError(
                    f"no sample of the shards {[str(self.shards[i].path) for i in shard_ids]} decodes any more; "
                    f"check them and label them again"
                )

    def _item(self, shard: ShardInfo, shard_id: int, number: int, sample: Sample) -> dict | None:
        rng = np.random.default_rng([self.seed, self.epoch, shard_id, number])
        try:
            caption, video = sample.caption(), sample.video()
        except (tarfile.TarError, OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            logger.warning("skipping %s/%s in training: %s", shard.path, sample.key, _reason(error))
            return None
        with _as_file(video, sample.video_suffix) as file:
            frame_count = _probe_frame_count(file) or 0
            last_start = max(frame_count - self.sampling.span, 0) if self.random_start else 0
            clip = load_training_clip(file, self.sampling, int(rng.integers(last_start + 1)),
                                      name=f"{shard.path}/{sample.key}")
        if clip is None:
            return None
        return {**training_item(clip, caption, self.thresholds), "key": f"{shard.path.name}/{sample.key}"}
