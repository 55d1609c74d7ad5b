"""The demo model's motions side by side: one held-out photo, six motion prompts, three levels.

    python benchmarks/motion_strip.py -o docs/images/demo-motions.png [--model CKPT]

Each row is one render (8 frames, left to right), labelled with the prompt's motion, the level asked
and the level measured on the output. The photo is the first held-out toy scene (the benchmark's
own stream) whose shape has room to move a fifth of the frame in every direction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.motion_control import Workload, centred_translations, with_direction  # noqa: E402
from livephoto_core.defaults import DEFAULT_SCHEDULER, DEFAULT_STEPS  # noqa: E402
from livephoto_core.training.toyworld import render_photo  # noqa: E402

MOTIONS = ("left", "right", "up", "down", "in", "out")
LEVELS = (2, 5, 8)


def strip_rows(pipe, seed: int, steps: int, guidance: float) -> tuple[list[np.ndarray], list[str], str]:
    """(rows of uint8 frames, their labels, the photo's description)."""
    config = pipe.config
    (spec,) = centred_translations(Workload().seed, 1, config.height, config.num_frames, "classic")
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for direction in MOTIONS:
        prompt = with_direction(spec, direction, rng).caption
        for level in LEVELS:
            output = pipe(render_photo(spec), prompt, intensity=level, num_inference_steps=steps,
                          guidance_scale=guidance, seed=seed)
            rows.append((output.frames.numpy() * 255).round().astype(np.uint8))
            labels.append(f"{prompt}\nlevel {level} -> {output.intensity.level}")
    shape = spec.scene.shapes[spec.subject]
    return rows, labels, (f"held-out photo: a {shape.colour} {shape.kind}; seed {seed}, {steps} {DEFAULT_SCHEDULER} "
                          f"steps, CFG {guidance}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--model", help="LivePhoto checkpoint (default: the bundled demo model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=4.0)
    args = parser.parse_args(argv)

    from livephoto_core.fileio import atomic_write
    from livephoto_core import load_pipeline
    from livephoto_core.training.validation import strip_image

    pipe = load_pipeline(args.model)
    rows, labels, title = strip_rows(pipe, args.seed, args.steps, args.guidance)
    image = strip_image(rows, labels, title)
    with atomic_write(args.output) as temporary:
        image.save(temporary, format="PNG")
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
