"""Motion-control benchmark: does the model do what the prompt and the intensity level ask?

On toy-world photos and prompt phrasings held out from training (livephoto_core.training.toyworld's
"heldout" stream and templates), for each model one row of:

- direction: the named shape's displacement between first and last frame (a least-squares track of
  its centroid) against the prompt's left/right/up/down; chance 25 %;
- zoom: whether the shapes grow or shrink, against "zoom in"/"zoom out"; chance 50 %;
- Spearman: rank correlation of the requested level (2..9) and the level measured on the output;
- frame-0 PSNR and SSIM against the photo (the VAE's own round trip is printed as the bound);
- conflict: direction accuracy when the prompt names a colour and shape the photo does not have.

    python benchmarks/motion_control.py                      # the bundled demo model
    python benchmarks/motion_control.py --model full=runs/demo/export/step-003000/livephoto.safetensors \\
        --model "no reweighting=runs/ablation-reweighting/export/step-001000/livephoto.safetensors" \\
        --json benchmarks/results_motion.json

Each model is scored with prior inversion and, as the inference-only ablation, without it
(--inversion on|off|both; default both).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from livephoto_core.training.toyworld import (  # noqa: E402
    ToyClipSpec,
    clip_spec,
    displacement_direction,
    render_photo,
    zoom_direction,
)

TRANSLATIONS = ("left", "right", "up", "down")
ZOOMS = ("zoom_in", "zoom_out")
LEVELS = tuple(range(2, 10))

# (photo uint8 [H, W, 3], prompt, level, prior inversion, seed) -> frames float [F, H, W, 3] in 0..1
Render = Callable[[np.ndarray, str, int, bool, int], np.ndarray]


@dataclass
class Workload:
    """How many held-out clips each metric uses, and the settings every render shares."""

    direction_clips: int = 32  # split evenly over left/right/up/down
    zoom_clips: int = 16  # split evenly over in/out
    intensity_photos: int = 6  # each rendered at every level of LEVELS
    conflict_clips: int = 16
    direction_level: int = 7  # the level for direction, zoom and conflict: clearly visible motion
    seed: int = 20261126  # held-out scenes: toyworld's "heldout" stream of this seed


@dataclass
class Scores:
    direction: list[bool] = field(default_factory=list)
    zoom: list[bool] = field(default_factory=list)
    conflict: list[bool] = field(default_factory=list)
    requested_levels: list[int] = field(default_factory=list)
    measured_levels: list[int] = field(default_factory=list)
    frame0_psnr: list[float] = field(default_factory=list)
    frame0_ssim: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        # Undefined (None) when either side is constant, e.g. a model that ignores the level.
        varied = len(set(self.requested_levels)) > 1 and len(set(self.measured_levels)) > 1
        rho = spearmanr(self.requested_levels, self.measured_levels).statistic if varied else None
        return {
            "direction_accuracy": _mean(self.direction),
            "zoom_accuracy": _mean(self.zoom),
            "conflict_direction_accuracy": _mean(self.conflict),
            "intensity_spearman": None if rho is None else float(rho),
            "frame0_psnr_db": _mean(self.frame0_psnr),
            "frame0_ssim": _mean(self.frame0_ssim),
            "clips": len(self.frame0_psnr),
            "seconds_per_clip": self.seconds / max(len(self.frame0_psnr), 1),
            "counts": {"direction": len(self.direction), "zoom": len(self.zoom), "conflict": len(self.conflict),
                       "intensity": len(self.measured_levels)},
        }


def _mean(values: list) -> float | None:
    return float(np.mean(values)) if values else None


# --- the held-out clips ---------------------------------------------------------------------------------


def heldout_specs(seed: int, motions: tuple[str, ...], count: int, conflict: bool, size: int, frames: int
                  ) -> list[ToyClipSpec]:
    """`count` held-out clips, the motions in turn (balanced), all with or all without a content conflict."""
    specs = []
    for index in range(count):
        motion = motions[index % len(motions)]
        specs.append(clip_spec(seed, index, "heldout", size=size, frames=frames,
                               conflict_rate=1.0 if conflict else 0.0, motion_weights={motion: 1.0}))
    return specs


def subject_colour(spec: ToyClipSpec) -> str:
    return spec.scene.shapes[spec.subject].colour


# --- scoring one output ---------------------------------------------------------------------------------


def frame0_fidelity(photo: np.ndarray, frames: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of the first frame against the photo, both in 0..1."""
    reference = photo.astype(np.float64) / 255.0
    first = frames[0].astype(np.float64)
    with np.errstate(divide="ignore"):  # identical frames: infinite PSNR
        psnr = peak_signal_noise_ratio(reference, first, data_range=1.0)
    ssim = structural_similarity(reference, first, data_range=1.0, channel_axis=-1)
    return float(psnr), float(ssim)


