"""The toy world: procedural captioned clips for training and benchmarking a small demo model.

Each clip shows one or two flat, saturated shapes on a low-saturation background. The shape the
caption names moves left, right, up or down, or rotates; or the camera zooms in or out (the whole
frame scales about its centre); or nothing moves. Speeds spread log-uniformly from barely visible to
fast, so every SSIM-decile intensity level is populated by every kind of motion. Shapes stay inside
the frame for the whole clip.

Colours are six hues 60 degrees apart and the background's chroma stays far below theirs, so a
shape is found again by its hue alone (``locate_shape``), also after blur, noise or a VAE's colour
shift. That is what the benchmark helpers measure motion with.

Rendering is pure numpy and exact in continuous coordinates: shapes are signed-distance fields,
anti-aliased by 8x8 supersampling of the pixels their edge crosses; the background is a smooth
function of scene coordinates, so a zoom resamples nothing. Everything is deterministic from a seed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import av
import numpy as np
from PIL import Image

from ..errors import InvalidInputError, OutputExistsError

# Saturated colours six hues apart (0, 60, ..., 300 degrees); chroma 0.75-0.78 each.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "yellow": (230, 230, 30),
    "green": (20, 210, 20),
    "cyan": (20, 210, 210),
    "blue": (40, 40, 240),
    "magenta": (220, 30, 220),
}
SHAPE_KINDS = ("circle", "square", "triangle", "star")
# Rotational symmetry period of each kind, in degrees; rotation per frame stays below half of it,
# so the turn between two frames is never ambiguous.
_SYMMETRY_DEGREES = {"square": 90.0, "triangle": 120.0, "star": 72.0}

_UNIT_STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
# What a clip does, as the keys of `motion_weights`: (motion, direction).
MOTIONS: dict[str, tuple[str, str | None]] = {
    "left": ("translate", "left"),
    "right": ("translate", "right"),
    "up": ("translate", "up"),
    "down": ("translate", "down"),
    "zoom_in": ("zoom", "in"),
    "zoom_out": ("zoom", "out"),
    "rotate": ("rotate", None),  # clockwise or counterclockwise at random; captions do not say
    "still": ("still", None),
}
# Balanced directions; translations are the motion the benchmark scores most.
DEFAULT_MOTION_WEIGHTS = {
    "left": 0.14,
    "right": 0.14,
    "up": 0.14,
    "down": 0.14,
    "zoom_in": 0.12,
    "zoom_out": 0.12,
    "rotate": 0.12,
    "still": 0.08,
}

# Caption templates. The held-out phrasings are new combinations of words the training phrasings
# use (other articles, verbs and word orders): a from-scratch text encoder has only ever trained the
# embeddings of words it has seen, so a held-out word would test its random initialisation.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "translate": {
        "train": (
            "the {colour} {kind} moves {dir}",
            "a {colour} {kind} sliding {dir}",
            "{colour} {kind} moving {dir}",
            "the {colour} {kind} slides {dir}",
            "a {colour} {kind} goes {dir}",
        ),
        "heldout": (
            "a {colour} {kind} moves {dir}",
            "the {colour} {kind} goes {dir}",
            "{colour} {kind} sliding {dir}",
        ),
    },
    "rotate": {
        "train": (
            "the {colour} {kind} rotates",
            "a {colour} {kind} spinning",
            "{colour} {kind} spins around",
            "the {colour} {kind} rotating",
        ),
        "heldout": (
            "a {colour} {kind} rotates",
            "the {colour} {kind} spins around",
        ),
    },
    "zoom": {
        "train": (
            "camera zooms {dir} {prep} a {colour} {kind}",
            "the camera zooms {dir}",
            "zooming {dir} {prep} the {colour} {kind}",
            "zoom {dir}",
        ),
        "heldout": (
            "the camera zooms {dir} {prep} the {colour} {kind}",
            "camera zooming {dir}",
        ),
    },
    "still": {
        "train": (
            "the scene stays still",
            "a {colour} {kind} staying still",
            "a static shot of a {colour} {kind}",
            "the {colour} {kind} is still",
        ),
        "heldout": (
            "the {colour} {kind} stays still",
            "a still shot of the {colour} {kind}",
        ),
    },
}
# How a direction is worded (either phrasing set); "in"/"out" take their own preposition.
DIRECTION_WORDINGS = {
    "left": ("left", "to the left"),
    "right": ("right", "to the right"),
    "up": ("up",),
    "down": ("down",),
    "in": ("in",),
    "out": ("out",),
}
_ZOOM_PREPOSITION = {"in": "on", "out": "from"}


def _vocabulary() -> tuple[str, ...]:
    words = set(PALETTE) | set(SHAPE_KINDS) | set(_ZOOM_PREPOSITION.values())
    for wordings in DIRECTION_WORDINGS.values():
        for wording in wordings:
            words.update(wording.split())
    for by_split in TEMPLATES.values():
        for templates in by_split.values():
            for template in templates:
                words.update(w for w in template.split() if not w.startswith("{"))
    return tuple(sorted(words))


# Every word any caption (train or held out) can contain; captions are lower case, space separated.
TOY_VOCABULARY: tuple[str, ...] = _vocabulary()

# Geometry, as fractions of the frame size.
_MARGIN = 0.03  # gap kept between a shape and the frame edge
_TRAVEL_RANGE = (0.02, 0.55)  # total displacement over a clip, log-uniform (also drives rotate and zoom)
# A translation moves at least 2 latent pixels of a factor-4 VAE (8 px at 64 px): slower ones were
# half of all translations, and their direction is hardly visible in the latents the model sees.
_MIN_TRANSLATION = 0.125
_SHAPE_GAP = 0.04  # minimum gap between two shapes
_LUMA_SEPARATION = 0.2  # background lightness kept this far from every shape's luma where possible


@dataclass(frozen=True)
class ToyLook:
    """How varied the pictures are: shape sizes and proportions, backgrounds, and the resolution a
    clip is rendered at before it is scaled down to its size (as the CLI scales a larger photo).

    Fractions are of the frame size; lightness values are grey levels in 0..1.
    """

    radius_range: tuple[float, float]  # circumradius of a shape
    stretch_rate: float  # chance that a shape is squeezed along one of its axes
    stretch_range: tuple[float, float]  # the squeezed axis keeps this fraction of its length
    render_scales: tuple[int, ...]  # rendered at size x scale, then Lanczos-resized to size
    lightness_range: tuple[float, float]
    max_gradient: float  # lightness change across the frame
    textures: tuple[str, ...]  # of "gradient" (none), "blobs", "stripes", "waves"
    texture_amplitude: float  # largest lightness swing of a texture


# The look of the first toy world (the benchmark's first photo set).
CLASSIC_LOOK = ToyLook(
    radius_range=(0.10, 0.19), stretch_rate=0.0, stretch_range=(1.0, 1.0), render_scales=(1,),
    lightness_range=(0.2, 0.85), max_gradient=0.2, textures=("gradient", "blobs", "stripes"), texture_amplitude=0.12,
)
# What training draws from: the classic look widened in every direction a photo may differ.
VARIED_LOOK = ToyLook(
    radius_range=(0.08, 0.25), stretch_rate=0.5, stretch_range=(0.55, 1.0), render_scales=(1, 2, 4),
    lightness_range=(0.1, 0.9), max_gradient=0.45, textures=("gradient", "blobs", "stripes", "waves"),
    texture_amplitude=0.2,
)
# The benchmark's second photo set: photos 4x larger than the model's size, scaled down by the
# pipeline, always on textured backgrounds, every shape squeezed.
PHOTO_LOOK = replace(VARIED_LOOK, stretch_rate=1.0, stretch_range=(0.55, 0.8), render_scales=(4,),
                     textures=("blobs", "stripes", "waves"))
LOOKS = {"classic": CLASSIC_LOOK, "varied": VARIED_LOOK, "photo": PHOTO_LOOK}


@dataclass(frozen=True)
class ToyShape:
    """A flat shape as it is at frame 0. Sizes and positions in pixels, angles in degrees."""

    kind: str  # one of SHAPE_KINDS
    colour: str  # a key of PALETTE
    centre: tuple[float, float]  # (x, y); pixel (row i, column j) covers [j, j+1] x [i, i+1]
    radius: float  # circumradius
    angle: float = 0.0  # clockwise on screen
    stretch: float = 1.0  # the shape's own vertical axis is this fraction of its horizontal one, or
    # (above 1) the horizontal of the vertical: 1 / stretch; applied before the rotation


@dataclass(frozen=True)
class ToyBackground:
    """A smooth low-saturation field of scene coordinates: lightness + gradient + texture, tinted."""

    lightness: float  # grey level at the frame centre, 0..1
    gradient: tuple[float, float]  # lightness change per frame width along x and y
    tint: tuple[float, float, float]  # per-channel offset (zero mean): the background's small chroma
    blobs: tuple[tuple[float, float, float, float], ...] = ()  # (x, y, sigma, amplitude), pixels
    stripes: tuple[float, float, float, float] | None = None  # (angle deg, period px, phase, amplitude)
    waves: tuple[tuple[float, float, float, float], ...] = ()  # (cycles per frame along x, along y, phase, amplitude)


@dataclass(frozen=True)
class ToyScene:
    size: int  # frames are size x size pixels
    background: ToyBackground
    shapes: tuple[ToyShape, ...]
    render_scale: int = 1  # rendered at size x render_scale, then Lanczos-resized to size


@dataclass(frozen=True)
class ToyClipSpec:
    """Everything that defines one clip and its ground truth.

    speed: pixels per frame (translate), degrees per frame (rotate), scale factor per frame (zoom:
    > 1 in, < 1 out), 0 (still). The subject is the shape the caption names; for translate and rotate
    it is the one that moves. With ``conflict`` the caption names a colour and kind that no shape in the
    scene has (the paper's content conflict); its motion words are still right.
    """

    scene: ToyScene
    frames: int
    motion: str  # "translate" | "rotate" | "zoom" | "still"
    direction: str | None  # left/right/up/down | clockwise/counterclockwise | in/out | None
    speed: float
    subject: int  # index into scene.shapes
    caption: str
    phrasing: str  # "train" | "heldout": which template set the caption came from
    conflict: bool
    named_colour: str | None  # the content words of the caption (None when it has none)
    named_kind: str | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ToyClipSpec:
        scene = data["scene"]
        background = scene["background"]
        fields = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        return cls(
            **{
                **fields,
                "scene": ToyScene(
                    size=scene["size"],
                    background=ToyBackground(
                        lightness=background["lightness"],
                        gradient=tuple(background["gradient"]),
                        tint=tuple(background["tint"]),
                        blobs=tuple(tuple(b) for b in background["blobs"]),
                        stripes=None if background["stripes"] is None else tuple(background["stripes"]),
                        waves=tuple(tuple(w) for w in background.get("waves", ())),
                    ),
                    shapes=tuple(
                        ToyShape(s["kind"], s["colour"], tuple(s["centre"]), s["radius"], s["angle"],
                                 s.get("stretch", 1.0))
                        for s in scene["shapes"]
                    ),
                    render_scale=scene.get("render_scale", 1),
                ),
            }
        )


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def _luma(rgb: tuple[int, int, int]) -> float:
    """Grey level as the SSIM intensity measure sees it (skimage rgb2gray's BT.709 weights)."""
    return (0.2125 * rgb[0] + 0.7154 * rgb[1] + 0.0721 * rgb[2]) / 255.0


def _sample_background(
    rng: np.random.Generator, size: int, shape_lumas: list[float], look: ToyLook
) -> ToyBackground:
    # Keep the background's grey level away from the shapes' so they also stand out in grayscale,
    # which is what the SSIM intensity measure sees.
    for _ in range(50):
        lightness = float(rng.uniform(*look.lightness_range))
        if all(abs(lightness - luma) >= _LUMA_SEPARATION for luma in shape_lumas):
            break
    gradient_angle = rng.uniform(0, 2 * math.pi)
    gradient_strength = rng.uniform(0.0, look.max_gradient)
    tint = rng.uniform(-0.04, 0.04, size=3)
    tint -= tint.mean()
    texture = look.textures[int(rng.integers(len(look.textures)))]
    amplitude = look.texture_amplitude
    blobs: tuple = ()
    stripes = None
    waves: tuple = ()
    if texture == "blobs":
        # Spread beyond the frame: a zoom out shows up to twice the frame's extent.
        count = int(rng.integers(6, 14))
        blobs = tuple(
            (
                float(rng.uniform(-0.6, 1.6) * size),
                float(rng.uniform(-0.6, 1.6) * size),
                float(rng.uniform(0.08, 0.25) * size),
                float(rng.uniform(-amplitude, amplitude)),
            )
            for _ in range(count)
        )
    elif texture == "stripes":
        stripes = (
            float(rng.uniform(0, 180)),
            float(rng.uniform(0.15, 0.4) * size),
            float(rng.uniform(0, 2 * math.pi)),
            float(rng.uniform(0.25, 0.65) * amplitude),
        )
    elif texture == "waves":
        # A few plane waves of 1.5 to 6 cycles per frame: a smooth, irregular texture.
        count = int(rng.integers(3, 7))
        waves = tuple(
            (float(fx), float(fy), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.2, 0.5) * amplitude))
            for fx, fy in (rng.uniform(1.5, 6.0) * np.array([math.cos(a), math.sin(a)])
                           for a in rng.uniform(0, 2 * math.pi, size=count))
        )
    return ToyBackground(
        lightness=lightness,
        gradient=(gradient_strength * math.cos(gradient_angle), gradient_strength * math.sin(gradient_angle)),
        tint=tuple(float(t) for t in tint),
        blobs=blobs,
        stripes=stripes,
        waves=waves,
    )


