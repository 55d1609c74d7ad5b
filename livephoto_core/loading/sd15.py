"""Load the user's SD-1.5 (single .safetensors/.ckpt or diffusers folder) as diffusers/transformers models.

Single files are converted with diffusers' own LDM conversion functions. Their configs are the
shipped SD-1.5 configs (``configs/sd15``) with every size that the weights' shapes reveal put in, so
the same code loads the real 860M-parameter SD-1.5 and a tiny test model of the same structure. What
shapes cannot reveal stays SD-1.5's: 8 UNet attention heads, 32 norm groups, CLIP heads of width 64.
"""

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFileError
from .detect import LDM_CLIP_PREFIX, LDM_UNET_PREFIX, LDM_VAE_PREFIXES, detect_path, require_kind
from .files import build_model, content_hash, load_pretrained, load_state_dict
from .folder_configs import SCHEDULER, TEXT_ENCODER, UNET, VAE, read_config
from .schema import expect_shape
from .tokenizer import load_clip_tokenizer

CLIP_VOCAB_SIZE = 49408
SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "sd15"
_CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}


@dataclass
class SD15Components:
    """The frozen SD-1.5 parts LivePhoto builds on, plus where they came from."""

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any | None  # diffusers.AutoencoderKL; None when loaded without encoders
    text_encoder: Any | None  # transformers.CLIPTextModel; None when loaded without encoders
    tokenizer: Any | None  # transformers.CLIPTokenizer, None when no vocabulary is available
    scheduler_config: dict[str, Any]
    source: str
    content_hash: str


def shipped_config(component: str) -> dict[str, Any]:
    """A fresh copy of SD-1.5's diffusers config for "unet", "vae", "text_encoder" or "scheduler"."""
    with open(SHIPPED_CONFIGS / _CONFIG_FILES[component], encoding="utf-8") as file:
        return json.load(file)


def load_sd15(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, tokenizer_path: str | os.PathLike | None = None,
    encoders: bool = True,
) -> SD15Components:
    """Load an SD-1.5 single file or diffusers folder; refuse any other kind with a message saying why.

    The tokenizer comes from ``tokenizer_path``, else the folder's ``tokenizer/``, else (for CLIP's
    49408-token text encoder) open-clip-torch's vocabulary; it is None when none of these applies.
    ``encoders=False`` loads the UNet and scheduler only (VAE, text encoder and tokenizer None): for
    training from a latent cache, which holds their outputs.
    """
    path = Path(path)
    require_kind(detect_path(path), "sd15", path, "--base")
    if path.is_dir():
        unet, vae, text_encoder, scheduler_config = _load_folder(path, dtype, encoders)
    else:
        state_dict, _ = load_state_dict(path)
        missing = [
            name
            for name, prefixes in (
                ("UNet", (LDM_UNET_PREFIX,)),
                ("VAE", LDM_VAE_PREFIXES),
                ("text encoder", (LDM_CLIP_PREFIX,)),
            )
            if not any(key.startswith(prefixes) for key in state_dict)
        ]
        if missing:
            raise ModelFileError(
                f"{path.name} has no {' and no '.join(missing)} weights; --base needs a full SD-1.5 checkpoint "
                "(UNet, VAE and text encoder) or a diffusers folder"
            )
        unet = unet_from_ldm(state_dict, dtype, path.name)
        vae = vae_from_ldm(state_dict, dtype, path.name) if encoders else None
        text_encoder = text_encoder_from_ldm(state_dict, dtype, path.name) if encoders else None
        del state_dict
        scheduler_config = shipped_config("scheduler")
    if not encoders:
        return SD15Components(unet, None, None, None, scheduler_config, str(path), content_hash(path))
    if unet.config.in_channels != vae.config.latent_channels:
        raise ModelFileError(
            f"{path.name}: the UNet denoises {unet.config.in_channels}-channel latents but the VAE makes "
            f"{vae.config.latent_channels}-channel ones; the file mixes parts of different models"
        )
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise ModelFileError(
            f"{path.name}: the UNet attends to {unet.config.cross_attention_dim}-d text but the text encoder "
            f"gives {text_encoder.config.hidden_size}-d; the file mixes parts of different models"
        )
    tokenizer = _find_tokenizer(path, tokenizer_path, text_encoder.config.vocab_size)
    if tokenizer is not None and len(tokenizer) > text_encoder.config.vocab_size:
        raise ModelFileError(
            f"the tokenizer has {len(tokenizer)} tokens but the text encoder of {path.name} only "
            f"{text_encoder.config.vocab_size}; pass the tokenizer that belongs to this model"
        )
    if tokenizer is not None and max(tokenizer.get_vocab().values()) >= text_encoder.config.vocab_size:
        raise ModelFileError(  # ids are distinct (check_tokenizer_files), so only a sparse vocabulary gets here
            f"the tokenizer has token ids up to {max(tokenizer.get_vocab().values())} but the text encoder of "
            f"{path.name} embeds ids below {text_encoder.config.vocab_size}; pass the tokenizer that belongs to "
            f"this model"
        )
    return SD15Components(unet, vae, text_encoder, tokenizer, scheduler_config, str(path), content_hash(path))