def moved_as_asked(spec: ToyClipSpec, frames: np.ndarray) -> bool:
    """The subject moved in the caption's direction (translations) or the view zoomed as asked."""
    if spec.motion == "translate":
        return displacement_direction(frames, subject_colour(spec)) == spec.direction
    if spec.motion == "zoom":
        return zoom_direction(frames) == spec.direction
    raise ValueError(f"no direction to score for a {spec.motion} clip")


# --- one model ------------------------------------------------------------------------------------------


def evaluate(render: Render, measure_level: Callable[[np.ndarray], int], workload: Workload, size: int,
             frames: int, prior_inversion: bool = True, progress: Callable[[str], None] = lambda _: None) -> Scores:
    """Render every held-out case with `render` and score it."""
    scores = Scores()
    started = time.perf_counter()

    def run(spec: ToyClipSpec, level: int) -> np.ndarray:
        photo = render_photo(spec)
        output = render(photo, spec.caption, level, prior_inversion, workload.seed)
        psnr, ssim = frame0_fidelity(photo, output)
        scores.frame0_psnr.append(psnr)
        scores.frame0_ssim.append(ssim)
        return output

    level = workload.direction_level
    for spec in heldout_specs(workload.seed, TRANSLATIONS, workload.direction_clips, False, size, frames):
        scores.direction.append(moved_as_asked(spec, run(spec, level)))
    progress(f"direction {_mean(scores.direction)}")
    for spec in heldout_specs(workload.seed + 1, ZOOMS, workload.zoom_clips, False, size, frames):
        scores.zoom.append(moved_as_asked(spec, run(spec, level)))
    progress(f"zoom {_mean(scores.zoom)}")
    for spec in heldout_specs(workload.seed + 2, TRANSLATIONS, workload.conflict_clips, True, size, frames):
        scores.conflict.append(moved_as_asked(spec, run(spec, level)))
    progress(f"conflict {_mean(scores.conflict)}")
    for spec in heldout_specs(workload.seed + 3, TRANSLATIONS + ZOOMS, workload.intensity_photos, False, size,
                              frames):
        for requested in LEVELS:
            scores.requested_levels.append(requested)
            scores.measured_levels.append(measure_level(run(spec, requested)))
    progress(f"intensity {scores.summary()['intensity_spearman']}")
    scores.seconds = time.perf_counter() - started
    return scores


def pipeline_renderer(pipe, steps: int, guidance: float) -> Render:
    def render(photo, prompt, level, prior_inversion, seed):
        result = pipe(photo, prompt, intensity=level, num_inference_steps=steps, guidance_scale=guidance,
                      seed=seed, prior_inversion=prior_inversion)
        return result.frames.numpy()

    return render


