"""Tiny random-weight components with SD-1.5's structure, built from configs (no downloads).

Their sizes follow what a single-file loader can recover from shapes alone (8 UNet heads, 32 norm
groups, CLIP heads of width 64), so the same models also round-trip through an LDM file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import CLIPTokenizer, Dinov2Config, Dinov2Model

from livephoto_core.config import LivePhotoConfig
from livephoto_core.model import LivePhotoModel
from livephoto_core.training.word_tokenizer import write_word_tokenizer

WORDS = "a the red blue circle square moves left right up down camera zooms in out shaking head".split()

SD_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter a distinct random value (norm scales near 1), so no swapped key goes unseen."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                param.copy_(noise / math.sqrt(param[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
    return module


# The smallest model with SD-1.5's structure: cross-attention on every level but the last, a mid
# block with attention, 8 heads (as SD-1.5; head count is invisible in the weights), 32 norm groups.
TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    sample_size=8,
    norm_num_groups=32,
)
# Four levels, so latents are 1/8 of the pixels as in SD-1.5.
TINY_VAE = dict(
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=64,
)
# hidden 64 -> one head of width 64, the loader's rule (SD-1.5's CLIP-L: 768 -> 12 heads).
TINY_TEXT = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=1,
    intermediate_size=128,
    vocab_size=1000,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


@dataclass
class TinySD15:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module


def tiny_sd15_models(seed: int = 0, **unet_overrides) -> TinySD15:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = randomize_(UNet2DConditionModel(**{**TINY_UNET, **unet_overrides}), seed).eval()
    vae = randomize_(AutoencoderKL(**TINY_VAE), seed + 1).eval()
    text_encoder = randomize_(CLIPTextModel(CLIPTextConfig(**TINY_TEXT)), seed + 2).eval()
    return TinySD15(unet, vae, text_encoder)


def tiny_motion_adapter(seed: int = 0, max_seq_length: int = 32, mid_block: bool = True, **overrides):
    """A random MotionAdapter for the tiny UNet above (widths 32/64, one layer per block)."""
    from diffusers import MotionAdapter

    config = dict(
        block_out_channels=TINY_UNET["block_out_channels"],
        motion_layers_per_block=1,
        motion_num_attention_heads=8,
        motion_norm_num_groups=32,
        motion_max_seq_length=max_seq_length,
        use_motion_mid_block=mid_block,
    )
    return randomize_(MotionAdapter(**{**config, **overrides}), seed).eval()


def tiny_config(**overrides) -> LivePhotoConfig:
    values = dict(
        num_frames=8,
        height=64,
        width=64,
        cross_attention_dim=TINY_UNET["cross_attention_dim"],
        dinov2_hidden_size=32,
        dinov2_image_size=56,
        dinov2_variant="tiny-random",
        motion_max_seq_length=16,
        unet_block_out_channels=TINY_UNET["block_out_channels"],
    )
    values.update(overrides)
    return LivePhotoConfig(**values)


def tiny_unet2d(seed: int = 0):
    return tiny_sd15_models(seed).unet


def tiny_vae(seed: int = 0):
    return tiny_sd15_models(seed).vae


def tiny_tokenizer(folder) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(write_word_tokenizer(folder, WORDS))


def tiny_text_encoder(seed: int = 0):
    return tiny_sd15_models(seed).text_encoder


TINY_DINOV2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=56, patch_size=14)


def tiny_dinov2(seed: int = 0) -> Dinov2Model:
    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config(**TINY_DINOV2)).eval()


def tiny_model(config: LivePhotoConfig | None = None, seed: int = 0) -> LivePhotoModel:
    return LivePhotoModel.from_base(config or tiny_config(), tiny_unet2d(seed), tiny_dinov2(seed)).eval()


def train_livephoto_parts_(model: LivePhotoModel, seed: int = 0) -> LivePhotoModel:
    """Random weights where LivePhoto starts at zero or identity, so that every new part acts."""
    randomize_(model.unet.motion_unet.conv_in, seed + 1)
    for processor in model.unet.content_processors():
        randomize_(processor.to_out, seed + 2)
    randomize_(model.text_reweighter.head, seed + 3)
    return model


def tiny_pipeline(folder, config: LivePhotoConfig | None = None, seed: int = 0, trained: bool = True):
    """A complete tiny pipeline. `trained` randomizes the LivePhoto parts so that they do something."""
    from livephoto_core.pipeline import LivePhotoPipeline

    model = tiny_model(config, seed)
    if trained:
        train_livephoto_parts_(model, seed)
    models = tiny_sd15_models(seed)
    return LivePhotoPipeline(
        model, models.vae, models.text_encoder, tiny_tokenizer(folder), SD_SCHEDULER, {"model": "tiny-random"}
    )


def tiny_wan_folder(folder, text_dim: int = 32, seed: int = 0):
    """Wan2.1-T2V-1.3B-Diffusers' text_encoder/, tokenizer/ and vae/ at toy sizes (umT5 width ``text_dim``, which
    the DiT's text width must equal); returns the folder."""
    from pathlib import Path

    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    tokenizer = tiny_tokenizer(folder / "words")
    tokenizer.save_pretrained(folder / "tokenizer")
    torch.manual_seed(seed)
    UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=text_dim, d_kv=8, d_ff=64, num_layers=1,
                                num_heads=4, relative_attention_num_buckets=8)).save_pretrained(folder / "text_encoder")
    AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True]).save_pretrained(folder / "vae")
    return folder
