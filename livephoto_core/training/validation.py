"""Validation: animate one held-out photo at several intensity levels through the real pipeline.

Each level's frames become one row of a PNG strip (the held-out clip itself, when there is one, is
the first row), labelled with the level asked for and the level measured on the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..fileio import atomic_write
from ..images import load_image, prepare_photo
from ..pipeline import LivePhotoPipeline
from .recipe import ValidationConfig
from .data import ClipSampling, load_clip, read_index

LABEL_WIDTH = 92


@dataclass
class ValidationSample:
    photo: np.ndarray  # uint8 [H, W, 3]
    prompt: str
    clip: np.ndarray | None  # uint8 [F, H, W, 3], the clip the photo starts, when it comes from a video
    source: str


def validation_sample(
    config: ValidationConfig, validation_index: str | None, root: str | None, sampling: ClipSampling
) -> ValidationSample | None:
    """The configured photo and prompt, else the first decodable video of the validation index."""
    if config.photo is not None:
        photo = prepare_photo(load_image(config.photo), (sampling.size, sampling.size)).pixels
        pixels = (photo.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        return ValidationSample(pixels, config.prompt or "", None, config.photo)
    if validation_index is None:
        return None
    for entry in read_index(validation_index, root):
        try:
            clip = load_clip(entry.path, sampling)
        except Exception:  # noqa: BLE001 - an unreadable held-out video: try the next one
            continue
        return ValidationSample(clip[0], config.prompt or entry.caption, clip, str(entry.path))
    return None


def render_validation(
    pipeline: LivePhotoPipeline, sample: ValidationSample, config: ValidationConfig, path: Path
) -> list[dict]:
    """Animate the sample at every configured level, write the strip PNG, return what was measured."""
    rows, labels, results = [], [], []
    if sample.clip is not None:
        rows.append(sample.clip)
        labels.append("held-out clip")
    for level in config.levels:
        output = pipeline(
            sample.photo, sample.prompt, intensity=level, num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale, seed=config.seed,
        )
        frames = (output.frames.numpy() * 255).round().astype(np.uint8)
        rows.append(frames)
        labels.append(f"asked {level}\nmeasured {output.intensity.level}")
        results.append({"level": level, "measured": output.intensity.level, "mean_ssim": output.intensity.mean_ssim})
    strip = strip_image(rows, labels, sample.prompt)
    with atomic_write(path) as temporary:
        strip.save(temporary, format="PNG")
    return results


def strip_image(rows: list[np.ndarray], labels: list[str], title: str) -> Image.Image:
    """Rows of frames [F, H, W, 3] side by side, a label column on the left and the prompt on top."""
    frames = max(len(r) for r in rows)
    height, width = rows[0].shape[1:3]
    top = 14
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max([LABEL_WIDTH] + [measure.multiline_textbbox((2, 0), label)[2] + 4 for label in labels])
    canvas = Image.new("RGB", (max(label_width + frames * width, measure.textbbox((2, 1), title)[2] + 4),
                               top + len(rows) * height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), title, fill="black")
    for r, (row, label) in enumerate(zip(rows, labels)):
        y = top + r * height
        draw.multiline_text((2, y + 2), label, fill="black")
        for f, frame in enumerate(row):
            canvas.paste(Image.fromarray(frame), (label_width + f * width, y))
    return canvas
