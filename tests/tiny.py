"""Tiny random-weight components with SD-1.5's structure, built from configs (no downloads)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, Dinov2Config, Dinov2Model

from livephoto_core.config import LivePhotoConfig
from livephoto_core.model import LivePhotoModel
from livephoto_core.training.vocab import write_word_tokenizer

WIDTH = 32  # cross-attention / text width
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


def tiny_config(**overrides) -> LivePhotoConfig:
    values = dict(
        num_frames=8,
        height=64,
        width=64,
        cross_attention_dim=WIDTH,
        dinov2_hidden_size=32,
        dinov2_image_size=56,
        dinov2_variant="tiny-random",
        reweighter_heads=4,
        motion_num_attention_heads=4,
        motion_norm_num_groups=8,
        motion_max_seq_length=16,
        unet_block_out_channels=(32, 64),
    )
    values.update(overrides)
    return LivePhotoConfig(**values)


def tiny_unet2d(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=WIDTH,
        attention_head_dim=4,
        norm_num_groups=8,
    ).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.18215,
    ).eval()


def tiny_tokenizer(folder) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(write_word_tokenizer(folder, WORDS))


def tiny_text_encoder(tokenizer: CLIPTokenizer, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def tiny_dinov2(seed: int = 0) -> Dinov2Model:
    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=56, patch_size=14
    )
    return Dinov2Model(config).eval()


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Overwrite every parameter with small noise: zero-initialised layers must not hide bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)
    return module


def tiny_model(config: LivePhotoConfig | None = None, seed: int = 0) -> LivePhotoModel:
    return LivePhotoModel.from_base(config or tiny_config(), tiny_unet2d(seed), tiny_dinov2(seed)).eval()


def tiny_pipeline(folder, config: LivePhotoConfig | None = None, seed: int = 0, trained: bool = True):
    """A complete tiny pipeline. `trained` randomizes the LivePhoto parts so that they do something."""
    from livephoto_core.pipeline import LivePhotoPipeline

    model = tiny_model(config, seed)
    if trained:
        randomize_(model.unet.unet.conv_in, seed + 1)
        for processor in model.unet.content_processors():
            randomize_(processor.to_out, seed + 2)
        randomize_(model.text_reweighter.head, seed + 3, std=0.5)
    tokenizer = tiny_tokenizer(folder)
    return LivePhotoPipeline(
        model, tiny_vae(seed), tiny_text_encoder(tokenizer, seed), tokenizer, SD_SCHEDULER, {"model": "tiny-random"}
    )
