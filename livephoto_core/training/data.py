"""Training data: an index of captioned videos, a cached SSIM labelling pass, and a torch Dataset.

1. ``read_index`` reads CSV (``path,caption``), JSON lines (``{"path", "caption"}``) or WebVid's CSV
   (``videoid,contentUrl,duration,page_dir,name``; the file is ``<root>/<page_dir>/<videoid>.mp4`` as
   WebVid's download script writes it, or ``<root>/<videoid>.mp4`` as AnimateDiff's and PIA's
   loaders read it: the layout is found on the disk).
2. ``label_videos`` measures each clip's mean adjacent-frame SSIM once, on exactly the frames
   training sees at start 0, caches the result on disk as JSON lines (resumable: a killed pass
   continues where it stopped), runs over worker processes, and fits the 9 intensity thresholds.
   Videos that are missing, undecodable or too short are skipped and counted, never fatal.
3. ``VideoCaptionDataset`` yields clips in [-1, 1] with their caption, SSIM and level. An item
   depends only on (seed, epoch, index), so a resumed training run sees exactly the same data.

The label rule: an item's SSIM and level are measured on the item's own frames (``training_item``),
with the labelling pass's function at the same working size, and binned by the thresholds that
the labelling pass fitted. With ``random_start`` a clip starts anywhere in its video, and the
paper conditions on the motion of the frames the model sees, not on the video's first frames.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from ..errors import InvalidInputError
from ..intensity import LEVELS, SSIM_WINDOW, fit_thresholds, level_from_ssim, mean_adjacent_ssim, validate_thresholds
from ..video import read_video

logger = logging.getLogger(__name__)

_WEBVID_COLUMNS = ("videoid", "page_dir", "name")
# Rows of a WebVid index looked at to tell its layout: enough to get past the few percent of
# videos that every WebVid download misses, few enough to cost nothing next to the labelling pass.
_LAYOUT_PROBE_ROWS = 1000
_JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class ClipSampling:
    """Which frames make a training clip: `num_frames` every `stride` frames, centre-cropped to a
    square and resized to `size` x `size`. The first sampled frame is the reference image."""

    num_frames: int = 16
    stride: int = 4
    size: int = 256

    def __post_init__(self):
        # Two frames make one adjacent pair; SSIM needs a full window.
        for name, lowest in (("num_frames", 2), ("stride", 1), ("size", SSIM_WINDOW)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise InvalidInputError(f"ClipSampling.{name} must be a whole number >= {lowest}; got {value!r}")

    @property
    def span(self) -> int:
        """Source frames covered by one clip, first to last sampled frame inclusive."""
        return (self.num_frames - 1) * self.stride + 1


@dataclass(frozen=True)
class VideoEntry:
    path: Path
    caption: str


@dataclass(frozen=True)
class LabelledVideo:
    path: Path
    caption: str
    ssim: float  # mean adjacent-frame SSIM of the labelling sample (start 0): what the thresholds are fitted on
    frame_count: int | None  # frames in the file according to its container; None when unknown


@dataclass
class LabellingResult:
    """The usable videos in index order, the fitted (or given) thresholds, and what happened.

    counts: total, usable, decoded (labelled in this run), cached (taken from the cache),
    missing, undecodable, too_short.
    """

    videos: list[LabelledVideo]
    thresholds: tuple[float, ...]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ssims(self) -> list[float]:
        return [video.ssim for video in self.videos]


# ---------------------------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------------------------


def read_index(index_path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[VideoEntry]:
    """Videos and captions listed in a CSV or JSON-lines index.

    Relative paths (and WebVid's videos) are resolved against `root`, by default the folder that
    holds the index. The format is chosen by extension (.csv or .jsonl/.ndjson/.json) and, for CSV,
    by the header: ``path,caption`` or WebVid's ``videoid,...,page_dir,name`` (``webvid_layout``).
    """
    index_path = Path(index_path)
    if not index_path.is_file():
        raise InvalidInputError(f"index {index_path} does not exist; pass a CSV or JSON-lines file of videos")
    base = Path(root) if root is not None else index_path.parent
    base = base.absolute()
    suffix = index_path.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv_rows(index_path, base)
    elif suffix in _JSON_LINES_SUFFIXES:
        rows = _read_json_lines_rows(index_path)
    else:
        raise InvalidInputError(
            f"index {index_path.name}: unknown format {suffix or '(no extension)'}; use .csv or .jsonl"
        )
    return [VideoEntry(path=base / relative, caption=caption) for relative, caption in rows]


def _read_csv_rows(index_path: Path, base: Path) -> list[tuple[str, str]]:
    with open(index_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if {"path", "caption"} <= columns:
            return [_checked_row(index_path, n, row["path"], row["caption"]) for n, row in enumerate(reader, 2)]
        if set(_WEBVID_COLUMNS) <= columns:
            rows = [(row["videoid"], row["page_dir"], row["name"]) for row in reader]
            flat = webvid_layout(index_path, base, rows) == "flat"
            return [
                _checked_row(index_path, n, f"{videoid}.mp4" if flat else f"{page_dir}/{videoid}.mp4", name)
                for n, (videoid, page_dir, name) in enumerate(rows, 2)
            ]
    raise InvalidInputError(
        f"index {index_path.name} has columns {sorted(columns)}; it needs path,caption "
        f"or WebVid's videoid,page_dir,name"
    )


def webvid_layout(index_path: Path, base: Path, rows: Sequence[tuple[str, str, str]]) -> str:
    """"page_dir" when WebVid's videos are at ``<base>/<page_dir>/<videoid>.mp4`` (the download
    script's layout), "flat" when at ``<base>/<videoid>.mp4``: the first of the first rows whose
    video exists in one of them decides for the whole index."""
    for videoid, page_dir, _ in rows[:_LAYOUT_PROBE_ROWS]:
        if (base / page_dir / f"{videoid}.mp4").is_file():
            return "page_dir"
        if (base / f"{videoid}.mp4").is_file():
            return "flat"
    raise InvalidInputError(
        f"WebVid index {index_path.name}: none of its first {min(len(rows), _LAYOUT_PROBE_ROWS)} videos is in "
        f"{base} as <page_dir>/<videoid>.mp4 (WebVid's download layout) or <videoid>.mp4 (the flat layout); "
        f"set data.root to the folder that holds the videos"
    )


def _read_json_lines_rows(index_path: Path) -> list[tuple[str, str]]:
    rows = []
    with open(index_path, encoding="utf-8") as handle:
        for n, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise InvalidInputError(f"index {index_path.name} line {n} is not valid JSON") from None
            if not isinstance(record, dict):
                raise InvalidInputError(f"index {index_path.name} line {n} is not an object with path and caption")
            rows.append(_checked_row(index_path, n, record.get("path"), record.get("caption")))
    return rows


def _checked_row(index_path: Path, line: int, path, caption) -> tuple[str, str]:
    if not isinstance(path, str) or not path.strip() or not isinstance(caption, str):
        raise InvalidInputError(f"index {index_path.name} line {line} needs a non-empty path and a caption text")
    return path.strip(), caption.strip()


# ---------------------------------------------------------------------------------------------
# Clips
# ---------------------------------------------------------------------------------------------


def center_crop_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 frames [F, H, W, 3] -> the centred square of side min(H, W), resized to size x size.

    Bicubic (Pillow, antialiased when shrinking); frames that already are size x size pass unchanged.
    """
    height, width = frames.shape[1:3]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = frames[:, top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    return np.stack(
        [np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BICUBIC)) for frame in square]
    )