def _point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    denominator = float(ab @ ab)
    h = 0.0 if denominator == 0 else float(np.clip((p - a) @ ab / denominator, 0.0, 1.0))
    return float(np.linalg.norm(p - a - h * ab))


def caption(
    rng: np.random.Generator,
    motion: str,
    direction: str | None,
    phrasing: str,
    colour: str,
    kind: str,
    need_content: bool,
) -> tuple[str, bool]:
    """A caption from the phrasing set; returns it and whether it contains content words."""
    templates = TEMPLATES[motion][phrasing]
    if need_content:
        templates = tuple(t for t in templates if "{colour}" in t)
    template = templates[int(rng.integers(len(templates)))]
    fields = {"colour": colour, "kind": kind}
    if motion in ("translate", "zoom"):
        wordings = DIRECTION_WORDINGS[direction]
        fields["dir"] = wordings[int(rng.integers(len(wordings)))]
        fields["prep"] = _ZOOM_PREPOSITION.get(direction, "")
    return template.format(**fields), "{colour}" in template


def _checked_look(look: ToyLook | str) -> ToyLook:
    if isinstance(look, ToyLook):
        return look
    if look not in LOOKS:
        raise InvalidInputError(f"unknown look {look!r}; use one of {', '.join(LOOKS)}")
    return LOOKS[look]


