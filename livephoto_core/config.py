"""LivePhotoConfig: everything needed to rebuild the trained LivePhoto parts around a base model.

The config travels as JSON in the safetensors metadata of a LivePhoto checkpoint (key
``livephoto_config``), so a checkpoint file alone says how to build, condition and sample it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .checks import MAX_FPS, MAX_FRAMES, MAX_SIZE, MIN_FPS, MIN_FRAMES, MIN_SIZE
from .defaults import DEFAULT_INTENSITY, DEFAULT_INVERSION_END, DEFAULT_INVERSION_START, DEFAULT_NUM_FRAMES
from .errors import ModelFileError
from .intensity import DEFAULT_THRESHOLDS, LEVELS
from .loading.schema import Bool, Field, Int, List, Number, Object, Schema, Str, parse_json

FORMAT_VERSION = 1
METADATA_KEY = "livephoto_config"

# UNet input, per frame. Fig. 2 of the paper and its caption; the §3.2 text swaps the last two.
CHANNEL_ORDER = ("noisy_latent:4", "reference_latent:4", "frame_embedding:1", "intensity_map:1")
CONDITIONING_CHANNELS = 6  # everything after the 4 noisy-latent channels

_REEXPORT = "re-export the checkpoint"
_WIDTH = Int(1, 16384)  # any layer width: SD-1.5's widest is 1280, DINOv2-g's 1536
# Every field of the config, with the range it can work in: read from a checkpoint or built by training, a
# config is checked against it (LivePhotoConfig.validate), so a zero patch size or fps, or a list where a
# number belongs, is refused when the file is read and never reaches a model or a render.
SCHEMA = Schema(
    "the LivePhoto config",
    {
        "format_version": Field(Int(FORMAT_VERSION, FORMAT_VERSION), required=True),
        "base_model": Str(("sd15", "bundled")),
        "channel_order": List(Str(max_length=64), len(CHANNEL_ORDER), len(CHANNEL_ORDER)),
        "num_frames": Int(MIN_FRAMES, MAX_FRAMES),
        # The default size of a render, so within what a render accepts (a multiple of 8: validate).
        "height": Int(MIN_SIZE, MAX_SIZE),
        "width": Int(MIN_SIZE, MAX_SIZE),
        "fps": Int(int(MIN_FPS), int(MAX_FPS)),  # the clips' playback rate, which the video writers store
        "prediction_type": Str(("epsilon", "v_prediction")),
        "cross_attention_dim": _WIDTH,
        "intensity_levels": Int(2, 100),
        "default_intensity": Int(1, 100),
        "intensity_thresholds": List(Number(-1, 1), 1, 99),  # mean SSIMs, which lie in [-1, 1]
        "inversion_start": Number(0, 1),
        "inversion_end": Number(0, 1),
        "dinov2_hidden_size": _WIDTH,
        "dinov2_image_size": Int(1, 4096),
        "dinov2_patch_size": Int(1, 4096),
        "dinov2_variant": Str(max_length=200),
        "text_reweighting": Bool(),
        "intensity_map": Bool(),
        "text_time_embedding": Bool(),
        "text_film": Bool(),
        "reweighter_layers": Int(1, 64),
        "reweighter_heads": Int(1, 1024),
        "reweighter_ff_mult": Int(1, 64),
        "reweighter_init_bias": Number(-100, 100),
        "motion_max_seq_length": Int(MIN_FRAMES, 4096),
        "motion_use_mid_block": Bool(),
        "motion_num_attention_heads": Int(1, 1024),
        "motion_norm_num_groups": Int(1, 1024),
        "motion_weights": Str(("checkpoint", "external")),
        "motion_module_hash": Str(max_length=64),
        "unet_block_out_channels": List(_WIDTH, 1, 8),
        "extra": Object(),
    },
    fix=_REEXPORT,
    extra="refuse",
)


@dataclass
class LivePhotoConfig:
    """How the LivePhoto parts were built and trained. Defaults are the SD-1.5 recipe of the paper."""

    format_version: int = FORMAT_VERSION
    # "sd15": the user brings an SD-1.5 base. "bundled": the checkpoint's folder carries its own base
    # (the demo model), which the loader finds beside it.
    base_model: str = "sd15"
    channel_order: tuple[str, ...] = CHANNEL_ORDER
    num_frames: int = DEFAULT_NUM_FRAMES
    height: int = 256
    width: int = 256
    fps: int = 8
    prediction_type: str = "epsilon"
    cross_attention_dim: int = 768

    intensity_levels: int = LEVELS
    default_intensity: int = DEFAULT_INTENSITY  # what a render asks for when its caller names no level
    intensity_thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS

    inversion_start: float = DEFAULT_INVERSION_START  # a_n for the first frame (paper eq. 3)
    inversion_end: float = DEFAULT_INVERSION_END  # a_n for the last frame

    # Content encoder: a frozen DINOv2, CLS + patch tokens at `dinov2_image_size`, one Linear.
    dinov2_hidden_size: int = 1024
    dinov2_image_size: int = 224
    dinov2_patch_size: int = 14
    dinov2_variant: str = "dinov2-large"

    # Ablation switches (paper Table 2): off, the reweighter passes CLIP through unchanged / the
    # intensity map is all zeros. The full model has both on.
    text_reweighting: bool = True
    intensity_map: bool = True
    # Departure from the paper, off in its recipe: the mean of the (reweighted) text tokens, projected,
    # is added to the timestep embedding, so the words reach every ResNet as a FiLM-like shift and not
    # only through cross-attention. See modules.unet.install_text_time_embedding.
    text_time_embedding: bool = False
    # Departure from the paper, off in its recipe: the same text vector scales and shifts the features of
    # every ResNet after its second norm (FiLM), by a still part and a part that grows with the frame's
    # place in the clip. See modules.unet.install_text_film.
    text_film: bool = False

    # Text reweighter: transformer encoder + Linear + sigmoid (paper §3.5).
    reweighter_layers: int = 3
    reweighter_heads: int = 8
    reweighter_ff_mult: int = 4
    reweighter_init_bias: float = 4.0  # sigmoid(4) = 0.982: starts close to identity

    # AnimateDiff-style motion modules (diffusers MotionAdapter arguments).
    motion_max_seq_length: int = 32
    motion_use_mid_block: bool = True
    motion_num_attention_heads: int = 8
    motion_norm_num_groups: int = 32
    # Where the motion weights live: "checkpoint", or "external" when training kept an AnimateDiff
    # file frozen; then `motion_module_hash` names the file the loader must be given.
    motion_weights: str = "checkpoint"
    motion_module_hash: str = ""

    # The base the parts were trained on, for a clear error when they do not fit.
    unet_block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)

    extra: dict = field(default_factory=dict)  # free-form provenance (training run, data, steps)

    def __post_init__(self):
        self.channel_order = tuple(self.channel_order)
        self.intensity_thresholds = tuple(float(t) for t in self.intensity_thresholds)
        self.unet_block_out_channels = tuple(int(c) for c in self.unet_block_out_channels)
        self.validate()

    @property
    def num_content_tokens(self) -> int:
        """CLS + one token per patch of the DINOv2 input."""
        return (self.dinov2_image_size // self.dinov2_patch_size) ** 2 + 1

    def validate(self) -> None:
        """Every field against SCHEMA, then the rules between fields."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        SCHEMA.check({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}, "config")
        problems = []
        if len(self.intensity_thresholds) != self.intensity_levels - 1:
            problems.append(f"{self.intensity_levels} levels need {self.intensity_levels - 1} thresholds")
        if not 1 <= self.default_intensity <= self.intensity_levels:
            problems.append(f"default intensity {self.default_intensity} is not a level from 1 to {self.intensity_levels}")
        if any(b <= a for a, b in zip(self.intensity_thresholds, self.intensity_thresholds[1:])):
            problems.append("intensity thresholds must be strictly increasing")
        if self.channel_order != CHANNEL_ORDER:
            problems.append(f"channel order {self.channel_order} is not {CHANNEL_ORDER}")
        if self.num_frames > self.motion_max_seq_length:
            problems.append(f"{self.num_frames} frames exceed the motion modules' {self.motion_max_seq_length}")
        if self.height % 8 or self.width % 8:
            problems.append(f"size {self.width}x{self.height} is not a multiple of 8 (the VAE's factor)")
        if self.dinov2_patch_size > self.dinov2_image_size:
            problems.append(f"DINOv2 patch size {self.dinov2_patch_size} exceeds its image size {self.dinov2_image_size}")
        # Attention splits a width evenly between its heads, and a GroupNorm its channels between groups.
        if self.cross_attention_dim % self.reweighter_heads:
            problems.append(f"{self.reweighter_heads} reweighter heads do not divide width {self.cross_attention_dim}")
        for channels in self.unet_block_out_channels:
            for parts, name in ((self.motion_num_attention_heads, "motion heads"), (self.motion_norm_num_groups,
                                                                                    "motion norm groups")):
                if channels % parts:
                    problems.append(f"{parts} {name} do not divide the UNet width {channels}")
        if problems:
            raise ModelFileError("invalid LivePhoto config: " + "; ".join(dict.fromkeys(problems)) + f"; {_REEXPORT}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def to_metadata(self) -> dict[str, str]:
        return {METADATA_KEY: self.to_json(), "format": "livephoto", "format_version": str(self.format_version)}

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> "LivePhotoConfig":
        values = parse_json(text, f"{source}: the LivePhoto config", _REEXPORT)
        version = values.get("format_version") if isinstance(values, dict) else None
        if isinstance(values, dict) and version != FORMAT_VERSION:
            raise ModelFileError(
                f"{source} is a LivePhoto checkpoint of format version {version}; this livephoto reads "
                f"version {FORMAT_VERSION}: re-export it with a matching livephoto version"
            )
        checked = SCHEMA.check(values, source)
        try:
            return cls(**checked)
        except ModelFileError as error:  # a rule between fields: name the file too
            raise ModelFileError(f"{source}: {error}") from None

    @classmethod
    def from_metadata(cls, metadata: dict[str, str] | None, source: str = "checkpoint") -> "LivePhotoConfig":
        if not metadata or METADATA_KEY not in metadata:
            raise ModelFileError(f"{source} has no LivePhoto config in its metadata; is it a LivePhoto checkpoint?")
        return cls.from_json(metadata[METADATA_KEY], source)
