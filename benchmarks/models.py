"""Random-weight models for the benchmarks, full SD-1.5 size or tiny, identical in every process.

Each component is built on the meta device and its parameters are then drawn from a generator
seeded per component, so two processes (ours, diffusers') get bit-identical weights without a
multi-GB file between them and without diffusers' slow default initialisation. Buffers (CLIP's
position ids, the motion modules' sinusoidal tables) are computed by the models themselves.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from torch import nn

from livephoto_core.config import LivePhotoConfig
from livephoto_core.loading.sd15 import shipped_config
from livephoto_core.modules.unet import build_motion_adapter
from livephoto_core.training.word_tokenizer import write_word_tokenizer

# Tiny: the structure of SD-1.5 at a few MB, the same models as the tests'.
from livephoto_core.testing.tiny import TINY_DINOV2, TINY_TEXT, TINY_UNET, TINY_VAE

WORDS = "a the red blue circle square moves left right up down camera zooms in out shaking head".split()
PROMPT = "the red circle moves left"
NEGATIVE_PROMPT = ""

SIZES = ("tiny", "full")

# DINOv2 ViT-L/14, the default content encoder of an SD-1.5 LivePhoto (300M parameters).
DINOV2_LARGE = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, image_size=518, patch_size=14
)


@dataclass
class Components:
    """What both pipelines are built from; `dinov2` and `config` only ours uses."""

    unet: nn.Module  # diffusers UNet2DConditionModel
    adapter: nn.Module  # diffusers MotionAdapter
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    dinov2: nn.Module | None
    config: LivePhotoConfig
    scheduler_config: dict


def livephoto_config(size: str) -> LivePhotoConfig:
    if size == "full":
        return LivePhotoConfig()  # SD-1.5, DINOv2-L at 224 px (257 content tokens), 32-frame motion modules
    return LivePhotoConfig(
        num_frames=8, height=64, width=64, cross_attention_dim=64, dinov2_hidden_size=32, dinov2_image_size=56,
        dinov2_variant="tiny-random", motion_max_seq_length=16, unet_block_out_channels=(32, 64),
    )


def random_(module: nn.Module, name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Materialise `module`'s parameters (on the meta device or not) in `dtype` with values seeded by `name`.

    Matrices ~ N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2), other vectors N(0, 0.1^2): activations
    stay in range through the whole UNet, as they do with trained weights.
    """
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    for full_name, param in list(module.named_parameters()):
        owner_name, _, leaf = full_name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        values = torch.randn(param.shape, generator=generator)
        if param.ndim >= 2:
            values /= math.sqrt(param[0].numel())
        elif "norm" in full_name and leaf == "weight":
            values = 1 + 0.1 * values
        else:
            values *= 0.1
        setattr(owner, leaf, nn.Parameter(values.to(dtype), requires_grad=False))
    return module.eval()


def build(make, name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """`make()`'s module with random weights drawn straight into `dtype` (never a float32 copy of it all)."""
    with init_empty_weights():  # parameters on meta, buffers real
        module = make()
    return random_(module, name, dtype)


def build_components(
    size: str, tokenizer_dir: str | Path, with_dinov2: bool = True, dtype: torch.dtype = torch.float32
) -> Components:
    """The random-weight SD-1.5 (+ motion modules, + DINOv2 when asked) of `size` ("tiny" or "full").

    The values are those of float32, rounded to `dtype`: every dtype sees the same model."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, Dinov2Config, Dinov2Model

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}")
    config = livephoto_config(size)
    full = size == "full"
    unet_config = shipped_config("unet") if full else TINY_UNET
    vae_config = shipped_config("vae") if full else TINY_VAE
    text_config = CLIPTextConfig.from_dict(shipped_config("text_encoder")) if full else CLIPTextConfig(**TINY_TEXT)
    unet = build(lambda: UNet2DConditionModel.from_config(unet_config), f"{size}/unet", dtype)
    adapter = build(lambda: build_motion_adapter(config, unet), f"{size}/motion", dtype)
    vae = build(lambda: AutoencoderKL.from_config(vae_config), f"{size}/vae", dtype)
    text_encoder = build(lambda: CLIPTextModel(text_config), f"{size}/text", dtype)
    dinov2 = None
    if with_dinov2:
        dinov2_config = Dinov2Config(**(DINOV2_LARGE if full else TINY_DINOV2))
        dinov2 = build(lambda: Dinov2Model(dinov2_config), f"{size}/dinov2", dtype)
    tokenizer = CLIPTokenizer.from_pretrained(write_word_tokenizer(tokenizer_dir, WORDS))
    return Components(unet, adapter, vae, text_encoder, tokenizer, dinov2, config, shipped_config("scheduler"))


def livephoto_pipeline(components: Components, dtype: torch.dtype = torch.float32, **options):
    """Our pipeline on these components (the LivePhoto parts given random weights too, so that they act)."""
    from livephoto_core.model import LivePhotoModel
    from livephoto_core.pipeline import LivePhotoPipeline

    model = LivePhotoModel.from_base(components.config, components.unet, components.dinov2, components.adapter)
    random_(model.unet.motion_unet.conv_in, "conv_in")
    for index, processor in enumerate(model.unet.content_processors()):
        random_(processor, f"content_attention/{index}")
    random_(model.content_encoder.proj, "content_proj")
    random_(model.text_reweighter, "reweighter")
    model = model.to(dtype).eval()
    return LivePhotoPipeline(
        model, nn.Module.to(components.vae, dtype), components.text_encoder.to(dtype), components.tokenizer,
        components.scheduler_config, {"model": "random"}, **options,
    )


def diffusers_pipeline(components: Components, dtype: torch.dtype = torch.float32):
    """diffusers' AnimateDiffPipeline on the same UNet, motion modules, VAE, text encoder and tokenizer.

    The motion UNet is assembled sharing the 2-D UNet's and the adapter's tensors (as ours is), rather
    than by UNetMotionModel.from_unet2d's copy, so neither side carries a second copy of the weights.
    """
    from diffusers import AnimateDiffPipeline, DDIMScheduler

    from livephoto_core.modules.unet import assemble_motion_unet

    unet = assemble_motion_unet(components.unet, components.adapter).to(dtype).eval()
    scheduler = DDIMScheduler.from_config({**components.scheduler_config, "clip_sample": False})
    pipe = AnimateDiffPipeline(
        vae=nn.Module.to(components.vae, dtype), text_encoder=components.text_encoder.to(dtype),
        tokenizer=components.tokenizer, unet=unet, motion_adapter=components.adapter, scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
