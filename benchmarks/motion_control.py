"""Motion-control benchmark: does the model do what the prompt and the intensity level ask?

Held-out toy-world scenes (toyworld's "heldout" stream, which training never draws) and held-out
phrasings (new combinations of trained words), rendered through the pipeline as the CLI renders
them, on two photo sets:

- "toy": photos at the model's size in the first toy world's look;
- "photos": a different look (textured and graded backgrounds, squeezed shapes) in photos 4x the
  model's size, which the pipeline scales down as it scales a user's photo.

For each model and photo set, one row of:

- direction: every photo is rendered under all four direction prompts (left/right/up/down, naming
  its shape); the shape's least-squares centroid track against the prompt; chance 25 %;
- zoom: every photo under "zoom in" and "zoom out"; whether the shapes grow or shrink; chance 50 %;
- Spearman: rank correlation of the requested level (2..9) and the level measured on the output;
- frame-0 PSNR and SSIM against the photo (the VAE's own round trip is printed as the bound);
- conflict: direction accuracy when the prompt names a colour and shape the photo does not have;
- text dependence: the pixel spread between one photo's four direction renders, and the
  caption-swap probe: the denoising loss with the clip's direction word swapped for its opposite,
  relative to the true caption's, at several noise levels (0: the model ignores the word);
- first-step direction: whether the clean clip the model predicts at the first sampling step, from
  pure noise, moves as each direction prompt asks (where a render's direction is decided; one UNet
  call per case, so a quick read while a model trains);
- token weights: the reweighter's mean weight on motion words and on content words.

Accuracies come with 95 % Wilson intervals.

    python benchmarks/motion_control.py                      # the bundled demo model
    python benchmarks/motion_control.py --model full=runs/demo/export/step-003000/livephoto.safetensors \\
        --model "no reweighting=runs/ablation-reweighting/export/step-003000/livephoto.safetensors" \\
        --json benchmarks/results_motion.json

Each model is scored with prior inversion and, as the inference-only ablation, without it
(--inversion on|off|both; default both).

Pick checkpoints with --split validation: the same metrics on other held-out scenes (another seed of
the heldout stream), so that the test scenes, the default, never take part in choosing a model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.motion_measure import displacement_direction, zoom_direction  # noqa: E402
from livephoto_core.defaults import DEFAULT_SCHEDULER, DEFAULT_STEPS  # noqa: E402
from livephoto_core.images import prepare_photo  # noqa: E402
from livephoto_core.sampling import SCHEDULERS  # noqa: E402
from livephoto_core.training.toyworld import (  # noqa: E402
    PALETTE,
    SHAPE_KINDS,
    TEMPLATES,
    ToyClipSpec,
    caption,
    clip_spec,
    render_photo,
)

TRANSLATIONS = ("left", "right", "up", "down")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "in": "out", "out": "in"}
ZOOMS = ("zoom_in", "zoom_out")
LEVELS = tuple(range(2, 10))
PHOTO_SETS = {"toy": "classic", "photos": "photo"}  # photo set -> toyworld look
# Split -> seed of the heldout stream. Test scenes score models; validation scenes pick checkpoints.
SPLIT_SEEDS = {"test": 20261126, "validation": 20261206}
SWAP_TIMESTEPS = (999, 900, 700, 500, 300)
# Words that say how things move, and words that say what is in the photo (for the token weights).
CONTENT_WORDS = frozenset(PALETTE) | frozenset(SHAPE_KINDS)
MOTION_WORDS = frozenset(
    {"left", "right", "up", "down", "in", "out", "still", "static"}
    | {w for by_split in TEMPLATES.values() for templates in by_split.values() for t in templates for w in t.split()
       if w.startswith(("mov", "slid", "go", "zoom", "rotat", "spin", "stay"))}
)

# (photo uint8 [H, W, 3], prompt, level, prior inversion, seed) -> frames float [F, H, W, 3] in 0..1
Render = Callable[[np.ndarray, str, int, bool, int], np.ndarray]


@dataclass
class Workload:
    """How many held-out photos each metric uses, and the settings every render shares."""

    direction_photos: int = 32  # each rendered under the four direction prompts: 4x as many clips
    zoom_photos: int = 16  # each rendered zooming in and out
    intensity_photos: int = 6  # each rendered at every level of LEVELS
    conflict_clips: int = 16
    swap_clips: int = 16  # translation clips of the caption-swap probe
    direction_level: int = 7  # the level for direction, zoom and conflict: clearly visible motion
    seed: int = SPLIT_SEEDS["test"]  # held-out scenes: toyworld's "heldout" stream of this seed


@dataclass(frozen=True)
class Case:
    """One render: the clip the prompt asks for (its caption is the prompt) and the photo given."""

    spec: ToyClipSpec
    full_resolution: bool  # the photo set's photos are larger than the model's size

    def photo(self) -> np.ndarray:
        return render_photo(self.spec, self.full_resolution)

    def reference(self) -> np.ndarray:
        """The photo as the pipeline sees it, at the model's size: what frame 0 should reproduce."""
        size = self.spec.scene.size
        prepared = prepare_photo(self.photo(), (size, size)).pixels  # [3, H, W] in 0..1
        return np.round(prepared.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


@dataclass
class Scores:
    direction: list[bool] = field(default_factory=list)
    zoom: list[bool] = field(default_factory=list)
    conflict: list[bool] = field(default_factory=list)
    requested_levels: list[int] = field(default_factory=list)
    measured_levels: list[int] = field(default_factory=list)
    frame0_psnr: list[float] = field(default_factory=list)
    frame0_ssim: list[float] = field(default_factory=list)
    direction_spread: list[float] = field(default_factory=list)  # per photo: mean |a - b| over render pairs
    seconds: float = 0.0

    def summary(self) -> dict:
        return {
            "direction_accuracy": _mean(self.direction),
            "direction_ci95": wilson_interval(self.direction),
            "zoom_accuracy": _mean(self.zoom),
            "zoom_ci95": wilson_interval(self.zoom),
            "conflict_direction_accuracy": _mean(self.conflict),
            "conflict_ci95": wilson_interval(self.conflict),
            "intensity_spearman": level_spearman(self.requested_levels, self.measured_levels),
            "frame0_psnr_db": _mean(self.frame0_psnr),
            "frame0_ssim": _mean(self.frame0_ssim),
            "direction_pixel_spread": _mean(self.direction_spread),
            "clips": len(self.frame0_psnr),
            "seconds_per_clip": self.seconds / max(len(self.frame0_psnr), 1),
            "counts": {"direction": len(self.direction), "zoom": len(self.zoom), "conflict": len(self.conflict),
                       "intensity": len(self.measured_levels)},
        }


def level_spearman(requested: list[int], measured: list[int]) -> float | None:
    """Rank correlation of the levels asked and measured; None when either side is constant (e.g. a
    model that ignores the level), where it is undefined."""
    if len(set(requested)) < 2 or len(set(measured)) < 2:
        return None
    return float(spearmanr(requested, measured).statistic)


def _mean(values: list) -> float | None:
    return float(np.mean(values)) if values else None


def wilson_interval(hits: list[bool], z: float = 1.96) -> tuple[float, float] | None:
    """95 % Wilson score interval of a success rate (sound at 0 % and 100 %, unlike the normal one)."""
    n = len(hits)
    if not n:
        return None
    p = sum(hits) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


# --- the held-out cases ---------------------------------------------------------------------------------


def heldout_specs(seed: int, motions: tuple[str, ...], count: int, conflict: bool, size: int, frames: int,
                  look: str = "classic") -> list[ToyClipSpec]:
    """`count` held-out clips, the motions in turn (balanced), all with or all without a content conflict."""
    specs = []
    for index in range(count):
        motion = motions[index % len(motions)]
        specs.append(clip_spec(seed, index, "heldout", size=size, frames=frames, look=look,
                               conflict_rate=1.0 if conflict else 0.0, motion_weights={motion: 1.0}))
    return specs


def with_direction(spec: ToyClipSpec, direction: str, rng: np.random.Generator) -> ToyClipSpec:
    """The same scene moving `direction` (a translation's or a zoom's), with a held-out caption for it."""
    subject = spec.scene.shapes[spec.subject]
    motion = "zoom" if direction in ("in", "out") else "translate"
    speed = spec.speed
    if motion == "zoom" and (speed > 1) != (direction == "in"):
        speed = 1 / speed
    text, _ = caption(rng, motion, direction, "heldout", subject.colour, subject.kind, need_content=motion != "zoom")
    return replace(spec, motion=motion, direction=direction, speed=speed, caption=text, phrasing="heldout")


def centred_translations(seed: int, count: int, size: int, frames: int, look: str) -> list[ToyClipSpec]:
    """Held-out one-shape scenes whose shape has room to move a fifth of the frame in every direction."""
    specs, index = [], 0
    while len(specs) < count:
        spec = clip_spec(seed, index, "heldout", size=size, frames=frames, look=look, conflict_rate=0.0,
                         two_shape_rate=0.0, motion_weights={"left": 1.0})
        index += 1
        shape = spec.scene.shapes[spec.subject]
        travel = 0.2 * size
        if all(shape.radius + travel <= c <= size - shape.radius - travel for c in shape.centre):
            specs.append(replace(spec, speed=travel / (frames - 1)))
    return specs


def direction_cases(workload: Workload, size: int, frames: int, look: str) -> list[list[ToyClipSpec]]:
    """Per photo, its scene moving in each of the four directions."""
    rng = np.random.default_rng([workload.seed, 0])
    return [[with_direction(spec, d, rng) for d in TRANSLATIONS]
            for spec in centred_translations(workload.seed, workload.direction_photos, size, frames, look)]


def zoom_cases(workload: Workload, size: int, frames: int, look: str) -> list[list[ToyClipSpec]]:
    rng = np.random.default_rng([workload.seed, 1])
    specs = heldout_specs(workload.seed + 1, ("zoom_in",), workload.zoom_photos, False, size, frames, look)
    return [[with_direction(spec, d, rng) for d in ("in", "out")] for spec in specs]


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


def pixel_spread(renders: list[np.ndarray]) -> float:
    """Mean absolute pixel difference over every pair of renders of one photo."""
    pairs = [(a, b) for i, a in enumerate(renders) for b in renders[i + 1 :]]
    return float(np.mean([np.abs(a - b).mean() for a, b in pairs]))


# --- one model ------------------------------------------------------------------------------------------


def evaluate(render: Render, measure_level: Callable[[np.ndarray], int], workload: Workload, size: int,
             frames: int, prior_inversion: bool = True, photo_set: str = "toy",
             progress: Callable[[str], None] = lambda _: None) -> Scores:
    """Render every held-out case of one photo set with `render` and score it."""
    look = PHOTO_SETS[photo_set]
    full_resolution = photo_set != "toy"
    scores = Scores()
    started = time.perf_counter()

    def run(spec: ToyClipSpec, level: int) -> np.ndarray:
        case = Case(spec, full_resolution)
        output = render(case.photo(), spec.caption, level, prior_inversion, workload.seed)
        psnr, ssim = frame0_fidelity(case.reference(), output)
        scores.frame0_psnr.append(psnr)
        scores.frame0_ssim.append(ssim)
        return output

    level = workload.direction_level
    for variants in direction_cases(workload, size, frames, look):
        outputs = [run(spec, level) for spec in variants]
        scores.direction += [moved_as_asked(spec, out) for spec, out in zip(variants, outputs)]
        scores.direction_spread.append(pixel_spread(outputs))
    progress(f"{photo_set}: direction {_mean(scores.direction)}")
    for variants in zoom_cases(workload, size, frames, look):
        scores.zoom += [moved_as_asked(spec, run(spec, level)) for spec in variants]
    progress(f"{photo_set}: zoom {_mean(scores.zoom)}")
    for spec in heldout_specs(workload.seed + 2, TRANSLATIONS, workload.conflict_clips, True, size, frames, look):
        scores.conflict.append(moved_as_asked(spec, run(spec, level)))
    progress(f"{photo_set}: conflict {_mean(scores.conflict)}")
    for spec in heldout_specs(workload.seed + 3, TRANSLATIONS + ZOOMS, workload.intensity_photos, False, size,
                              frames, look):
        for requested in LEVELS:
            scores.requested_levels.append(requested)
            scores.measured_levels.append(measure_level(run(spec, requested)))
    progress(f"{photo_set}: intensity {scores.summary()['intensity_spearman']}")
    scores.seconds = time.perf_counter() - started
    return scores


def pipeline_renderer(pipe, steps: int, guidance: float, scheduler: str) -> Render:
    def render(photo, prompt, level, prior_inversion, seed):
        result = pipe(photo, prompt, intensity=level, num_inference_steps=steps, guidance_scale=guidance,
                      seed=seed, prior_inversion=prior_inversion, scheduler=scheduler)
        return result.frames.numpy()

    return render


def vae_round_trip_psnr(pipe, workload: Workload, photo_set: str, count: int = 16) -> float:
    """Frame-0 PSNR's ceiling: the photo through the model's VAE and back."""
    import torch

    from livephoto_core.encoding import decode_latents, encode_photo

    config = pipe.config
    values = []
    for spec in heldout_specs(workload.seed, TRANSLATIONS, count, False, config.height, config.num_frames,
                              PHOTO_SETS[photo_set]):
        photo = Case(spec, photo_set != "toy").reference()
        pixels = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            decoded = decode_latents(pipe.vae, encode_photo(pipe.vae, pixels))
        values.append(frame0_fidelity(photo, decoded.numpy())[0])
    return float(np.mean(values))


def swapped_caption(spec: ToyClipSpec) -> str:
    """The caption with its direction word replaced by the opposite one."""
    return " ".join(OPPOSITE[w] if w == spec.direction else w for w in spec.caption.split())


def denoising_inputs(pipe, clip: np.ndarray):
    """A clip [F, H, W, 3] uint8 as training feeds it to the UNet: its latents [1, F, 4, h, w], its
    conditioning channels at the level measured on it, and frame 0's content tokens."""
    import torch

    from livephoto_core.encoding import encode_photo
    from livephoto_core.intensity import measure_intensity

    model = pipe.model
    pixels = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        latents = encode_photo(pipe.vae, pixels).to(model.dtype)[None]
        content = model.encode_content(pixels[:1])
    level = measure_intensity(clip, pipe.config.intensity_thresholds).level
    channels = model.conditioning_channels(latents[:, 0], latents.shape[1], torch.tensor([float(level)]))
    return latents, channels, content


def caption_swap_gaps(pipe, workload: Workload, photo_set: str = "toy") -> dict[int, float]:
    """Per timestep, the mean relative increase of the denoising loss when a held-out translation clip's
    caption names the opposite direction. The noise and everything else are the same for both captions."""
    import torch

    from livephoto_core.encoding import tokenize
    from livephoto_core.sampling import make_scheduler
    from livephoto_core.training.batching import denoising_target
    from livephoto_core.training.toyworld import render_clip

    model, config = pipe.model, pipe.config
    scheduler = make_scheduler("ddpm", pipe.scheduler_config, config.prediction_type)
    specs = heldout_specs(workload.seed + 4, TRANSLATIONS, workload.swap_clips, False, config.height,
                          config.num_frames, PHOTO_SETS[photo_set])
    gaps = {t: [] for t in SWAP_TIMESTEPS}
    generator = torch.Generator().manual_seed(workload.seed)
    with torch.no_grad():
        for spec in specs:
            latents, channels, content = denoising_inputs(pipe, render_clip(spec))
            contexts = [torch.cat([pipe.reweighted_text(tokenize(pipe.tokenizer, text)[0])[0], content], dim=1)
                        for text in (spec.caption, swapped_caption(spec))]
            for t in SWAP_TIMESTEPS:
                timestep = torch.tensor([t])
                noise = torch.randn(latents.shape, generator=generator).to(latents)
                noisy = scheduler.add_noise(latents, noise, timestep)
                target = denoising_target(scheduler, config.prediction_type, latents, noise, timestep)
                true_loss, swapped_loss = (
                    float(((model.unet(noisy, timestep, context, channels) - target) ** 2).mean()) for context in contexts
                )
                gaps[t].append((swapped_loss - true_loss) / true_loss)
    return {t: float(np.mean(v)) for t, v in gaps.items()}


def first_step_directions(pipe, workload: Workload, guidance: float, photo_set: str = "toy") -> list[bool]:
    """Per direction case, whether the clean clip the model predicts at the first sampling step, from
    pure noise and with guidance, moves as the prompt asks.

    That first step is where a render's direction is decided: later steps read it back from their
    noisy input. Pure noise holds no trace of any clip, so here the words alone can set the direction
    (a model trained on a schedule that leaks the clip never learns to). One UNet call per case: a
    quick read of text-following while a model trains.
    """
    import torch

    from livephoto_core.encoding import decode_latents, encode_photo, tokenize
    from livephoto_core.sampling import build_conditioning, guided_prediction, make_scheduler

    model, config = pipe.model, pipe.config
    scheduler = make_scheduler("ddim", pipe.scheduler_config, config.prediction_type)
    scheduler.set_timesteps(25)
    timestep = scheduler.timesteps[:1]
    generator = torch.Generator().manual_seed(workload.seed)
    hits = []
    with torch.no_grad():
        uncond = pipe.reweighted_text(tokenize(pipe.tokenizer, "")[0])[0]
        for photo_cases in direction_cases(workload, config.height, config.num_frames, PHOTO_SETS[photo_set]):
            case = Case(photo_cases[0], photo_set != "toy")
            pixels = torch.from_numpy(case.reference()).permute(2, 0, 1)[None].float() / 255
            reference = encode_photo(pipe.vae, pixels).to(model.dtype)
            content = model.encode_content(pixels)
            channels = model.conditioning_channels(reference, config.num_frames,
                                                   torch.tensor([float(workload.direction_level)]))
            noise = torch.randn((1, config.num_frames, *reference.shape[1:]), generator=generator).to(reference)
            for spec in photo_cases:
                text = pipe.reweighted_text(tokenize(pipe.tokenizer, spec.caption)[0])[0]
                cond = build_conditioning(text, uncond if guidance > 1 else None, content, channels)
                output = guided_prediction(model.unet, noise, timestep, cond, guidance)
                clean = scheduler.step(output, timestep[0], noise).pred_original_sample  # the scheduler's own x0
                hits.append(moved_as_asked(spec, decode_latents(pipe.vae, clean[0]).numpy()))
    return hits


def token_weight_means(pipe, workload: Workload) -> dict[str, float]:
    """The reweighter's mean weight on motion words, content words, the other words, the start token
    and the padding after the prompt (end token included), over the direction and zoom prompts."""
    import torch

    from livephoto_core.encoding import tokenize

    groups = {name: [] for name in ("motion_words", "content_words", "other_words", "start_token", "padding")}
    config = pipe.config
    prompts = {spec.caption for variants in direction_cases(workload, config.height, config.num_frames, "classic")
               + zoom_cases(workload, config.height, config.num_frames, "classic") for spec in variants}
    for prompt in sorted(prompts):
        input_ids, tokens = tokenize(pipe.tokenizer, prompt)
        with torch.no_grad():
            _, weights = pipe.reweighted_text(input_ids)
        weights = weights[0].tolist()
        groups["start_token"].append(weights[0])
        groups["padding"] += weights[1 + len(tokens):]
        for token, weight in zip(tokens, weights[1 : 1 + len(tokens)]):
            name = "motion_words" if token in MOTION_WORDS else "content_words" if token in CONTENT_WORDS else "other_words"
            groups[name].append(weight)
    return {name: float(np.mean(values)) for name, values in groups.items()}


INVERSION_ROWS = {"with inversion": True, "without prior inversion": False}


def benchmark_model(checkpoint: str | None, workload: Workload, steps: int, guidance: float, scheduler: str,
                    rows: list[str], photo_sets: list[str], log: Callable[[str], None]) -> dict:
    from livephoto_core.intensity import measure_intensity
    from livephoto_core.loading.assemble import load_pipeline

    pipe = load_pipeline(checkpoint)
    thresholds = pipe.config.intensity_thresholds
    render = pipeline_renderer(pipe, steps, guidance, scheduler)

    def measure_level(frames: np.ndarray) -> int:
        return measure_intensity(frames, thresholds).level

    size, frames = pipe.config.height, pipe.config.num_frames
    result = {"rows": {}, "vae_round_trip_psnr_db": {}, "caption_swap_gap": {}, "first_step_direction": {}}
    for photo_set in photo_sets:
        for row in rows:
            scores = evaluate(render, measure_level, workload, size, frames, INVERSION_ROWS[row], photo_set, log)
            result["rows"][f"{photo_set}, {row}"] = scores.summary()
        result["vae_round_trip_psnr_db"][photo_set] = vae_round_trip_psnr(pipe, workload, photo_set)
        result["caption_swap_gap"][photo_set] = caption_swap_gaps(pipe, workload, photo_set)
        hits = first_step_directions(pipe, workload, guidance, photo_set)
        result["first_step_direction"][photo_set] = {"accuracy": _mean(hits), "ci95": wilson_interval(hits),
                                                     "count": len(hits)}
    result["token_weights"] = token_weight_means(pipe, workload)
    return result


# --- the table ------------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _accuracy(row: dict, key: str) -> str:
    return _interval(row[f"{key}_accuracy"], row[f"{key}_ci95"])


def _interval(value: float | None, interval: tuple[float, float] | None, count: int | None = None) -> str:
    if value is None:
        return "-"
    of = "" if count is None else f" of {count}"
    return f"{100 * value:.0f} % ({100 * interval[0]:.0f}-{100 * interval[1]:.0f}){of}"


def table(results: dict[str, dict]) -> str:
    lines = [
        "| model | photos | direction (95 % CI) | zoom (95 % CI) | Spearman | frame-0 PSNR (VAE bound) | frame-0 SSIM "
        "| conflict direction | direction pixel spread | s/clip |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for key, row in result["rows"].items():
            photo_set, variant = key.split(", ", 1)
            bound = result["vae_round_trip_psnr_db"][photo_set]
            label = name if variant == "with inversion" else f"{name}, {variant}"
            conflict = row["conflict_direction_accuracy"]
            lines.append(
                f"| {label} | {photo_set} | {_accuracy(row, 'direction')} | {_accuracy(row, 'zoom')} | "
                f"{_number(row['intensity_spearman'], 2)} | {_number(row['frame0_psnr_db'], 1)} dB "
                f"({bound:.1f} dB) | {_number(row['frame0_ssim'], 3)} | {_percent(conflict)} | "
                f"{_number(row['direction_pixel_spread'], 4)} | {row['seconds_per_clip']:.2f} |"
            )
    return "\n".join(lines)


def probe_table(results: dict[str, dict]) -> str:
    """The text-dependence probes, one line per model and photo set: the first step's direction, the
    caption-swap loss gaps per timestep and the token weights."""
    header = " | ".join(f"t={t}" for t in SWAP_TIMESTEPS)
    lines = [f"| model | photos | first-step direction (95 % CI) | {header} | weight on motion words "
             "| on content words |",
             "|---|---|---|" + "---|" * len(SWAP_TIMESTEPS) + "---|---|"]
    for name, result in results.items():
        weights = result["token_weights"]
        for photo_set, gaps in result["caption_swap_gap"].items():
            first = result["first_step_direction"][photo_set]
            cells = " | ".join(f"{100 * gaps[t]:+.1f} %" for t in SWAP_TIMESTEPS)
            lines.append(f"| {name} | {photo_set} | {_interval(first['accuracy'], first['ci95'], first['count'])} | "
                         f"{cells} | {weights['motion_words']:.2f} | {weights['content_words']:.2f} |")
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
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampling steps (default {DEFAULT_STEPS})")
    parser.add_argument("--guidance", type=float, default=4.0, help="CFG scale (default 4)")
    parser.add_argument("--scheduler", choices=tuple(SCHEDULERS), default=DEFAULT_SCHEDULER,
                        help=f"the renders' sampler (default {DEFAULT_SCHEDULER}); the first-step probe is the same for all")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every clip count (0.25 for a quick look)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--inversion", choices=("both", "on", "off"), default="both",
                        help="score with prior inversion, without it (the inference-only ablation), or both")
    parser.add_argument("--photos", choices=("both", *PHOTO_SETS), default="both", help="which photo set(s)")
    parser.add_argument("--split", choices=tuple(SPLIT_SEEDS), default="test",
                        help="test scenes (default) score a model; validation scenes pick a checkpoint")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = Workload()
    workload = Workload(seed=SPLIT_SEEDS[args.split], **{
        name: max(1, round(getattr(defaults, name) * args.scale))
        for name in ("direction_photos", "zoom_photos", "intensity_photos", "conflict_clips", "swap_clips")
    })
    photo_sets = list(PHOTO_SETS) if args.photos == "both" else [args.photos]
    results = {}
    for name, checkpoint in parse_models(args.model).items():
        def log(message: str, name=name) -> None:
            print(f"  {name}: {message}", file=sys.stderr, flush=True)

        rows = {"both": list(INVERSION_ROWS), "on": ["with inversion"], "off": ["without prior inversion"]}
        results[name] = benchmark_model(checkpoint, workload, args.steps, args.guidance, args.scheduler,
                                        rows[args.inversion], photo_sets, log)
        results[name]["checkpoint"] = checkpoint
    print(table(results))
    print()
    print(probe_table(results))
    if args.json:
        record = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["benchmarks/motion_control.py", *(argv if argv is not None else sys.argv[1:])]),
            "settings": {"steps": args.steps, "guidance": args.guidance, "scheduler": args.scheduler,
                         "split": args.split,
                         "workload": workload.__dict__,
                         "levels": list(LEVELS)},
            "results": results,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