def _sample_stretch(rng: np.random.Generator, look: ToyLook) -> float:
    """1 (unstretched), or the squeezed axis's fraction: below 1 squeezes the vertical axis, above 1
    (its inverse) the horizontal one."""
    if rng.random() >= look.stretch_rate:
        return 1.0
    fraction = float(rng.uniform(*look.stretch_range))
    return fraction if rng.random() < 0.5 else 1.0 / fraction


def zoom_factor(travel: float, size: int, direction: str) -> float:
    """A zoom's total scale over the clip (> 1 in, < 1 out) when a point at the frame edge travels
    `travel` pixels."""
    total = 1.0 + travel / (size / 2)
    return total if direction == "in" else 1.0 / total


def sample_clip_spec(
    rng: np.random.Generator,
    size: int = 64,
    frames: int = 8,
    phrasings: str = "train",
    conflict_rate: float = 0.15,
    two_shape_rate: float = 0.5,
    motion_weights: dict[str, float] | None = None,
    look: ToyLook | str = VARIED_LOOK,
    min_translation: float = _MIN_TRANSLATION,
) -> ToyClipSpec:
    """Draw one clip: scene, motion, speed and caption.

    motion_weights maps keys of MOTIONS to relative frequencies (default DEFAULT_MOTION_WEIGHTS);
    e.g. {"left": 1, "right": 1} gives only horizontal translations. two_shape_rate is the chance of
    a second, static distractor shape (lower it for a single-shape curriculum). A conflict clip (its
    caption names a shape the scene lacks) always shows one shape: with two, which of them the
    caption means would be anyone's guess. look: a ToyLook or a key of LOOKS. min_translation: the
    shortest travel of a translation, as a fraction of the frame (lower it for slow translations, the
    only way a large shape reaches the low intensity levels).
    """
    look = _checked_look(look)
    if size < 16 or frames < 2:
        raise InvalidInputError(f"toy clips need size >= 16 and frames >= 2 (got size {size}, frames {frames})")
    if not _TRAVEL_RANGE[0] <= min_translation <= _TRAVEL_RANGE[1]:
        raise InvalidInputError(f"min_translation must be in {_TRAVEL_RANGE[0]}..{_TRAVEL_RANGE[1]} (got {min_translation})")
    if not (0 <= conflict_rate <= 1 and 0 <= two_shape_rate <= 1):
        raise InvalidInputError(
            f"conflict_rate and two_shape_rate are probabilities in 0..1 (got {conflict_rate}, {two_shape_rate})"
        )
    if phrasings not in ("train", "heldout"):
        raise InvalidInputError(f"phrasings must be 'train' or 'heldout', not {phrasings!r}")
    weights = DEFAULT_MOTION_WEIGHTS if motion_weights is None else motion_weights
    unknown = set(weights) - set(MOTIONS)
    if unknown or not weights or sum(weights.values()) <= 0:
        raise InvalidInputError(f"motion_weights {weights} must give positive weight to some of {', '.join(MOTIONS)}")
    keys = list(weights)
    probabilities = np.array([weights[k] for k in keys], dtype=float)
    motion, direction = MOTIONS[keys[int(rng.choice(len(keys), p=probabilities / probabilities.sum()))]]

    margin = _MARGIN * size
    half = size / 2
    r_min, r_max = (f * size for f in look.radius_range)
    lowest_travel = min_translation if motion == "translate" else _TRAVEL_RANGE[0]
    travel = (
        0.0
        if motion == "still"
        else float(size * math.exp(rng.uniform(math.log(lowest_travel), math.log(_TRAVEL_RANGE[1]))))
    )
    steps = frames - 1

    zoom_total = zoom_factor(travel, size, direction) if motion == "zoom" else 1.0
    # Half-width of the box every shape centre+radius must stay in at frame 0 (zoom in grows them).
    reach = (half - margin) / max(zoom_total, 1.0)

    subject_radius_max = r_max
    if motion == "translate":
        subject_radius_max = min(r_max, (size - 2 * margin - travel) / 2)
    elif motion == "zoom":
        subject_radius_max = min(r_max, reach * 0.8)
    radius = float(rng.uniform(r_min, max(r_min, subject_radius_max)))
    kinds = SHAPE_KINDS if motion != "rotate" else tuple(k for k in SHAPE_KINDS if k != "circle")
    kind = str(kinds[int(rng.integers(len(kinds)))])
    colours = list(PALETTE)
    colour = colours.pop(int(rng.integers(len(colours))))

    step = np.zeros(2)
    if motion == "translate":
        step = np.array(_UNIT_STEP[direction]) * travel
    # Subject start: centre such that start and end positions keep the shape inside.
    low = np.full(2, half - reach + radius)
    high = np.full(2, half + reach - radius)
    low = np.maximum(low, low - step)
    high = np.minimum(high, high - step)
    start = rng.uniform(low, np.maximum(low, high))
    angle = float(rng.uniform(0, _SYMMETRY_DEGREES.get(kind, 360.0)))
    subject = ToyShape(kind, colour, (float(start[0]), float(start[1])), radius, angle, _sample_stretch(rng, look))
    shapes = [subject]

    conflict = bool(rng.random() < conflict_rate)
    if not conflict and rng.random() < two_shape_rate:
        other_radius = float(rng.uniform(r_min, max(r_min, min(r_max, reach * 0.8))))
        path_end = start + step
        for _ in range(100):
            centre = rng.uniform(half - reach + other_radius, half + reach - other_radius, size=2)
            clearance = radius + other_radius + _SHAPE_GAP * size
            if _point_segment_distance(centre, start, path_end) >= clearance:
                other_kind = str(SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))])
                other_colour = colours[int(rng.integers(len(colours)))]
                other_angle = float(rng.uniform(0, _SYMMETRY_DEGREES.get(other_kind, 360.0)))
                shapes.append(
                    ToyShape(other_kind, other_colour, (float(centre[0]), float(centre[1])), other_radius, other_angle,
                             _sample_stretch(rng, look))
                )
                break
    # Where the subject goes in the list is random, so "the first shape moves" is no shortcut.
    subject_index = int(rng.integers(len(shapes)))
    shapes.insert(subject_index, shapes.pop(0))

    background = _sample_background(rng, size, [_luma(PALETTE[s.colour]) for s in shapes], look)
    render_scale = int(look.render_scales[int(rng.integers(len(look.render_scales)))])

    if motion == "translate":
        speed = travel / steps
    elif motion == "rotate":
        # The shape's tips travel about `travel` pixels; cap below half the symmetry period.
        per_frame = math.degrees(travel / steps / radius)
        speed = min(per_frame, 0.45 * _SYMMETRY_DEGREES[kind])
        direction = "clockwise" if rng.random() < 0.5 else "counterclockwise"
    elif motion == "zoom":
        speed = zoom_total ** (1.0 / steps)
    else:
        speed = 0.0

    named_colour, named_kind = colour, kind
    if conflict:
        present = {(s.colour, s.kind) for s in shapes}
        while (named_colour, named_kind) in present:
            change = rng.choice(["colour", "kind", "both"])
            if change in ("colour", "both"):
                named_colour = str(list(PALETTE)[int(rng.integers(len(PALETTE)))])
            if change in ("kind", "both"):
                named_kind = str(SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))])
    text, has_content = caption(rng, motion, direction, phrasings, named_colour, named_kind, conflict)
    return ToyClipSpec(
        scene=ToyScene(size=size, background=background, shapes=tuple(shapes), render_scale=render_scale),
        frames=frames,
        motion=motion,
        direction=direction,
        speed=float(speed),
        subject=subject_index,
        caption=text,
        phrasing=phrasings,
        conflict=conflict,
        named_colour=named_colour if has_content else None,
        named_kind=named_kind if has_content else None,
    )


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _axis_scales(stretch: float) -> tuple[float, float]:
    """(horizontal, vertical) scale of a shape's own axes; the longer stays at the circumradius."""
    return (1.0, stretch) if stretch <= 1 else (1.0 / stretch, 1.0)