def vae_round_trip_psnr(pipe, workload: Workload, count: int = 16) -> float:
    """Frame-0 PSNR's ceiling: the photo through the model's VAE and back."""
    import torch

    from livephoto_core.encoding import decode_latents, encode_photo

    config = pipe.config
    values = []
    for spec in heldout_specs(workload.seed, TRANSLATIONS, count, False, config.height, config.num_frames):
        photo = render_photo(spec)
        pixels = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            decoded = decode_latents(pipe.vae, encode_photo(pipe.vae, pixels))
        values.append(frame0_fidelity(photo, decoded.numpy())[0])
    return float(np.mean(values))


INVERSION_ROWS = {"with inversion": True, "without prior inversion": False}


def benchmark_model(checkpoint: str | None, workload: Workload, steps: int, guidance: float, rows: list[str],
                    log: Callable[[str], None]) -> dict:
    from livephoto_core.intensity import measure_intensity
    from livephoto_core.loading.assemble import load_pipeline

    pipe = load_pipeline(checkpoint)
    thresholds = pipe.config.intensity_thresholds
    render = pipeline_renderer(pipe, steps, guidance)

    def measure_level(frames: np.ndarray) -> int:
        return measure_intensity(frames, thresholds).level

    size, frames = pipe.config.height, pipe.config.num_frames
    scored = {
        row: evaluate(render, measure_level, workload, size, frames, INVERSION_ROWS[row], log).summary() for row in rows
    }
    return {"rows": scored, "vae_round_trip_psnr_db": vae_round_trip_psnr(pipe, workload)}


# --- the table ------------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: dict[str, dict]) -> str:
    lines = [
        "| model | direction | zoom | Spearman | frame-0 PSNR (VAE bound) | frame-0 SSIM | conflict direction | s/clip |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        bound = result["vae_round_trip_psnr_db"]
        for variant, row in result["rows"].items():
            label = name if variant == "with inversion" else f"{name}, {variant}"
            lines.append(
                f"| {label} | {_percent(row['direction_accuracy'])} | {_percent(row['zoom_accuracy'])} | "
                f"{_number(row['intensity_spearman'], 2)} | {_number(row['frame0_psnr_db'], 1)} dB "
                f"({bound:.1f} dB) | {_number(row['frame0_ssim'], 3)} | "
                f"{_percent(row['conflict_direction_accuracy'])} | {row['seconds_per_clip']:.2f} |"
            )
    return "\n".join(lines)


def parse_models(values: list[str] | None) -> dict[str, str | None]:
    """--model NAME=PATH (repeatable); none: the bundled demo model."""
    if not values:
        return {"demo model": None}
    models = {}
    for value in values:
        name, separator, path = value.partition("=")
        if not separator or not path:
            raise SystemExit(f"--model takes NAME=PATH, e.g. full=runs/demo/export/step-003000/livephoto.safetensors; "
                             f"got {value!r}")
        models[name] = path
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="NAME=PATH of a LivePhoto checkpoint (repeatable)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    parser.add_argument("--guidance", type=float, default=4.0, help="CFG scale (default 4)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every clip count (0.25 for a quick look)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--inversion", choices=("both", "on", "off"), default="both",
                        help="score with prior inversion, without it (the inference-only ablation), or both")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = Workload()
    workload = Workload(**{
        name: max(1, round(getattr(defaults, name) * args.scale))
        for name in ("direction_clips", "zoom_clips", "intensity_photos", "conflict_clips")
    })
    results = {}
    for name, checkpoint in parse_models(args.model).items():
        def log(message: str, name=name) -> None:
            print(f"  {name}: {message}", file=sys.stderr, flush=True)

        rows = {"both": list(INVERSION_ROWS), "on": ["with inversion"], "off": ["without prior inversion"]}
        results[name] = benchmark_model(checkpoint, workload, args.steps, args.guidance, rows[args.inversion], log)
        results[name]["checkpoint"] = checkpoint
    print(table(results))
    if args.json:
        record = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["benchmarks/motion_control.py", *(argv if argv is not None else sys.argv[1:])]),
            "settings": {"steps": args.steps, "guidance": args.guidance, "workload": workload.__dict__,
                         "levels": list(LEVELS)},
            "results": results,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
