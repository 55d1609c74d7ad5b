"""How far a reduced-precision render is from the fp32 render of the same photo, prompt and seed.

Renders the motion benchmark's held-out direction cases (each photo under the four direction
prompts, benchmarks/motion_control.py) once in float32 and once in each other dtype, and reports:

- PSNR of the other dtype's frames against fp32's, per video (mean, worst, and frame 0 alone);
- how many renders move the same way as fp32's, and how many move as the prompt asks;
- with --full-size, the PSNR of one full-size video (random weights) against its fp32 render.

This is the measurement behind `--dtype auto` (livephoto_core.precision): the bound it checks is
documented in docs/performance.md.

    python benchmarks/dtype_difference.py --photos 8 --full-size --threads 1 --json benchmarks/results_dtype_difference.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from skimage.metrics import peak_signal_noise_ratio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.motion_control import (  # noqa: E402
    PHOTO_SETS,
    Case,
    Workload,
    direction_cases,
    moved_as_asked,
    pipeline_renderer,
    subject_colour,
)
from benchmarks.motion_measure import displacement_direction  # noqa: E402
from livephoto_core.defaults import DEFAULT_SCHEDULER, DEFAULT_STEPS  # noqa: E402


def psnr(reference: np.ndarray, other: np.ndarray) -> float:
    with np.errstate(divide="ignore"):  # identical frames: infinite PSNR
        return float(peak_signal_noise_ratio(reference.astype(np.float64), other.astype(np.float64), data_range=1.0))


def render_all(pipe, cases: list[Case], steps: int, guidance: float, scheduler: str,
               level: int) -> tuple[list[np.ndarray], float]:
    """Every case's frames, and the seconds per video."""
    render = pipeline_renderer(pipe, steps, guidance, scheduler)  # as the motion benchmark renders
    started = time.perf_counter()
    renders = [render(case.photo(), case.spec.caption, level, True, index) for index, case in enumerate(cases)]
    return renders, (time.perf_counter() - started) / len(cases)


def compare(reference: list[np.ndarray], other: list[np.ndarray], cases: list[Case]) -> dict:
    video = [psnr(a, b) for a, b in zip(reference, other)]
    first = [psnr(a[0], b[0]) for a, b in zip(reference, other)]
    same_way = [displacement_direction(a, subject_colour(c.spec)) == displacement_direction(b, subject_colour(c.spec))
                for a, b, c in zip(reference, other, cases)]
    return {
        "video_psnr_db_mean": float(np.mean(video)), "video_psnr_db_worst": float(np.min(video)),
        "frame0_psnr_db_mean": float(np.mean(first)), "frame0_psnr_db_worst": float(np.min(first)),
        "same_direction_as_float32": int(sum(same_way)),
        "moved_as_asked": int(sum(moved_as_asked(case.spec, frames) for case, frames in zip(cases, other))),
        "videos": len(cases),
    }


def full_size_difference(dtypes: list[str], frames: int, resolution: int, steps: int, scheduler: str) -> dict:
    """The same comparison on full-size SD-1.5 LivePhoto with random weights (benchmarks/models.py: each dtype's
    weights are float32's rounded to it, as loading a checkpoint in that dtype rounds them): numerical drift
    through the real depth, one guided video with prior inversion per dtype."""
    import gc
    import shutil
    import tempfile

    import torch

    from benchmarks.cases import sample_photo
    from benchmarks.models import NEGATIVE_PROMPT, PROMPT, build_components, livephoto_pipeline

    videos, seconds = {}, {}
    for dtype in ("float32", *dtypes):
        scratch = Path(tempfile.mkdtemp(prefix="livephoto-dtype-"))
        try:
            torch_dtype = getattr(torch, dtype)
            pipe = livephoto_pipeline(build_components("full", scratch / "tokenizer", dtype=torch_dtype), torch_dtype)
            started = time.perf_counter()
            videos[dtype] = pipe(sample_photo(resolution, resolution), PROMPT, negative_prompt=NEGATIVE_PROMPT,
                                 num_frames=frames, num_inference_steps=steps, scheduler=scheduler, seed=0,
                                 height=resolution, width=resolution).frames.float().numpy()
            seconds[dtype] = time.perf_counter() - started
            del pipe
            gc.collect()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    rows = {"float32": {"seconds_per_video": seconds["float32"]}}
    for dtype in dtypes:
        reference, other = videos["float32"], videos[dtype]
        rows[dtype] = {"video_psnr_db": psnr(reference, other), "frame0_psnr_db": psnr(reference[0], other[0]),
                       "seconds_per_video": seconds[dtype]}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="a LivePhoto checkpoint with a bundled base (default: the bundled demo model)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"], help="compared with float32 (default bfloat16)")
    parser.add_argument("--photos", type=int, default=8, help="held-out photos per set, each under 4 prompts (8)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampling steps (default {DEFAULT_STEPS})")
    parser.add_argument("--scheduler", default=DEFAULT_SCHEDULER, help=f"sampler (default {DEFAULT_SCHEDULER})")
    parser.add_argument("--guidance", type=float, default=4.0, help="CFG scale (default 4, the motion benchmark's)")
    parser.add_argument("--full-size", action="store_true",
                        help="also compare on full-size SD-1.5 LivePhoto with random weights (8 x 256 x 256, ~10 GB)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    from livephoto_core.loading.assemble import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    workload = Workload(direction_photos=args.photos)
    pipes = {dtype: load_pipeline(args.model, dtype=getattr(torch, dtype)) for dtype in ("float32", *args.dtypes)}
    size, frames = pipes["float32"].config.height, pipes["float32"].config.num_frames
    results = {}
    for photo_set, look in PHOTO_SETS.items():
        cases = [Case(spec, full_resolution=photo_set == "photos")
                 for specs in direction_cases(workload, size, frames, look) for spec in specs]
        renders, rows = {}, {}
        for dtype, pipe in pipes.items():
            renders[dtype], seconds = render_all(pipe, cases, args.steps, args.guidance, args.scheduler,
                                                 workload.direction_level)
            if dtype == "float32":
                asked = sum(moved_as_asked(case.spec, video) for case, video in zip(cases, renders[dtype]))
                rows[dtype] = {"moved_as_asked": int(asked), "videos": len(cases)}
            else:
                rows[dtype] = compare(renders["float32"], renders[dtype], cases)
            rows[dtype]["seconds_per_video"] = seconds
        results[photo_set] = rows
        for dtype, row in rows.items():
            print(f"{photo_set:7s} {dtype:9s} " + "  ".join(
                f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}" for key, value in row.items()))
    if args.full_size:
        results["full size, random weights"] = rows = full_size_difference(args.dtypes, 8, 256, args.steps,
                                                                           args.scheduler)
        for dtype, row in rows.items():
            print(f"full    {dtype:9s} " + "  ".join(f"{key} {value:.2f}" for key, value in row.items()))
    if args.json:
        record = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["benchmarks/dtype_difference.py", *(argv if argv is not None else sys.argv[1:])]),
            "settings": {"steps": args.steps, "scheduler": args.scheduler, "guidance": args.guidance,
                         "threads": args.threads, "level": workload.direction_level, "model": args.model},
            "results": results,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