def _polygon_vertices(
    kind: str, centre: tuple[float, float], radius: float, angle: float, stretch: float = 1.0
) -> np.ndarray:
    if kind == "square":
        base = np.radians(45.0 + 90.0 * np.arange(4))
        radii = np.full(4, radius)
    elif kind == "triangle":
        base = np.radians(-90.0 + 120.0 * np.arange(3))  # apex up
        radii = np.full(3, radius)
    elif kind == "star":
        base = np.radians(-90.0 + 36.0 * np.arange(10))  # five points, apex up
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    else:
        raise InvalidInputError(f"unknown shape kind {kind!r}; use one of {', '.join(SHAPE_KINDS)}")
    sx, sy = _axis_scales(stretch)
    u, v = radii * np.cos(base) * sx, radii * np.sin(base) * sy  # the shape's own axes, squeezed
    turn = math.radians(angle)  # y points down, so a growing angle turns clockwise on screen
    cos, sin = math.cos(turn), math.sin(turn)
    return np.stack([centre[0] + u * cos - v * sin, centre[1] + u * sin + v * cos], axis=-1)


def _polygon_inside(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd crossing test: which points lie inside a simple polygon."""
    a = vertices
    b = np.roll(vertices, -1, axis=0)
    ey = b[:, 1] - a[:, 1]
    slope = (b[:, 0] - a[:, 0]) / np.where(ey == 0, 1e-12, ey)
    straddles = (a[:, 1] > y[..., None]) != (b[:, 1] > y[..., None])
    crosses = straddles & (x[..., None] < a[:, 0] + (y[..., None] - a[:, 1]) * slope)
    return crosses.sum(axis=-1) % 2 == 1


def _polygon_signed_distance(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from points to a simple polygon."""
    a = vertices
    b = np.roll(vertices, -1, axis=0)
    px = x[..., None] - a[:, 0]
    py = y[..., None] - a[:, 1]
    ex = b[:, 0] - a[:, 0]
    ey = b[:, 1] - a[:, 1]
    h = np.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    distance = np.sqrt(((px - ex * h) ** 2 + (py - ey * h) ** 2).min(axis=-1))
    return np.where(_polygon_inside(x, y, vertices), -distance, distance)


_SUBSAMPLES = 8  # per axis, in pixels that an edge crosses
_SUBSAMPLE_OFFSETS = (np.arange(_SUBSAMPLES) + 0.5) / _SUBSAMPLES - 0.5


def _ellipse_distance(
    x: np.ndarray, y: np.ndarray, centre: tuple[float, float], radius: float, angle: float, stretch: float
) -> np.ndarray:
    """Signed distance (negative inside) to a circle squeezed along its own axes; exact for a circle,
    a lower bound in size (exact in sign) for an ellipse."""
    sx, sy = _axis_scales(stretch)
    turn = math.radians(angle)
    dx, dy = x - centre[0], y - centre[1]
    u = (dx * math.cos(turn) + dy * math.sin(turn)) / sx  # into the shape's own, unsqueezed axes
    v = (-dx * math.sin(turn) + dy * math.cos(turn)) / sy
    return (np.hypot(u, v) - radius) * min(sx, sy)


def _paint_shape(
    image: np.ndarray, kind: str, colour: str, centre: tuple[float, float], radius: float, angle: float,
    stretch: float = 1.0,
) -> None:
    """Composite a shape onto image (float RGB, in place) with exact-area anti-aliasing: pixels an
    edge crosses get the inside fraction of 8x8 subsamples, the others are fully in or out."""
    size = image.shape[0]
    x0 = max(math.floor(centre[0] - radius - 1), 0)
    x1 = min(math.ceil(centre[0] + radius + 1), size)
    y0 = max(math.floor(centre[1] - radius - 1), 0)
    y1 = min(math.ceil(centre[1] + radius + 1), size)
    if x0 >= x1 or y0 >= y1:
        return
    y, x = np.mgrid[y0:y1, x0:x1] + 0.5
    if kind == "circle":
        distance = _ellipse_distance(x, y, centre, radius, angle, stretch)
    else:
        vertices = _polygon_vertices(kind, centre, radius, angle, stretch)
        distance = _polygon_signed_distance(x, y, vertices)
    coverage = (distance < 0).astype(float)
    edge = np.abs(distance) < 0.75  # a pixel's corners are 0.71 from its centre
    if edge.any():
        sub_y, sub_x = (g.ravel() for g in np.meshgrid(_SUBSAMPLE_OFFSETS, _SUBSAMPLE_OFFSETS, indexing="ij"))
        sx, sy = x[edge][:, None] + sub_x, y[edge][:, None] + sub_y
        if kind == "circle":
            inside = _ellipse_distance(sx, sy, centre, radius, angle, stretch) < 0
        else:
            inside = _polygon_inside(sx, sy, vertices)
        coverage[edge] = inside.mean(axis=-1)
    patch = image[y0:y1, x0:x1]
    patch += coverage[..., None] * (np.array(PALETTE[colour]) / 255.0 - patch)


def _background(background: ToyBackground, size: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The background at scene coordinates (x, y), RGB float."""
    u = (x - size / 2) / size
    v = (y - size / 2) / size
    lightness = background.lightness + background.gradient[0] * u + background.gradient[1] * v
    for bx, by, sigma, amplitude in background.blobs:
        lightness = lightness + amplitude * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * sigma**2))
    if background.stripes is not None:
        angle, period, phase, amplitude = background.stripes
        along = x * math.cos(math.radians(angle)) + y * math.sin(math.radians(angle))
        lightness = lightness + amplitude * np.sin(2 * math.pi * along / period + phase)
    for fx, fy, phase, amplitude in background.waves:
        lightness = lightness + amplitude * np.sin(2 * math.pi * (fx * u + fy * v) + phase)
    return np.clip(lightness[..., None] + np.array(background.tint), 0.0, 1.0)


def _zoom_at(spec: ToyClipSpec, frame: int) -> float:
    if spec.motion != "zoom":
        return 1.0
    return spec.speed**frame


def render_frame(spec: ToyClipSpec, frame: int, full_resolution: bool = False) -> np.ndarray:
    """Frame `frame` of the clip as float RGB [H, W, 3] in 0..1.

    A scene with render_scale k is drawn at k times its size and Lanczos-resized to its size, as the
    pipeline scales a larger photo; full_resolution returns the large frame itself.
    """
    size, fine = spec.scene.size, spec.scene.render_scale
    scale = _zoom_at(spec, frame)
    half = size / 2
    # Pixel centres of the fine grid, in the scene's own pixel units.
    y, x = (np.mgrid[0 : size * fine, 0 : size * fine] + 0.5) / fine
    image = _background(spec.scene.background, size, half + (x - half) / scale, half + (y - half) / scale)
    for index, shape in enumerate(spec.scene.shapes):
        cx, cy = shape.centre
        angle = shape.angle
        if index == spec.subject and spec.motion == "translate":
            dx, dy = _UNIT_STEP[spec.direction]
            cx, cy = cx + dx * spec.speed * frame, cy + dy * spec.speed * frame
        if index == spec.subject and spec.motion == "rotate":
            angle += (1 if spec.direction == "clockwise" else -1) * spec.speed * frame
        centre = (fine * (half + (cx - half) * scale), fine * (half + (cy - half) * scale))
        _paint_shape(image, shape.kind, shape.colour, centre, fine * shape.radius * scale, angle, shape.stretch)
    if fine == 1 or full_resolution:
        return image
    return np.clip(_resize_lanczos(image, size), 0.0, 1.0)


def _resize_lanczos(image: np.ndarray, size: int) -> np.ndarray:
    """Float RGB [H, W, 3] -> [size, size, 3], channel by channel with Pillow's Lanczos (antialiased)."""
    channels = [Image.fromarray(image[..., c].astype(np.float32)) for c in range(3)]  # float32 [H, W]: mode F
    return np.stack([np.asarray(c.resize((size, size), Image.Resampling.LANCZOS)) for c in channels], axis=-1)


def render_clip(spec: ToyClipSpec) -> np.ndarray:
    """The clip as uint8 RGB [F, H, W, 3]."""
    frames = np.stack([render_frame(spec, t) for t in range(spec.frames)])
    return np.round(frames * 255.0).astype(np.uint8)


def render_photo(spec: ToyClipSpec, full_resolution: bool = False) -> np.ndarray:
    """Frame 0 (the photo to animate) as uint8 RGB [H, W, 3]; see render_frame for full_resolution."""
    return np.round(render_frame(spec, 0, full_resolution) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Writing a data set
# ---------------------------------------------------------------------------------------------

_SPLIT_STREAM = {"train": 0, "heldout": 1}


def clip_spec(seed: int, index: int, split: str = "train", **sampling) -> ToyClipSpec:
    """Clip `index` of the data set `seed`/`split`, independent of how many clips are drawn.

    Held-out clips come from their own random stream (held-out images) and use held-out phrasings.
    Keyword arguments go to sample_clip_spec.
    """
    if split not in _SPLIT_STREAM:
        raise InvalidInputError(f"split must be 'train' or 'heldout', not {split!r}")
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], index])
    return sample_clip_spec(rng, phrasings=split, **sampling)