def load_clip(path: str | os.PathLike, sampling: ClipSampling, start: int = 0) -> np.ndarray:
    """The clip at `start`: uint8 [num_frames, size, size, 3]. InvalidInputError when the video cannot
    be decoded or has fewer than start + sampling.span frames."""
    frames = read_video(path, max_frames=sampling.num_frames, stride=sampling.stride, start=start).frames
    if len(frames) < sampling.num_frames:
        raise InvalidInputError(
            f"{path} is too short: {sampling.num_frames} frames every {sampling.stride} from frame {start} "
            f"need {start + sampling.span} frames"
        )
    return center_crop_resize(frames, sampling.size)


def load_training_clip(path: Path, sampling: ClipSampling, start: int, name: str | None = None) -> np.ndarray | None:
    """The clip at `start`, else at 0 (the container's frame count can overestimate), else None with
    a warning that names `name` (default: the path): a file broken since labelling must not stop training."""
    for attempt_start in dict.fromkeys((start, 0)):
        try:
            return load_clip(path, sampling, attempt_start)
        except Exception as error:  # noqa: BLE001
            reason = _reason(error)
    logger.warning("skipping %s in training: %s", name or path, reason)
    return None


def training_item(clip: np.ndarray, caption: str, thresholds: Sequence[float]) -> dict:
    """A training item from uint8 frames [F, S, S, 3]: frames float [F, 3, S, S] in [-1, 1], the
    reference (frame 0), the caption, and the SSIM and level of these frames (the label rule in the
    module docstring; the same function and size as the labelling pass, so comparable with the
    thresholds it fitted)."""
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    ssim = mean_adjacent_ssim(clip)
    return {
        "frames": frames,
        "reference": frames[0].clone(),
        "caption": caption,
        "ssim": ssim,
        "level": level_from_ssim(ssim, thresholds),
    }


