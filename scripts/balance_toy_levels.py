"""Write a training index of toy-world clips in which every motion covers the intensity levels evenly:
``python scripts/balance_toy_levels.py --data data/toy2/train data/toy2slow/train --out data/toy2_levels.csv``.

Why: a clip's level is its mean adjacent-frame SSIM, so it depends on the scene as much as on the
speed. In the toy world's default data a translation of a large shape hardly ever falls below level
5, and most zooms sit at levels 2-4, so each motion sees some levels far more often than others.
This index draws, for each motion, the same number of clips from every level that motion has in the
data (repeating clips of a rare level, at most `--max-repeats` times), and gives each motion its
share of the rows. On the demo model a phase on such an index ranked levels no better than as many
steps on the old index (docs/demo-model.md, seventh session): it is a tool for a recipe, not a fix.

Levels are measured as training measures them (the same labelling pass and cache), with the
thresholds of the checkpoint the index is for. Clips come from each data set's labels.jsonl
(toyworld.write_dataset), so only toy-world data sets work here.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a git checkout works without installing

EXIT_USAGE = 2
# The second phase's mix: half zooms (the motion it had to learn), the rest as the toy world draws them.
DEFAULT_SHARES = {"zoom": 0.5, "translate": 0.37, "rotate": 0.08, "still": 0.05}


def parse_shares(text: str) -> dict[str, float]:
    """"zoom=0.5,translate=0.5" -> {"zoom": 0.5, "translate": 0.5}."""
    shares = {}
    for part in text.split(","):
        motion, _, share = part.partition("=")
        try:
            shares[motion.strip()] = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not MOTION=SHARE (e.g. zoom=0.5)") from None
    if any(share < 0 for share in shares.values()) or sum(shares.values()) <= 0:
        raise argparse.ArgumentTypeError(f"shares {text!r} must be >= 0 and not all 0")
    return shares


def balanced_rows(clips_by_motion_level: dict[str, dict[int, list]], shares: dict[str, float], rows: int,
                  max_repeats: int, min_clips: int, rng: np.random.Generator) -> list:
    """Per motion, round(rows * share) clips spread evenly over the levels holding at least min_clips
    clips; a level with too few clips for its quota repeats them up to max_repeats times."""
    total_share = sum(shares.values())
    chosen = []
    for motion, share in shares.items():
        levels = {level: clips for level, clips in clips_by_motion_level.get(motion, {}).items()
                  if len(clips) >= min_clips}
        if not levels:
            raise ValueError(f"no clips of motion {motion!r} in the data")
        quota = round(rows * share / total_share) // len(levels)
        for level in sorted(levels):
            clips = levels[level]
            take = min(quota, len(clips) * max_repeats)
            whole, rest = divmod(take, len(clips))
            picks = list(clips) * whole + [clips[i] for i in rng.choice(len(clips), rest, replace=False)]
            chosen.extend(picks)
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a toy-world index balanced over intensity levels per motion.")
    parser.add_argument("--data", nargs="+", required=True, help="toy data set folders (each with labels.jsonl)")
    parser.add_argument("--out", required=True, help="the index to write (CSV path,caption; paths relative to it)")
    parser.add_argument("--thresholds-from", default="configs/train/demo_second_phase.json",
                        help="a training config whose data.thresholds label the levels (the checkpoint's)")
    parser.add_argument("--shares", type=parse_shares, default=DEFAULT_SHARES,
                        help="share of the rows per motion, e.g. zoom=0.5,translate=0.5 (default: "
                             + ",".join(f"{k}={v}" for k, v in DEFAULT_SHARES.items()) + ")")
    parser.add_argument("--rows", type=int, default=4000, help="rows to write (default 4000)")
    parser.add_argument("--max-repeats", type=int, default=3, help="most times one clip is listed (default 3)")
    parser.add_argument("--min-clips", type=int, default=20,
                        help="a level with fewer clips of a motion is left out for that motion (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes for the labelling pass")
    args = parser.parse_args(argv)

    from livephoto_core.errors import LivePhotoError
    from livephoto_core.intensity import level_from_ssim
    from livephoto_core.training.data import ClipSampling, VideoEntry, label_videos

    out = Path(args.out)
    if out.exists():
        print(f"error: {out} exists; choose another --out or delete it", file=sys.stderr)
        return EXIT_USAGE
    try:
        data = json.loads(Path(args.thresholds_from).read_text())["data"]
        sampling = ClipSampling(num_frames=data["num_frames"], stride=data["stride"], size=data["size"])
        entries, motions = [], {}
        for folder in map(Path, args.data):
            with open(folder / "labels.jsonl") as handle:  # what toyworld.write_dataset writes
                for line in handle:
                    label = json.loads(line)
                    path = (folder / label["path"]).resolve()
                    entries.append(VideoEntry(path, label["caption"]))
                    motions[path] = label["motion"]
        labelled = label_videos(entries, sampling, out.with_name(out.stem + ".labels.jsonl"), args.workers,
                                data["thresholds"])
        clips = defaultdict(lambda: defaultdict(list))
        for video in labelled.videos:
            clips[motions[video.path]][level_from_ssim(video.ssim, labelled.thresholds)].append(video)
        rows = balanced_rows(clips, args.shares, args.rows, args.max_repeats, args.min_clips,
                             np.random.default_rng(args.seed))
    except (LivePhotoError, OSError, ValueError, KeyError) as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_USAGE

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "caption"])
        writer.writerows((os.path.relpath(video.path, out.parent.resolve()), video.caption) for video in rows)
    os.replace(partial, out)
    for motion in sorted(clips):
        counts = [len(clips[motion].get(level, ())) for level in range(1, 11)]
        print(f"{motion}: clips per level 1-10 {counts}")
    print(f"{len(rows)} rows written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
