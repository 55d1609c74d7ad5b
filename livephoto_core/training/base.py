"""The frozen (or, from scratch, trained) models LivePhoto training builds on.

Pretrained: the user's SD-1.5 and DINOv2, loaded as the CLI loads them. From scratch (the demo
model; no pretrained SD exists at tiny size): a tiny SD-structured base is built from
``TrainConfig.scratch``, its VAE trained first (``training.vae``), and the result written as a
diffusers-layout folder ``<output_dir>/base`` plus a transformers ``<output_dir>/dinov2``, which
the LivePhoto stage then loads exactly like a pretrained base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError, ModelFileError
from ..loading.dinov2 import load_dinov2
from ..loading.files import content_hash
from ..loading.motion_module import LoadedMotionModule, load_motion_adapter
from ..loading.sd15 import load_sd15, shipped_config
from .recipe import TrainConfig
from .toyworld import TOY_VOCABULARY
from .word_tokenizer import write_word_tokenizer

# Defaults of the from-scratch base; TrainConfig.scratch overrides them key by key.
# Norm groups: at these widths SD's 32 groups would hold 1-2 channels each, and a GroupNorm of one
# channel removes that channel's mean per image: before conv_out (VAE decoder, UNet) the model then
# cannot say how bright or what colour an image is (measured: a VAE stuck at 15 dB PSNR). 8 groups
# keep 4-8 channels per group. attention_head_dim is diffusers' name for the number of heads: 2 and 4
# heads of width 16 run about 40% faster on a CPU than 8 heads of width 4-8.
SCRATCH_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    attention_head_dim=(2, 4),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=8,
)
# Spatial factor 4 (two downsamplers): 64 px frames -> 4 x 16 x 16 latents.
SCRATCH_VAE = dict(
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
)
SCRATCH_TEXT_ENCODER = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=256,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
SCRATCH_DINOV2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=64, patch_size=8)


@dataclass
class TrainingBase:
    """What the LivePhoto stage builds on, loaded from files in every mode."""

    unet2d: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL (None from a latent cache)
    text_encoder: Any  # transformers CLIPTextModel (None from a latent cache)
    tokenizer: Any  # transformers CLIPTokenizer (None from a latent cache)
    scheduler_config: dict
    dinov2: Any  # transformers Dinov2Model
    motion: LoadedMotionModule | None
    hashes: dict[str, str]
    folder: Path  # where it was loaded from (the SD-1.5 file or folder)


def load_training_base(config: TrainConfig, output_dir: Path, cached_dinov2: torch.nn.Module | None = None
                       ) -> TrainingBase:
    """The base models. With `cached_dinov2` (training from a latent cache, whose stand-in carries
    DINOv2's config) the VAE, text encoder, tokenizer and DINOv2's weights are not loaded: the cache
    holds their outputs; vae, text_encoder and tokenizer are then None."""
    model = config.model
    if model.from_scratch:
        base_path, dinov2_path, tokenizer_path = output_dir / "base", output_dir / "dinov2", None
    else:
        base_path, dinov2_path, tokenizer_path = Path(model.base), Path(model.dinov2), model.tokenizer
    encoders = cached_dinov2 is None
    components = load_sd15(base_path, tokenizer_path=tokenizer_path, encoders=encoders)
    if encoders and components.tokenizer is None:
        raise ModelFileError(
            f"{base_path.name} has no tokenizer/ and its vocabulary is not CLIP's: set model.tokenizer to the "
            f"folder with its vocab.json and merges.txt"
        )
    scheduler_prediction = components.scheduler_config.get("prediction_type", "epsilon")
    if not model.from_scratch and scheduler_prediction != model.prediction_type:
        raise InvalidInputError(
            f"model.prediction_type is {model.prediction_type} but the frozen base {base_path.name} predicts "
            f"{scheduler_prediction}; set model.prediction_type={scheduler_prediction}"
        )
    if encoders:
        loaded = load_dinov2(dinov2_path)
        dinov2, dinov2_hash = loaded.model, loaded.content_hash
    else:
        dinov2, dinov2_hash = cached_dinov2, content_hash(dinov2_path)
    hashes = {"base": components.content_hash, "dinov2": dinov2_hash}
    motion = None
    if model.motion_module is not None:
        motion = load_motion_adapter(model.motion_module, components.unet.config.block_out_channels)
        hashes["motion_module"] = motion.content_hash
    return TrainingBase(
        components.unet, components.vae, components.text_encoder, components.tokenizer,
        components.scheduler_config, dinov2, motion, hashes, base_path,
    )


# --- from scratch --------------------------------------------------------------------------------


@dataclass
class ScratchBase:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    dinov2: Any
    scheduler_config: dict
    words: list[str]
    vae_trained: bool = False  # the VAE came trained (scratch.images_from): no VAE stage


def build_scratch_base(config: TrainConfig) -> ScratchBase:
    """Randomly initialised tiny base models (seeded by config.seed), shaped by config.scratch; the UNet,
    VAE and DINOv2 of a bundled model instead when scratch.images_from names one."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model

    scratch = config.scratch
    words = list(scratch.words if scratch.words is not None else TOY_VOCABULARY)
    tokenizer = word_tokenizer(words)
    vocab_size = len(tokenizer)
    text_config = {**SCRATCH_TEXT_ENCODER, **scratch.text_encoder}
    _check_keys(text_config, CLIPTextConfig().to_dict(), "scratch.text_encoder")
    # The word tokenizer puts its two special tokens last: start = size - 2, end = padding = size - 1.
    text_config.update(vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                       pad_token_id=vocab_size - 1)
    unet_config = {**SCRATCH_UNET, "sample_size": config.data.size // 4, **scratch.unet}
    if unet_config.setdefault("cross_attention_dim", text_config["hidden_size"]) != text_config["hidden_size"]:
        raise InvalidInputError("scratch.unet.cross_attention_dim must equal scratch.text_encoder.hidden_size")
    dinov2_config = {**SCRATCH_DINOV2, **scratch.dinov2}
    _check_keys(dinov2_config, Dinov2Config().to_dict(), "scratch.dinov2")
    scheduler_config = {**shipped_config("scheduler"), **scratch.scheduler}
    # The LivePhoto config carries the prediction type; a v-prediction base would not load as SD-1.5.
    scheduler_config.pop("prediction_type", None)

    torch.manual_seed(config.seed)
    if scratch.images_from is not None:
        unet, vae, dinov2 = _bundled_image_models(Path(scratch.images_from), text_config["hidden_size"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
        return ScratchBase(unet, vae, text_encoder, tokenizer, dinov2, scheduler_config, words, vae_trained=True)
    try:
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**{**SCRATCH_VAE, "sample_size": config.data.size, **scratch.vae})
    except TypeError as error:  # an unknown constructor argument
        raise InvalidInputError(f"scratch.unet / scratch.vae: {error}") from None
    # After the UNet and VAE: the seeded draws every earlier run made.
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    dinov2 = Dinov2Model(Dinov2Config(**dinov2_config))
    return ScratchBase(unet, vae, text_encoder, tokenizer, dinov2, scheduler_config, words)


def _bundled_image_models(folder: Path, text_dim: int):
    """The UNet, VAE and DINOv2 of a bundled model's folder, checked against the new text encoder's width."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import Dinov2Model

    parts = {"UNet": folder / "base" / "unet", "VAE": folder / "base" / "vae", "DINOv2": folder / "dinov2"}
    for name, path in parts.items():
        if not (path / "config.json").is_file():
            raise InvalidInputError(
                f"scratch.images_from: {folder} has no {name} at {path}; give a bundled model's folder "
                f"(base/unet, base/vae and dinov2/, as livephoto_core/demo_model has)"
            )
    unet = UNet2DConditionModel.from_pretrained(parts["UNet"])
    if unet.config.cross_attention_dim != text_dim:
        raise InvalidInputError(
            f"scratch.images_from: the UNet in {folder} reads text of width {unet.config.cross_attention_dim}, "
            f"but scratch.text_encoder.hidden_size is {text_dim}; set them equal"
        )
    return unet, AutoencoderKL.from_pretrained(parts["VAE"]), Dinov2Model.from_pretrained(parts["DINOv2"])


def word_tokenizer(words: list[str]):
    """A CLIPTokenizer whose vocabulary is `words` (one token each), built in a temporary folder."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        return CLIPTokenizer.from_pretrained(write_word_tokenizer(folder, words))


def _check_keys(values: dict, known: dict, where: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidInputError(f"{where}: unknown keys {unknown}")


def write_base_folder(folder: Path, unet, vae, text_encoder, scheduler_config: dict) -> None:
    """The models of a diffusers-layout SD folder (unet/ vae/ text_encoder/ scheduler/) that load_sd15
    reads; the caller adds tokenizer/ (vocab.json + merges.txt, which the loader reads)."""
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2), encoding="utf-8")