def _probe_frame_count(path: Path) -> int | None:
    """Frame count from the container (exact for mp4/mov; estimated from duration elsewhere)."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            rate = stream.average_rate or stream.guessed_rate
            if container.duration and rate:
                return int(container.duration / av.time_base * rate)
    except (av.FFmpegError, OSError, ValueError, IndexError):
        pass
    return None


# ---------------------------------------------------------------------------------------------
# Labelling pass
# ---------------------------------------------------------------------------------------------


def _cache_key(path: Path, stat: os.stat_result, sampling: ClipSampling) -> str:
    return json.dumps([str(path), stat.st_size, stat.st_mtime_ns, sampling.num_frames, sampling.stride, sampling.size])


def _measure(path: Path, sampling: ClipSampling) -> dict:
    """One video's label record: status ok/undecodable/too_short, its SSIM and frame count."""
    try:
        frames = read_video(path, max_frames=sampling.num_frames, stride=sampling.stride).frames
    except Exception as error:  # noqa: BLE001 (one odd file among millions must not stop the pass)
        return {"status": "undecodable", "reason": _reason(error)}
    if len(frames) < sampling.num_frames:
        return {
            "status": "too_short",
            "reason": f"{len(frames)} of {sampling.num_frames} frames at stride {sampling.stride}",
        }
    clip = center_crop_resize(frames, sampling.size)
    return {
        "status": "ok",
        "ssim": mean_adjacent_ssim(clip),
        "frame_count": _probe_frame_count(path),
    }


def _reason(error: Exception) -> str:
    """Our own errors are one-line messages already; anything else gets its type named."""
    return str(error) if isinstance(error, InvalidInputError) else f"{type(error).__name__}: {error}"


def _label_task(task: tuple[str, str, ClipSampling]) -> tuple[str, dict]:
    key, path, sampling = task
    return key, _measure(Path(path), sampling)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core already


