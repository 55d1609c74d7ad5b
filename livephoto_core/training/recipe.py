"""TrainConfig, the recipe of one training run, read from a JSON file plus ``key=value`` overrides.

The JSON mirrors the dataclasses below: top-level keys, and the sections ``data``, ``model``,
``scratch``, ``vae``, ``text_stage`` and ``validation``. An override names a field by its dotted path
(``data.num_frames=8``) or, when the name is unambiguous, by its bare name (``lr=1e-4``: top-level
fields first, then a field that exactly one section has). Values are JSON (``8``, ``true``,
``[2, 5, 8]``, ``null``); anything that is not valid JSON is taken as a string. Unknown keys and
values of the wrong type are errors, so a typo never silently trains the default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..defaults import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS
from ..errors import InvalidInputError

# LivePhotoConfig fields that training derives from the data and the base; the others may be set
# in `model.livephoto`.
DERIVED_LIVEPHOTO_FIELDS = frozenset({
    "format_version", "base_model", "channel_order", "num_frames", "height", "width", "fps", "prediction_type",
    "cross_attention_dim", "intensity_levels", "intensity_thresholds", "dinov2_hidden_size", "dinov2_patch_size",
    "motion_weights", "motion_module_hash", "unet_block_out_channels", "extra",
})
MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")


@dataclass
class DataConfig:
    index: str = ""  # CSV (path,caption or WebVid's columns) or JSON lines of videos and captions
    shards: str | None = None  # instead of index: webdataset tar shards, a folder of *.tar or a glob pattern
    root: str | None = None  # where relative video paths start (default: the index's folder)
    validation_index: str | None = None  # held-out videos: validation strips, held-out loss, VAE PSNR
    num_frames: int = 16
    stride: int = 4  # source frames between two sampled frames
    size: int = 256  # clips are centre-cropped to a square and resized to size x size
    fps: int = 8  # playback rate stored in the checkpoint
    random_start: bool = True  # clip start drawn per (seed, epoch, item); False: always frame 0
    label_workers: int = 1  # processes for the SSIM labelling pass
    loader_workers: int = 0  # DataLoader worker processes decoding clips
    ssim_cache: str | None = None  # default: <output_dir>/ssim_cache.jsonl
    # A folder scripts/cache_latents.py wrote: the frozen encoders' outputs of every clip (SD-1.5 mode,
    # from data.index); training reads them and loads no VAE, text encoder or DINOv2 (latent_cache.py).
    latent_cache: str | None = None
    thresholds: list[float] | None = None  # the 9 intensity thresholds; default: fitted on the data


@dataclass
class ModelConfig:
    from_scratch: bool = False  # build a tiny SD-structured base (see `scratch`) instead of loading one
    base: str | None = None  # SD-1.5: single .safetensors/.ckpt or diffusers folder (not from scratch)
    dinov2: str | None = None  # DINOv2: transformers folder or .safetensors (not from scratch)
    tokenizer: str | None = None  # CLIP tokenizer folder, for single-file bases
    motion_module: str | None = None  # AnimateDiff motion module to start the motion modules from
    freeze_motion_module: bool = False  # keep it frozen and out of the checkpoint ("external")
    init_from: str | None = None  # a LivePhoto checkpoint (livephoto.safetensors) whose weights start this run
    train_text_encoder: bool = False  # from scratch only: the text encoder trains too
    prediction_type: str = "epsilon"  # or "v_prediction"
    livephoto: dict = field(default_factory=dict)  # LivePhotoConfig fields: reweighter_*, motion_*, dinov2_image_size


@dataclass
class ScratchConfig:
    """The tiny base built when `model.from_scratch`: constructor arguments of each model."""

    unet: dict = field(default_factory=dict)  # diffusers UNet2DConditionModel
    vae: dict = field(default_factory=dict)  # diffusers AutoencoderKL (latent_channels must be 4)
    text_encoder: dict = field(default_factory=dict)  # transformers CLIPTextConfig; vocab from the tokenizer
    dinov2: dict = field(default_factory=dict)  # transformers Dinov2Config
    # DDPM noise schedule (default: SD-1.5's). {"rescale_betas_zero_snr": true, "timestep_spacing":
    # "trailing"} gives the zero-terminal-SNR schedule (needs v_prediction): SD-1.5's keeps 6.8 % of the
    # clean signal at t = 999, from which a from-scratch model reads the motion instead of the words.
    scheduler: dict = field(default_factory=dict)
    words: list[str] | None = None  # the tokenizer's words (default: the toy world's vocabulary)
    # A bundled model's folder (base/ and dinov2/, e.g. livephoto_core/demo_model) whose UNet, VAE and
    # DINOv2 this base starts from instead of random ones: the VAE stage is skipped, and the text
    # encoder is still built here and pretrained by the text stage. With model.init_from set to the
    # same model's livephoto.safetensors, a run fine-tunes that model on a new text encoder and schedule.
    images_from: str | None = None


@dataclass
class VaeConfig:
    """The VAE stage of from-scratch training: reconstruction L1 + L2 + a small KL, on training frames."""

    steps: int = 1000
    clips_per_batch: int = 16
    frames_per_clip: int = 2  # a batch is this many random frames from each of clips_per_batch clips
    lr: float = 1e-3
    warmup_steps: int = 50
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    kl_weight: float = 1e-6
    psnr_frames: int = 256  # held-out frames for the reported reconstruction PSNR
    log_every: int = 50
    checkpoint_every: int = 250  # the stage's own checkpoints (<output_dir>/vae_checkpoints), for resuming


@dataclass
class TextStageConfig:
    """From scratch: contrastive text-clip pretraining of the text encoder, after the VAE stage
    (training.text_stage). 0 steps: the text encoder starts random."""

    steps: int = 0
    clips_per_batch: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    log_every: int = 50


@dataclass
class ValidationConfig:
    every: int = 0  # optimizer steps between validations; 0: only at the end of training
    levels: list[int] = field(default_factory=lambda: [2, 5, 8])
    photo: str | None = None  # default: frame 0 of the first validation video
    prompt: str | None = None  # default: that video's caption
    num_inference_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    seed: int = 0
    loss_clips: int = 0  # held-out clips for a fixed-noise validation loss; 0: none


@dataclass
class TrainConfig:
    output_dir: str = ""
    seed: int = 0
    steps: int = 1000  # optimizer steps
    batch_size: int = 1  # clips per process per micro-batch
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # "no", "bf16", "fp16" (fp16 needs a GPU)
    gradient_checkpointing: bool = False
    text_dropout: float = 0.5  # probability of training on the empty prompt (paper §4.1)
    # Timesteps: uniform over the schedule, except that this fraction of clips draws from
    # [high_noise_from, T) only. The motion of a clip is decided at high noise, where only the words
    # (not the noisy frames) can say it; 0 keeps the paper's uniform draw.
    high_noise_fraction: float = 0.0
    high_noise_from: int = 700
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant, constant_with_warmup, linear, cosine
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0  # None: no clipping
    ema_decay: float | None = None  # e.g. 0.999: keep an EMA of the trained weights and export it
    cache_latents: bool = False  # memoise VAE latents of clips (exact: posterior mode)
    cache_text: bool = False  # memoise text embeddings per caption (exact; frozen text encoder only)
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    time_limit_minutes: float | None = None  # stop (checkpoint and export) after this much wall time
    torch_threads: int | None = None  # intra-op threads per process; 1 is far faster on a busy machine
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    text_stage: TextStageConfig = field(default_factory=TextStageConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainConfig":
        config = _build(cls, values, source, "")
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        problems = []

        def need(condition: bool, message: str) -> None:
            if not condition:
                problems.append(message)

        need(bool(self.output_dir), "output_dir is required")
        need(bool(self.data.index) != bool(self.data.shards),
             "give one of data.index (a CSV or JSON-lines index of videos) and data.shards (tar shards)")
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "log_every", "checkpoint_every",
                     "keep_checkpoints"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1")
        need(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        need(self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}")
        need(self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}")
        need(0 <= self.text_dropout <= 1, "text_dropout must be from 0 to 1")
        need(0 <= self.high_noise_fraction <= 1, "high_noise_fraction must be from 0 to 1")
        need(0 <= self.high_noise_from < 1000, "high_noise_from must be a timestep from 0 to 999")
        need(self.lr > 0, "lr must be > 0")
        need(self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay must be between 0 and 1, or null")
        need(self.time_limit_minutes is None or self.time_limit_minutes > 0, "time_limit_minutes must be > 0")
        need(self.torch_threads is None or self.torch_threads >= 1, "torch_threads must be >= 1, or null")
        need(self.data.size % 8 == 0 and 64 <= self.data.size <= 1024,
             "data.size must be a multiple of 8 from 64 to 1024 (what the pipeline animates)")
        need(self.data.label_workers >= 1 and self.data.loader_workers >= 0, "data workers must be >= 1 / >= 0")
        need(self.model.prediction_type in ("epsilon", "v_prediction"),
             "model.prediction_type must be epsilon or v_prediction")
        if self.model.from_scratch:
            need(not self.data.shards,
                 "data.shards is for the SD-1.5 mode: the from-scratch stages draw clips at random, so they need "
                 "data.index")
            need(self.model.base is None and self.model.dinov2 is None and self.model.motion_module is None,
                 "model.base, model.dinov2 and model.motion_module are for pretrained bases, not from_scratch")
            need(self.scratch.vae.get("latent_channels", 4) == 4, "scratch.vae.latent_channels must be 4")
            need(self.vae.steps >= 0 and self.vae.clips_per_batch >= 1 and self.vae.frames_per_clip >= 1
                 and self.vae.checkpoint_every >= 1,
                 "vae.steps must be >= 0, vae.clips_per_batch, vae.frames_per_clip and vae.checkpoint_every >= 1")
            need(self.text_stage.steps >= 0 and self.text_stage.clips_per_batch >= 2 and self.text_stage.lr > 0
                 and self.text_stage.log_every >= 1,
                 "text_stage.steps must be >= 0, text_stage.clips_per_batch >= 2, text_stage.lr > 0")
            zero_snr = self.scratch.scheduler.get("rescale_betas_zero_snr", False)
            need(not zero_snr or self.model.prediction_type == "v_prediction",
                 "scratch.scheduler.rescale_betas_zero_snr needs model.prediction_type=v_prediction (at zero SNR "
                 "the noise says nothing about the clip, so epsilon cannot be learned there)")
        else:
            need(self.text_stage.steps == 0, "text_stage is for from-scratch text encoders; set text_stage.steps=0")
            need(self.model.base is not None and self.model.dinov2 is not None,
                 "model.base (SD-1.5) and model.dinov2 are required unless model.from_scratch")
            need(not self.model.train_text_encoder, "model.train_text_encoder needs model.from_scratch")
        need(not self.model.freeze_motion_module or self.model.motion_module is not None,
             "model.freeze_motion_module needs model.motion_module")
        if self.data.latent_cache is not None:
            need(not self.model.from_scratch,
                 "data.latent_cache is for the SD-1.5 mode: from scratch the VAE and text encoder train first")
            need(bool(self.data.index), "data.latent_cache is built from data.index (not data.shards); set data.index")
            need(not (self.cache_latents or self.cache_text),
                 "cache_latents and cache_text memoise what data.latent_cache already holds; turn them off")
            need(self.data.validation_index is None and self.validation.photo is None,
                 "validation strips and the held-out loss run the frozen encoders, which a run from "
                 "data.latent_cache does not load: unset data.validation_index and validation.photo, and render "
                 "the exported model with livephoto animate")
        need(not (self.cache_text and self.model.train_text_encoder),
             "cache_text is exact only with a frozen text encoder; turn one of them off")
        derived = sorted(DERIVED_LIVEPHOTO_FIELDS & set(self.model.livephoto))
        need(not derived, f"model.livephoto cannot set {derived}: training derives them from the data and base")
        need(self.validation.every >= 0, "validation.every must be >= 0")
        need(self.validation.photo is None or self.validation.prompt is not None,
             "validation.photo needs a validation.prompt")
        need(all(isinstance(v, int) and 1 <= v <= 10 for v in self.validation.levels),
             "validation.levels must be whole numbers from 1 to 10")
        if problems:
            raise InvalidInputError(f"{source}: " + "; ".join(problems))


SECTIONS = {name: cls for name, cls in typing.get_type_hints(TrainConfig).items() if dataclasses.is_dataclass(cls)}


def load_train_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a JSON config (or start from the defaults when `path` is None) and apply `key=value` overrides."""
    values: dict = {}
    source = "overrides"
    if path is not None:
        path = Path(path)
        source = path.name
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidInputError(f"config {path} does not exist") from None
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"config {path.name} is not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise InvalidInputError(f"config {path.name} must hold a JSON object")
    for override in overrides:
        apply_override(values, override)
    return TrainConfig.from_dict(values, source)