def _find_tokenizer(path: Path, tokenizer_path, vocab_size: int):
    if tokenizer_path is not None:
        return load_clip_tokenizer(tokenizer_path)
    if path.is_dir() and (path / "tokenizer").is_dir():
        return load_clip_tokenizer(path / "tokenizer")
    if vocab_size != CLIP_VOCAB_SIZE:  # a model with its own small vocabulary cannot use CLIP's
        return None
    try:
        return load_clip_tokenizer()
    except ModelFileError:  # no vocabulary installed: callers that tokenize elsewhere (ComfyUI) need none
        return None


# --- diffusers folders -----------------------------------------------------------------------------


def _load_folder(folder: Path, dtype: torch.dtype, encoders: bool = True):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    for sub in ("unet", "vae", "text_encoder"):
        if not (folder / sub / "config.json").is_file():
            raise ModelFileError(
                f"{folder.name} has no {sub}/config.json; "
                "a diffusers SD-1.5 folder needs unet/, vae/ and text_encoder/"
            )
    # The UNet's config was checked by detect_path; these are checked before any weights are read.
    read_config(folder / "vae" / "config.json", VAE)
    read_config(folder / "text_encoder" / "config.json", TEXT_ENCODER)
    unet = load_pretrained(UNet2DConditionModel, folder / "unet", f"{folder.name}/unet", torch_dtype=dtype)
    vae = text_encoder = None
    if encoders:
        vae = load_pretrained(AutoencoderKL, folder / "vae", f"{folder.name}/vae", torch_dtype=dtype)
        text_encoder = load_pretrained(CLIPTextModel, folder / "text_encoder", f"{folder.name}/text_encoder",
                                       dtype=dtype)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    if scheduler_file.is_file():
        scheduler_config = read_config(scheduler_file, SCHEDULER)
    else:
        scheduler_config = shipped_config("scheduler")
    return unet, vae, text_encoder, scheduler_config


# --- single files: configs from shapes -------------------------------------------------------------


def _strip(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(getattr(value, "shape", value)) for key, value in state_dict.items()}


def _indices(shapes: Mapping[str, Any], pattern: str) -> list[int]:
    """Sorted distinct integers N of keys matching ``pattern`` (a regex with one (\\d+) group) at the start."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in shapes if (m := regex.match(key))})


def infer_unet_config(unet_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """SD-1.5's UNet config with the sizes read from LDM-layout shapes (keys without ``model.diffusion_model.``)."""
    s = unet_shapes
    blocks = _indices(s, r"input_blocks\.(\d+)\.")
    downsamplers = [i for i in blocks if f"input_blocks.{i}.0.op.weight" in s]
    levels = len(downsamplers) + 1
    layers, remainder = divmod(len(blocks) - 1 - len(downsamplers), levels)
    if remainder or layers < 1 or blocks != list(range(len(blocks))):
        raise ValueError(f"{len(blocks)} input blocks with {len(downsamplers)} downsamplers do not form an SD UNet")
    first_block = [1 + level * (layers + 1) for level in range(levels)]
    down_attention = [f"input_blocks.{b}.1.proj_in.weight" in s for b in first_block]
    up_attention = [f"output_blocks.{level * (layers + 1)}.1.proj_in.weight" in s for level in range(levels)]
    depths = {
        len(_indices(s, rf"input_blocks\.{b}\.1\.transformer_blocks\.(\d+)\."))
        for b, attends in zip(first_block, down_attention)
        if attends
    }
    if len(depths) > 1:
        raise ValueError(f"transformer depths {sorted(depths)} differ between levels")
    config = shipped_config("unet")
    config.update(  # convolution weights are [out, in, kh, kw], Linear weights [out, in]
        in_channels=expect_shape(s, "input_blocks.0.0.weight", 4)[1],
        out_channels=expect_shape(s, "out.2.weight", 4)[0],
        block_out_channels=[expect_shape(s, f"input_blocks.{b}.0.out_layers.3.weight", 4)[0] for b in first_block],
        layers_per_block=layers,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attention],
        cross_attention_dim=expect_shape(s, next(key for key in s if key.endswith("attn2.to_k.weight")), 2)[1],
    )
    if depths != {1}:
        config["transformer_layers_per_block"] = depths.pop()
    return config