def _load_cache(cache_path: Path) -> dict[str, dict]:
    records = {}
    if not cache_path.exists():
        return records
    with open(cache_path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                records[record["key"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # the torn last line of a killed pass
    return records


@contextmanager
def _appending(cache_path: Path) -> Iterator[Callable[[dict], None]]:
    """Yield a function that appends a record as one JSON line, flushed at once (a kill loses at
    most the line being written)."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_path, "a+b") as handle:
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")  # end the torn line of a killed pass; _load_cache skips it

        def append(record: dict) -> None:
            handle.write((json.dumps(record) + "\n").encode("utf-8"))
            handle.flush()

        yield append


def label_videos(
    entries: Sequence[VideoEntry],
    sampling: ClipSampling,
    cache_path: str | os.PathLike,
    workers: int = 1,
    thresholds: Sequence[float] | None = None,
) -> LabellingResult:
    """Mean adjacent SSIM of every video's labelling sample (start 0), cached, and the thresholds.

    The cache (JSON lines) is keyed by path, file size, mtime and the sampling; records are appended
    as they finish, so rerunning after a kill measures only what is left, and rerunning after a
    success decodes nothing. Failures are cached too (until the file changes). `workers` > 1 spreads
    the decoding over that many processes. With `thresholds` given (e.g. a checkpoint's, for
    fine-tuning) they are used as they are; otherwise they are fitted on the usable SSIMs.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidInputError(f"workers must be a whole number >= 1; got {workers!r}")
    cache_path = Path(cache_path)
    cache = _load_cache(cache_path)
    counts = Counter(total=len(entries), decoded=0, cached=0, missing=0, undecodable=0, too_short=0)

    keys: list[str | None] = []
    pending: dict[str, str] = {}
    for entry in entries:
        try:
            stat = entry.path.stat()
        except OSError:
            keys.append(None)
            continue
        key = _cache_key(entry.path, stat, sampling)
        keys.append(key)
        if key not in cache:
            pending[key] = str(entry.path)
    counts["cached"] = sum(1 for key in keys if key is not None and key in cache)

    with _appending(cache_path) as append:
        for key, record in run_tasks(_label_task, [(key, path, sampling) for key, path in pending.items()], workers):
            record = {"key": key, **record}
            append(record)
            cache[key] = record
            counts["decoded"] += 1

    videos = []
    for entry, key in zip(entries, keys):
        if key is None:
            counts["missing"] += 1
            logger.info("skipping %s: file not found", entry.path)
            continue
        record = cache[key]
        if record["status"] != "ok":
            counts[record["status"]] += 1
            logger.info("skipping %s: %s", entry.path, record["reason"])
            continue
        videos.append(LabelledVideo(entry.path, entry.caption, record["ssim"], record["frame_count"]))
    counts["usable"] = len(videos)
    skipped = counts["missing"] + counts["undecodable"] + counts["too_short"]
    if skipped:
        logger.warning(
            "labelling skipped %d of %d videos (%d missing, %d undecodable, %d too short)",
            skipped,
            len(entries),
            counts["missing"],
            counts["undecodable"],
            counts["too_short"],
        )
    if thresholds is None:
        if len(videos) < LEVELS:
            raise InvalidInputError(
                f"only {len(videos)} of {len(entries)} videos are usable; fitting {LEVELS} intensity levels "
                f"needs at least {LEVELS}: add videos or pass the thresholds of a trained checkpoint"
            )
        fitted = fit_thresholds([video.ssim for video in videos])
    else:
        fitted = validate_thresholds(thresholds)
    return LabellingResult(videos=videos, thresholds=fitted, counts=dict(counts))


def run_tasks(function: Callable, tasks: list, workers: int):
    """Yield function(task) as tasks finish; in this process for one worker, else in a process pool
    with a bounded number of tasks in flight (index files can list millions of videos). `function`
    must be a module-level function (the pool pickles it by name)."""
    if workers == 1 or len(tasks) <= 1:
        yield from map(function, tasks)
        return
    # spawn: the parent has torch loaded and may hold threads, which fork does not copy safely.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        queue = iter(tasks)
        in_flight = {pool.submit(function, task) for task in _take(queue, 4 * workers)}
        while in_flight:
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
            in_flight |= {pool.submit(function, task) for task in _take(queue, len(done))}


def _take(iterator, count: int) -> list:
    return [item for _, item in zip(range(count), iterator)]


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


class VideoCaptionDataset(torch.utils.data.Dataset):
    """Labelled videos as training items.

    Item i of epoch e is a pure function of (seed, e, i): the start frame (uniform over the starts
    that fit, or 0 without `random_start`) and, when video i fails to decode, the replacement videos
    are drawn from ``np.random.default_rng([seed, e, i])``. Call ``set_epoch`` before each epoch.

    Items (``training_item``): frames float [F, 3, H, W] in [-1, 1]; reference [3, H, W] (frame 0);
    caption; ssim and level of the item's own frames; index (the video actually used) and replaced
    (how many failed videos were skipped to produce this item: sum it over batches, since
    DataLoader workers' own counters never reach the main process).
    """

    def __init__(
        self,
        videos: Sequence[LabelledVideo],
        thresholds: Sequence[float],
        sampling: ClipSampling = ClipSampling(),
        seed: int = 0,
        random_start: bool = True,
        max_replacements: int = 20,
    ):
        if not videos:
            raise InvalidInputError("the dataset has no usable videos; check the index and the labelling counts")
        self.videos = list(videos)
        self.thresholds = validate_thresholds(thresholds)
        self.sampling = sampling
        self.seed = seed
        self.random_start = random_start
        self.max_replacements = max_replacements
        self.epoch = 0
        self.failed_items = 0  # in this process
        self._known_bad: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        candidate = index
        for replaced in range(self.max_replacements + 1):
            start = self._start(candidate, rng)
            if candidate not in self._known_bad:
                clip = load_training_clip(self.videos[candidate].path, self.sampling, start)
                if clip is not None:
                    item = training_item(clip, self.videos[candidate].caption, self.thresholds)
                    return {**item, "index": candidate, "replaced": replaced}
                self._known_bad.add(candidate)
                self.failed_items += 1
            candidate = int(rng.integers(len(self.videos)))
        raise InvalidInputError(
            f"{self.max_replacements + 1} videos in a row failed to decode (last {self.videos[candidate].path}); "
            f"check the data folder"
        )

    def _start(self, index: int, rng: np.random.Generator) -> int:
        # Drawn even when not used, so the random stream does not depend on which videos are bad.
        frame_count = self.videos[index].frame_count or 0
        last_start = max(frame_count - self.sampling.span, 0) if self.random_start else 0
        return int(rng.integers(last_start + 1))