def write_video_lossless(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write uint8 RGB frames [F, H, W, 3] as lossless H.264 RGB (libx264rgb, qp 0) in .mp4.

    Decoding to rgb24 gives back the exact pixels, so frame-0 fidelity is not capped by the codec.
    """
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264rgb", rate=fps, options={"qp": "0", "preset": "ultrafast"})
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "rgb24"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_dataset(
    out_dir: str | os.PathLike,
    num_clips: int,
    seed: int,
    size: int = 64,
    frames: int = 8,
    split: str = "train",
    fps: int = 8,
    conflict_rate: float = 0.15,
    two_shape_rate: float = 0.5,
    motion_weights: dict[str, float] | None = None,
    look: ToyLook | str = VARIED_LOOK,
    min_translation: float = _MIN_TRANSLATION,
    overwrite: bool = False,
) -> Path:
    """Render `num_clips` clips into out_dir and return the path of its captions.csv.

    Writes clips/NNNNNN.mp4 (lossless), captions.csv (path,caption; paths relative to the CSV) and
    labels.jsonl (one ToyClipSpec.to_dict() per clip plus "path" and "split"). The index files are
    written last, so a data set with a captions.csv is complete.
    """
    if split not in _SPLIT_STREAM:
        raise InvalidInputError(f"split must be 'train' or 'heldout', not {split!r}")
    out = Path(out_dir)
    clips_dir = out / "clips"
    previous = [out / "captions.csv", out / "labels.jsonl", *sorted(clips_dir.glob("*.mp4"))]
    if any(path.exists() for path in previous):
        if not overwrite:
            raise OutputExistsError(f"{out} already holds a toy data set; pass overwrite=True or choose a new folder")
        for path in previous:
            path.unlink(missing_ok=True)  # only what a data set consists of: nothing else in out_dir
    clips_dir.mkdir(parents=True, exist_ok=True)
    labels = []
    for index in range(num_clips):
        spec = clip_spec(
            seed,
            index,
            split,
            size=size,
            frames=frames,
            conflict_rate=conflict_rate,
            two_shape_rate=two_shape_rate,
            motion_weights=motion_weights,
            look=look,
            min_translation=min_translation,
        )
        relative = f"clips/{index:06d}.mp4"
        write_video_lossless(out / relative, render_clip(spec), fps)
        labels.append({"path": relative, "split": split, **spec.to_dict()})
    with open(out / "labels.jsonl", "w") as handle:
        handle.writelines(json.dumps(label) + "\n" for label in labels)
    with open(out / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "caption"])
        writer.writerows((label["path"], label["caption"]) for label in labels)
    return out / "captions.csv"
