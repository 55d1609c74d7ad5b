"""Long videos, intensity schedules and loops, measured on the bundled demo model (window 8).

Held-out toy-world photos, each rendered through the pipeline as the CLI renders it, 4x the window
(32 frames) unless said otherwise. Parts (``--part``, default all but ``cost``):

- ``embedding``: what the frame-embedding channel means across windows (``windows.FRAME_EMBEDDINGS``):
  seam flicker, frame-0 fidelity and the level measured in each window, beside a one-window render
  of the same photo and seed;
- ``windows``: the default windows against the uniform schedule and a smaller overlap;
- ``schedule``: a rising and a falling intensity schedule, the level measured per window against the
  level asked (Spearman), with the chosen frame embedding and with per-window ramps;
- ``loop``: SSIM(last frame, first frame) against the mean adjacent SSIM, with and without ``loop``;
- ``cost``: time and peak memory per extra window (fewer steps: the cost is per window and step).

Seam flicker: the mean SSIM of adjacent frames across a window boundary (a pair where a window of
the static grid starts or ends) divided by that of the pairs inside windows; 1 is seamless, the goal
is within 2 % of it.

    OMP_NUM_THREADS=1 python benchmarks/long_video.py --part loop --json loop-0.json
    OMP_NUM_THREADS=1 python benchmarks/long_video.py --part loop --first 2 --json loop-2.json  # the next photos
    python benchmarks/long_video.py --merge loop-0.json loop-2.json --json loop.json  # one row over all photos

On this loaded 2-core machine a 32-frame render takes about 26 s, so a run of 2 photos stays near
5 minutes; ``--first`` and ``--merge`` spread more photos over several runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import ForwardTimer, PeakMemory  # noqa: E402
from benchmarks.motion_control import frame0_fidelity, heldout_specs  # noqa: E402
from livephoto_core import pipeline as pipeline_module  # noqa: E402
from livephoto_core.images import prepare_photo  # noqa: E402
from livephoto_core.intensity import (  # noqa: E402
    measure_intensity,
    parse_intensity_schedule,
    schedule_levels,
    ssim,
    to_grayscale,
)
from livephoto_core.loading.assemble import load_pipeline  # noqa: E402
from livephoto_core.training.toyworld import render_photo  # noqa: E402
from livephoto_core.windows import FRAME_EMBEDDINGS, ContextWindows  # noqa: E402

PARTS = ("embedding", "windows", "schedule", "loop", "cost")
SCHEDULES = ("2:0,9:LAST", "9:0,2:LAST")  # rising, falling; LAST: the last frame


def adjacent_ssims(frames: np.ndarray) -> np.ndarray:
    """SSIM of frame k and k+1 for every k, [F - 1]."""
    gray = to_grayscale(torch.as_tensor(frames))
    return ssim(gray[:-1], gray[1:]).numpy()


def grid(num_frames: int, length: int, overlap: int) -> list[list[int]]:
    """The static windows of a video (the grid the seams are measured on)."""
    return ContextWindows(length, overlap).windows(num_frames, 0)


def seam_ratio(frames: np.ndarray, windows: list[list[int]]) -> float:
    """Mean adjacent SSIM across window boundaries / mean adjacent SSIM inside windows."""
    starts = {window[0] for window in windows if window[0] > 0}
    ends = {window[-1] for window in windows}
    pairs = adjacent_ssims(frames)
    boundary = np.array([k + 1 in starts or k in ends for k in range(len(pairs))])
    return float(pairs[boundary].mean() / pairs[~boundary].mean())


def window_levels(frames: np.ndarray, windows: list[list[int]], thresholds) -> list[int]:
    return [measure_intensity(frames[window], thresholds).level for window in windows]


class Bench:
    def __init__(self, first: int, photos: int, frames: int, level: int, steps: int, seed: int):
        self.pipe = load_pipeline()
        config = self.pipe.config
        self.window, self.frames, self.level, self.steps, self.seed = config.num_frames, frames, level, steps, seed
        self.thresholds = config.intensity_thresholds
        size = config.height
        specs = heldout_specs(seed, ("left", "right", "up", "down"), first + photos, False, size, self.window)
        self.cases = [(render_photo(spec), spec.caption) for spec in specs[first:]]
        self.size = size

    def render(self, photo, prompt, frame_embedding: str = "clamped", **settings) -> np.ndarray:
        settings = {"num_frames": self.frames, "intensity": self.level, "num_inference_steps": self.steps,
                    "seed": self.seed, **settings}
        chosen = pipeline_module.context_windows

        def with_embedding(*args, **kwargs):
            return replace(chosen(*args, **kwargs), frame_embedding=frame_embedding)

        # The frame embedding is a design choice, not a user setting: swapped in here to measure it.
        with mock.patch.object(pipeline_module, "context_windows", with_embedding):
            return self.pipe(photo, prompt, **settings).frames.numpy()

    def reference(self, photo) -> np.ndarray:
        prepared = prepare_photo(photo, (self.size, self.size)).pixels
        return np.round(prepared.permute(1, 2, 0).numpy() * 255).astype(np.uint8)

    def scores(self, frames: np.ndarray, photo, windows, one_window_level: int | None = None) -> dict:
        levels = window_levels(frames, windows, self.thresholds)
        # What the model does with the request in one window: the demo model often misses the request there.
        beside_one_window = {} if one_window_level is None else {
            "mean_gap_to_one_window_level": float(np.mean([abs(level - one_window_level) for level in levels]))}
        return {**beside_one_window,
            "seam_ratio": seam_ratio(frames, windows) if len(windows) > 1 else None,
            "frame0_psnr": frame0_fidelity(self.reference(photo), frames)[0],
            "window_levels": levels,
            "worst_level_error": max(abs(level - self.level) for level in levels),
            "mean_level_error": float(np.mean([abs(level - self.level) for level in levels])),
            "share_within_one_level": float(np.mean([abs(level - self.level) <= 1 for level in levels])),
            "mean_adjacent_ssim": float(adjacent_ssims(frames).mean()),
        }

    def part_embedding(self, log) -> dict:
        rows = {name: [] for name in ("one window", *FRAME_EMBEDDINGS)}
        windows = grid(self.frames, self.window, self.window // 2)
        for photo, prompt in self.cases:
            short = self.render(photo, prompt, num_frames=self.window)
            rows["one window"].append(self.scores(short, photo, [list(range(self.window))]))
            one_window_level = rows["one window"][-1]["window_levels"][0]
            for name in FRAME_EMBEDDINGS:
                rows[name].append(self.scores(self.render(photo, prompt, name), photo, windows, one_window_level))
                log(f"embedding {name}: {rows[name][-1]}")
        return summarise(rows)

    def part_windows(self, log) -> dict:
        variants = {
            f"static, overlap {self.window // 2}": {},
            f"uniform, overlap {self.window // 2}": {"window_schedule": "uniform"},
            f"static, overlap {self.window // 4}": {"window_overlap": self.window // 4},
        }
        rows = {name: [] for name in variants}
        for photo, prompt in self.cases:
            for name, settings in variants.items():
                overlap = settings.get("window_overlap", self.window // 2)
                frames = self.render(photo, prompt, **settings)
                rows[name].append(self.scores(frames, photo, grid(self.frames, self.window, overlap)))
                log(f"windows {name}: {rows[name][-1]}")
        return summarise(rows)

    def part_schedule(self, log) -> dict:
        """A rising and a falling schedule, so that a level that only grows along the video (drift) cannot
        pass for one that follows the request; with the chosen frame embedding and per-window ramps."""
        windows = grid(self.frames, self.window, self.window // 2)
        rows = {}
        for embedding in ("clamped", "window"):
            rows[embedding] = row = {"schedules": [], "requested": [], "measured": []}
            for photo, prompt in self.cases:
                for schedule in SCHEDULES:
                    keyframes = parse_intensity_schedule(schedule.replace("LAST", str(self.frames - 1)))
                    asked = np.array(schedule_levels(keyframes, self.frames))
                    frames = self.render(photo, prompt, embedding, intensity=list(asked))
                    row["schedules"] += [schedule] * len(windows)
                    row["requested"] += [float(asked[window].mean()) for window in windows]
                    row["measured"] += window_levels(frames, windows, self.thresholds)
                    log(f"schedule {embedding} {schedule}: measured {row['measured'][-len(windows):]}")
        return {embedding: schedule_summary(row) for embedding, row in rows.items()}

    def part_loop(self, log) -> dict:
        rows = {"loop": [], "no loop": []}
        for photo, prompt in self.cases:
            for name, loop in (("loop", True), ("no loop", False)):
                frames = self.render(photo, prompt, loop=loop)
                pairs = adjacent_ssims(frames)
                wrap = adjacent_ssims(frames[[-1, 0]])[0]
                rows[name].append({"last_to_first_ssim": float(wrap), "mean_adjacent_ssim": float(pairs.mean()),
                                   "seam_to_adjacent": float(wrap / pairs.mean()),
                                   "frame0_psnr": frame0_fidelity(self.reference(photo), frames)[0]})
                log(f"{name}: {rows[name][-1]}")
        return summarise(rows)

    def part_cost(self, log) -> dict:
        photo, prompt = self.cases[0]
        variants = {
            f"{self.window} frames (1 window)": {"num_frames": self.window},
            f"{2 * self.window} frames": {"num_frames": 2 * self.window},
            f"{4 * self.window} frames": {"num_frames": 4 * self.window},
            f"{4 * self.window} frames, loop": {"num_frames": 4 * self.window, "loop": True},
            f"{4 * self.window} frames, uniform": {"num_frames": 4 * self.window, "window_schedule": "uniform"},
            f"{4 * self.window} frames, overlap {self.window // 4}": {"num_frames": 4 * self.window,
                                                                     "window_overlap": self.window // 4},
        }
        rows = {}
        for name, settings in variants.items():
            calls = count_window_calls(self.pipe, self.window, self.steps, settings)
            with PeakMemory() as peak, ForwardTimer(self.pipe.model.unet) as timer:
                started = time.perf_counter()
                self.render(photo, prompt, **settings)
                seconds = time.perf_counter() - started
            window_calls = timer.call_seconds[self.steps:]  # after the prior inversion's one-frame calls
            rows[name] = {"seconds": seconds, "window_calls_per_step": calls, "peak_gb": peak.peak_gb,
                          "median_window_call_s": float(np.median(window_calls))}
            log(f"cost {name}: {rows[name]}")
        return rows


def count_window_calls(pipe, window: int, steps: int, settings: dict) -> float:
    """Windows per sampling step, averaged over the steps (the uniform schedule's vary)."""
    frames = settings["num_frames"]
    windows = pipeline_module.context_windows(frames, pipe.model.unet.max_frames, window, None,
                                              settings.get("window_overlap"), settings.get("window_schedule", "static"),
                                              settings.get("loop", False))
    return float(np.mean([len(windows.windows(frames, step)) for step in range(steps)]))


def schedule_summary(row: dict) -> dict:
    """Spearman of the level asked of each window and the level measured there: over all windows, and
    for each schedule alone."""
    def rho(keep) -> float:
        pairs = [(r, m) for s, r, m in zip(row["schedules"], row["requested"], row["measured"]) if keep(s)]
        return float(spearmanr(*zip(*pairs)).statistic)

    return {**row, "spearman": rho(lambda _: True), **{f"spearman {s}": rho(lambda t, s=s: t == s) for s in SCHEDULES}}


def merge(paths: list[str]) -> dict:
    """Several runs' results (other photos, same settings) as one: per-photo rows joined, means and
    Spearman recomputed."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    merged = {"runs": [{"settings": run["settings"], "parts": [part for part in PARTS if part in run]} for run in runs]}
    for part in PARTS:
        found = [run[part] for run in runs if part in run]
        if not found:
            continue
        merged[part + "_seconds"] = sum(run[part + "_seconds"] for run in runs if part in run)
        if part == "schedule":
            merged[part] = {embedding: schedule_summary({key: sum((f[embedding][key] for f in found), [])
                                                         for key in ("schedules", "requested", "measured")})
                            for embedding in found[0]}
        elif part == "cost":  # each run's time and peak, side by side: the machine's load varies
            merged[part] = {name: {key: [f[name][key] for f in found] for key in found[0][name]} for name in found[0]}
        else:
            merged[part] = summarise({name: sum((f[name]["photos"] for f in found), []) for name in found[0]})
    return merged


def report(results: dict) -> str:
    """The figures, one line a row."""
    lines = []
    for part in PARTS:
        if part not in results:
            continue
        result = results[part]
        if part == "schedule":
            for embedding, row in result.items():
                figures = ", ".join(f"{key} {value:.3f}" for key, value in row.items() if key.startswith("spearman"))
                lines.append(f"schedule, frame embedding {embedding} ({len(row['measured'])} windows): {figures}")
        elif part == "cost":
            lines += [f"cost {name}: {row}" for name, row in result.items()]
        else:
            for name, row in result.items():
                means = ", ".join(f"{key} {value:.4f}" for key, value in row["mean"].items())
                lines.append(f"{part} {name} ({len(row['photos'])} photos): {means}")
    return "\n".join(lines)


def summarise(rows: dict[str, list[dict]]) -> dict:
    """Each row's per-photo scores and their means."""
    summary = {}
    for name, scores in rows.items():
        means = {key: float(np.mean([s[key] for s in scores])) for key in scores[0]
                 if isinstance(scores[0][key], float | int) and not isinstance(scores[0][key], bool)}
        summary[name] = {"mean": means, "photos": scores}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", action="append", choices=PARTS, help="what to measure (default: all but cost)")
    parser.add_argument("--photos", type=int, default=2)
    parser.add_argument("--first", type=int, default=0, help="skip this many photos (to spread photos over runs)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="join the results of runs instead of measuring")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--level", type=int, default=6, help="the intensity asked (parts embedding, windows, loop, cost)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.merge:
        results = merge(args.merge)
        print(report(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        return 0
    torch.set_num_threads(1)
    bench = Bench(args.first, args.photos, args.frames, args.level, args.steps, args.seed)
    results = {"settings": {key: value for key, value in vars(args).items() if key != "json"}}
    for part in args.part or [p for p in PARTS if p != "cost"]:
        started = time.perf_counter()
        results[part] = getattr(bench, f"part_{part}")(lambda message: print(message, file=sys.stderr, flush=True))
        results[part + "_seconds"] = time.perf_counter() - started
        print(report({part: results[part]}))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