def infer_vae_config(vae_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """SD-1.5's VAE config with the sizes read from LDM-layout shapes (keys without ``first_stage_model.``)."""
    s = vae_shapes
    levels = _indices(s, r"encoder\.down\.(\d+)\.")
    config = shipped_config("vae")
    config.update(  # convolution weights are [out, in, kh, kw]
        in_channels=expect_shape(s, "encoder.conv_in.weight", 4)[1],
        out_channels=expect_shape(s, "decoder.conv_out.weight", 4)[0],
        block_out_channels=[expect_shape(s, f"encoder.down.{level}.block.0.conv2.weight", 4)[0] for level in levels],
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
        layers_per_block=len(_indices(s, r"encoder\.down\.0\.block\.(\d+)\.")),
        latent_channels=expect_shape(s, "decoder.conv_in.weight", 4)[1],
    )
    return config


def infer_text_encoder_config(text_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """CLIP ViT-L/14's text config with the sizes read from shapes (keys without ``...text_model.``)."""
    s = text_shapes
    vocab_size, hidden = expect_shape(s, "embeddings.token_embedding.weight", 2)  # embeddings: [rows, width]
    config = shipped_config("text_encoder")
    config.update(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_attention_heads=max(1, hidden // 64),
        num_hidden_layers=len(_indices(s, r"encoder\.layers\.(\d+)\.")),
        intermediate_size=expect_shape(s, "encoder.layers.0.mlp.fc1.weight", 2)[0],
        max_position_embeddings=expect_shape(s, "embeddings.position_embedding.weight", 2)[0],
    )
    return config


# --- single files: building the models -------------------------------------------------------------


def unet_from_ldm(
    state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32, source: str = "checkpoint"
):
    """A diffusers UNet2DConditionModel from LDM-layout keys, with or without the ``model.diffusion_model.`` prefix.

    Without it is how ComfyUI hands out a model's UNet weights (``model_state_dict("diffusion_model.")``).
    """
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    if not any(key.startswith(LDM_UNET_PREFIX) for key in state_dict):
        state_dict = {LDM_UNET_PREFIX + key: value for key, value in state_dict.items()}
    try:
        config = infer_unet_config(_shapes(_strip(state_dict, LDM_UNET_PREFIX)))
        UNET.check(config, "the config its shapes give")
        converted = convert_ldm_unet_checkpoint(state_dict, config)
    except ModelFileError as error:  # a tensor of the wrong shape, or sizes no UNet has
        raise ModelFileError(f"{source}: {error}") from None
    except (KeyError, ValueError, StopIteration, IndexError) as error:
        raise ModelFileError(
            f"{source} has a UNet layout LivePhoto cannot map ({type(error).__name__}: {error}); "
            "it is not an SD-1.5 UNet"
        ) from None
    return build_model(lambda: UNet2DConditionModel.from_config(config), converted, dtype, f"the UNet of {source}")


def vae_from_ldm(
    state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32, source: str = "checkpoint"
):
    """A diffusers AutoencoderKL from LDM-layout VAE keys (``first_stage_model.*`` or ``vae.*``)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    prefix = next((p for p in LDM_VAE_PREFIXES if f"{p}encoder.conv_in.weight" in state_dict), "")
    try:
        config = infer_vae_config(_shapes(_strip(state_dict, prefix)))
        VAE.check(config, "the config its shapes give")
        converted = convert_ldm_vae_checkpoint(state_dict, config)
    except ModelFileError as error:  # a tensor of the wrong shape, or sizes no VAE has
        raise ModelFileError(f"{source}: {error}") from None
    except (KeyError, ValueError, IndexError) as error:
        raise ModelFileError(
            f"{source} has a VAE layout LivePhoto cannot map ({type(error).__name__}: {error})"
        ) from None
    return build_model(lambda: AutoencoderKL.from_config(config), converted, dtype, f"the VAE of {source}")


def text_encoder_from_ldm(
    state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32, source: str = "checkpoint"
):
    """A transformers CLIPTextModel from ``cond_stage_model.transformer.text_model.*`` keys."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    try:
        config = infer_text_encoder_config(_shapes(_strip(state_dict, LDM_CLIP_PREFIX)))
        TEXT_ENCODER.check(config, "the config its shapes give")
        config = CLIPTextConfig.from_dict(config)
    except ModelFileError as error:  # a tensor of the wrong shape, or sizes no CLIP text encoder has
        raise ModelFileError(f"{source}: {error}") from None
    except (KeyError, ValueError) as error:
        raise ModelFileError(
            f"{source} has a text encoder LivePhoto cannot map ({type(error).__name__}: {error})"
        ) from None
    # transformers >= 5.6 (we require 5.18) dropped CLIPTextModel's text_model wrapper. position_ids is a
    # fixed buffer (0..76) that old checkpoints saved and the model rebuilds. Files saved by ComfyUI also
    # carry CLIP's text_projection (and logit_scale), which SD-1.5 never reads: it uses the hidden states.
    converted = {
        key.removeprefix("text_model."): value for key, value in convert_ldm_clip_checkpoint(state_dict).items()
    }
    for unused in ("embeddings.position_ids", "text_projection.weight", "logit_scale"):
        converted.pop(unused, None)
    return build_model(lambda: CLIPTextModel(config), converted, dtype, f"the text encoder of {source}")
