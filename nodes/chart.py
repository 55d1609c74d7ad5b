"""A bar chart of the text re-weighter's per-token weights, drawn with Pillow, as a ComfyUI IMAGE."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

HEIGHT = 256
TOP, BOTTOM, LEFT, RIGHT = 16, 40, 44, 12  # margins: title room, token labels, weight axis, edge
MIN_BAR_SLOT = 28
BACKGROUND, AXIS, GRID, BAR, TEXT = (255, 255, 255), (60, 60, 60), (225, 225, 225), (66, 133, 244), (20, 20, 20)


def token_weight_chart(labels: list[str], weights: list[float]) -> torch.Tensor:
    """One bar per token, weight 0..1 on the vertical axis, the token's text under its bar -> [1, H, W, 3]."""
    font = ImageFont.load_default(size=13)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    slots = [max(MIN_BAR_SLOT, int(measure.textlength(label, font=font)) + 8) for label in labels]
    width = LEFT + RIGHT + max(sum(slots), 160)
    image = Image.new("RGB", (width, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    plot_height = HEIGHT - TOP - BOTTOM
    baseline = TOP + plot_height

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = baseline - round(tick * plot_height)
        draw.line([(LEFT, y), (width - RIGHT, y)], fill=GRID)
        draw.text((LEFT - 6, y), f"{tick:g}", fill=TEXT, font=font, anchor="rm")
    draw.line([(LEFT, TOP), (LEFT, baseline)], fill=AXIS)

    if not labels:
        draw.text((LEFT + 8, TOP + plot_height // 2), "(empty prompt)", fill=TEXT, font=font, anchor="lm")
    x = LEFT
    for label, weight, slot in zip(labels, weights, slots):
        top = baseline - round(min(max(weight, 0.0), 1.0) * plot_height)
        draw.rectangle([x + 3, top, x + slot - 3, baseline], fill=BAR)
        draw.text((x + slot / 2, baseline + 6), label, fill=TEXT, font=font, anchor="mt")
        x += slot
    draw.line([(LEFT, baseline), (width - RIGHT, baseline)], fill=AXIS)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).unsqueeze(0)