def apply_override(values: dict, override: str) -> None:
    """Set ``key=value`` in the nested dict `values` (see the module docstring for the key forms)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise InvalidInputError(f"override {override!r} must look like key=value (e.g. lr=1e-4 or data.num_frames=8)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    path = resolve_key(key.strip())
    target = values
    for part in path[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvalidInputError(f"override {key}: {part} is not a section")
        target = child
    target[path[-1]] = value


def resolve_key(key: str) -> list[str]:
    """A dotted or bare field name -> its full path; unknown or ambiguous names are errors."""
    parts = key.split(".")
    if len(parts) > 1:
        return parts  # checked when the config is built
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    if key in top:
        return parts
    owners = [name for name, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
    if len(owners) == 1:
        return [owners[0], key]
    if owners:
        raise InvalidInputError(f"override {key} is ambiguous: say {' or '.join(f'{o}.{key}' for o in owners)}")
    raise InvalidInputError(f"unknown config key {key!r}")


# --- building dataclasses from dicts, with type checks ---------------------------------------------


def _build(cls, values, source: str, prefix: str):
    if not isinstance(values, dict):
        raise InvalidInputError(f"{source}: {prefix.rstrip('.') or 'the config'} must be a JSON object")
    fields = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InvalidInputError(f"{source}: unknown config keys {[prefix + k for k in unknown]}")
    kwargs = {}
    for name, value in values.items():
        annotation = fields[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, value, source, f"{prefix}{name}.")
        else:
            kwargs[name] = _checked(value, annotation, f"{source}: {prefix}{name}")
    return cls(**kwargs)


def _checked(value, annotation, where: str):
    """`value` as `annotation` (int, float, bool, str, list[...], dict, X | None), else an error."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = next(a for a in options if a is not type(None))
        return _checked(value, inner, where)
    if origin is list:
        if not isinstance(value, list):
            raise InvalidInputError(f"{where} must be a list; got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_checked(v, item, where) for v in value]
    if annotation is dict:
        if not isinstance(value, dict):
            raise InvalidInputError(f"{where} must be an object; got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise InvalidInputError(f"{where} must be true or false; got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"{where} must be a whole number; got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInputError(f"{where} must be a number; got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise InvalidInputError(f"{where} must be text; got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r}")  # a bug in this file, not user input
