"""The intensity level asked against the level measured, per motion: where the Spearman of
benchmarks/motion_control.py comes from, on more photos.

Renders the motion benchmark's intensity cases (translations and zooms in turn, every level 2..9)
for `--photos` photos of each photo set, and prints the Spearman pooled over all renders, within
each motion, and within each photo (the mean). A low pooled figure beside high within-photo
figures says the model follows the level on each photo but places different photos at different
speeds for the same level.

It also prints the ceiling: the pooled Spearman of an ideal model that gives each photo's motion,
for each level asked, the nearest level the toy world itself reaches on that photo (its own clip of
the scene at a total travel from 3 % to 55 % of the frame). A small shape on a plain background
cannot reach the top levels, nor a large textured one the bottom, at any speed, so even that model
ranks below 1.

    python benchmarks/motion_levels.py --model shipped=livephoto_core/demo_model/livephoto.safetensors \\
        --split validation --json levels.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.motion_control import (  # noqa: E402
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    LEVELS,
    PHOTO_SETS,
    SPLIT_SEEDS,
    TRANSLATIONS,
    ZOOMS,
    Case,
    heldout_specs,
    level_spearman,
    parse_models,
    pipeline_renderer,
)
from livephoto_core.intensity import measure_intensity  # noqa: E402
from livephoto_core.training.toyworld import ToyClipSpec, render_clip, zoom_factor  # noqa: E402

# Total travel of the ideal model's clips, as fractions of the frame: the slow toy data's lowest to
# the toy world's highest (toyworld._TRAVEL_RANGE).
CEILING_TRAVELS = np.geomspace(0.03, 0.55, 12)


def spearman(rows: list[list]) -> float | None:
    """level_spearman of rows [photo set, motion, photo index, level asked, level measured]."""
    return level_spearman([r[3] for r in rows], [r[4] for r in rows])


def summary(rows: list[list]) -> dict:
    """rows: [photo set, motion, photo index, level asked, level measured] -> Spearman figures."""
    photos = sorted({(r[0], r[2]) for r in rows})
    per_photo = [spearman([r for r in rows if (r[0], r[2]) == photo]) for photo in photos]
    per_photo = [value for value in per_photo if value is not None]
    return {
        "pooled": spearman(rows),
        "by_motion": {motion: spearman([r for r in rows if r[1] == motion]) for motion in ("translate", "zoom")},
        "mean_within_photo": float(np.mean(per_photo)) if per_photo else None,
    }


def intensity_specs(seed: int, photos: int, size: int, frames: int, look: str) -> list[ToyClipSpec]:
    """motion_control's intensity cases (its seed + 3: translations and zooms in turn), `photos` of them."""
    return heldout_specs(seed + 3, TRANSLATIONS + ZOOMS, photos, False, size, frames, look)


def reachable_levels(spec: ToyClipSpec, thresholds) -> set[int]:
    """The levels of the toy world's own clips of this scene and motion over CEILING_TRAVELS."""
    steps, size = spec.frames - 1, spec.scene.size
    levels = set()
    for travel in CEILING_TRAVELS * size:
        if spec.motion == "translate":
            speed = travel / steps
        else:
            speed = zoom_factor(travel, size, spec.direction) ** (1.0 / steps)
        levels.add(measure_intensity(render_clip(replace(spec, speed=speed)), thresholds).level)
    return levels


def ceiling_rows(specs: list[ToyClipSpec], photo_set: str, thresholds) -> list[list]:
    """Rows as the model's, from the ideal model: per level asked, the nearest reachable level."""
    rows = []
    for index, spec in enumerate(specs):
        reachable = sorted(reachable_levels(spec, thresholds))
        for level in LEVELS:
            rows.append([photo_set, spec.motion, index, level, min(reachable, key=lambda r: (abs(r - level), r))])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="NAME=PATH of a LivePhoto checkpoint (repeatable)")
    parser.add_argument("--photos", type=int, default=12, help="photos per photo set (default 12)")
    parser.add_argument("--split", choices=tuple(SPLIT_SEEDS), default="validation")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", type=Path, help="also write the rows and figures here")
    parser.add_argument("--ceiling-only", action="store_true",
                        help="print only the ideal model's Spearman, with the model's thresholds (no renders)")
    args = parser.parse_args(argv)

    import torch

    from livephoto_core.loading.assemble import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    seed = SPLIT_SEEDS[args.split]
    if args.ceiling_only:
        for name, checkpoint in parse_models(args.model).items():
            config = load_pipeline(checkpoint).config
            for photo_set, look in PHOTO_SETS.items():
                specs = intensity_specs(seed, args.photos, config.height, config.num_frames, look)
                rows = ceiling_rows(specs, photo_set, config.intensity_thresholds)
                print(f"{name} {photo_set}: ceiling {summary(rows)['pooled']:.3f} ({args.split}, {args.photos} photos)")
        return 0
    results = {}
    for name, checkpoint in parse_models(args.model).items():
        pipe = load_pipeline(checkpoint)
        render = pipeline_renderer(pipe, args.steps, args.guidance, DEFAULT_SCHEDULER)
        size, frames = pipe.config.height, pipe.config.num_frames
        rows, ceiling = [], []
        for photo_set, look in PHOTO_SETS.items():
            specs = intensity_specs(seed, args.photos, size, frames, look)
            ceiling += ceiling_rows(specs, photo_set, pipe.config.intensity_thresholds)
            for index, spec in enumerate(specs):
                photo = Case(spec, photo_set != "toy").photo()
                for level in LEVELS:
                    output = render(photo, spec.caption, level, True, seed)
                    measured = measure_intensity(output, pipe.config.intensity_thresholds).level
                    rows.append([photo_set, spec.motion, index, level, measured])
        figures = {photo_set: {**summary([r for r in rows if r[0] == photo_set]),
                               "ceiling": summary([r for r in ceiling if r[0] == photo_set])["pooled"]}
                   for photo_set in PHOTO_SETS}
        results[name] = {"checkpoint": checkpoint, "figures": figures, "rows": rows, "ceiling_rows": ceiling}
        for photo_set, values in figures.items():
            print(f"{name} {photo_set}: pooled {values['pooled']:.2f} (ceiling {values['ceiling']:.2f}), translations "
                  f"{values['by_motion']['translate']:.2f}, zooms {values['by_motion']['zoom']:.2f}, "
                  f"within a photo {values['mean_within_photo']:.2f}", flush=True)
    if args.json:
        record = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["benchmarks/motion_levels.py", *(argv if argv is not None else sys.argv[1:])]),
            "settings": {"split": args.split, "photos": args.photos, "steps": args.steps, "guidance": args.guidance,
                         "scheduler": DEFAULT_SCHEDULER, "levels": list(LEVELS), "prior_inversion": True},
            "rows_are": "[photo set, motion, photo index, level asked, level measured]",
            "models": results,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
