"""LivePhotoConfig: everything needed to rebuild the trained LivePhoto parts around a base model.

The config travels as JSON in the safetensors metadata of a LivePhoto checkpoint (key
``livephoto_config``), so a checkpoint file alone says how to build, condition and sample it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from .defaults import DEFAULT_INTENSITY, DEFAULT_INVERSION_END, DEFAULT_INVERSION_START, DEFAULT_NUM_FRAMES
from .errors import ModelFileError
from .intensity import DEFAULT_THRESHOLDS, LEVELS

FORMAT_VERSION = 1
METADATA_KEY = "livephoto_config"

# UNet input, per frame. Fig. 2 of the paper and its caption; the §3.2 text swaps the last two.
CHANNEL_ORDER = ("noisy_latent:4", "reference_latent:4", "frame_embedding:1", "intensity_map:1")
CONDITIONING_CHANNELS = 6  # everything after the 4 noisy-latent channels



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
        problems = []
        if len(self.intensity_thresholds) != self.intensity_levels - 1:
            problems.append(f"{self.intensity_levels} levels need {self.intensity_levels - 1} thresholds")
        if not 1 <= self.default_intensity <= self.intensity_levels:
            problems.append(f"default intensity {self.default_intensity} is not a level from 1 to {self.intensity_levels}")
        if any(not math.isfinite(t) for t in self.intensity_thresholds) or any(
            b <= a for a, b in zip(self.intensity_thresholds, self.intensity_thresholds[1:])
        ):
            problems.append("intensity thresholds must be finite and strictly increasing")
        if self.channel_order != CHANNEL_ORDER:
            problems.append(f"channel order {self.channel_order} is not {CHANNEL_ORDER}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            problems.append(f"unknown prediction type {self.prediction_type!r}")
        if self.num_frames > self.motion_max_seq_length:
            problems.append(f"{self.num_frames} frames exceed the motion modules' {self.motion_max_seq_length}")
        if self.motion_weights not in ("checkpoint", "external"):
            problems.append(f"motion_weights must be 'checkpoint' or 'external', not {self.motion_weights!r}")
        if problems:
            raise ModelFileError("invalid LivePhoto config: " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def to_metadata(self) -> dict[str, str]:
        return {METADATA_KEY: self.to_json(), "format": "livephoto", "format_version": str(self.format_version)}

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> "LivePhotoConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelFileError(f"{source}: the LivePhoto config is not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ModelFileError(f"{source}: the LivePhoto config is not a JSON object")
        version = values.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFileError(
                f"{source} is a LivePhoto checkpoint of format version {version}; this livephoto reads "
                f"version {FORMAT_VERSION}: re-export it with a matching livephoto version"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelFileError(f"{source}: unknown LivePhoto config fields {unknown}; is it from a newer livephoto?")
        try:
            return cls(**values)
        except ModelFileError:
            raise
        except (TypeError, ValueError, OverflowError) as error:  # a field of the wrong type, e.g. null for a list
            raise ModelFileError(f"{source}: the LivePhoto config has a field of the wrong type ({error}); "
                                 f"re-export the checkpoint") from None

    @classmethod
    def from_metadata(cls, metadata: dict[str, str] | None, source: str = "checkpoint") -> "LivePhotoConfig":
        if not metadata or METADATA_KEY not in metadata:
            raise ModelFileError(f"{source} has no LivePhoto config in its metadata; is it a LivePhoto checkpoint?")
        return cls.from_json(metadata[METADATA_KEY], source)
