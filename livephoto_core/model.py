"""LivePhotoModel: the LivePhoto UNet, content encoder and text reweighter around a frozen SD-1.5.

Holds the parts LivePhoto adds (and the frozen modules they need at every step); the VAE, CLIP
text encoder and tokenizer stay with the pipeline, since the ComfyUI nodes bring their own.
"""

from __future__ import annotations

import torch
from diffusers import MotionAdapter, UNet2DConditionModel
from torch import nn

from .config import LivePhotoConfig
from .defaults import CLIP_CONTEXT
from .errors import ModelFileError
from .modules.content import ContentEncoder
from .modules.reweight import TextReweighter
from .modules.unet import LivePhotoUNet, build_motion_adapter, conditioning_channels


class LivePhotoModel(nn.Module):
    def __init__(
        self,
        config: LivePhotoConfig,
        unet: LivePhotoUNet,
        content_encoder: ContentEncoder,
        text_reweighter: TextReweighter,
    ):
        super().__init__()
        self.config = config
        self.unet = unet
        self.content_encoder = content_encoder
        self.text_reweighter = text_reweighter

    @classmethod
    def from_base(
        cls,
        config: LivePhotoConfig,
        unet2d: UNet2DConditionModel,
        dinov2: nn.Module,
        motion_adapter: MotionAdapter | None = None,
    ) -> "LivePhotoModel":
        """Wrap a base UNet and DINOv2 with freshly initialised LivePhoto parts (identity at start)."""
        if tuple(unet2d.config.block_out_channels) != config.unet_block_out_channels:
            raise ModelFileError(
                f"the base UNet has channels {tuple(unet2d.config.block_out_channels)} but the LivePhoto parts "
                f"were made for {config.unet_block_out_channels}; use the base model they were trained on"
            )
        if unet2d.config.cross_attention_dim != config.cross_attention_dim:
            raise ModelFileError(
                f"the base UNet's cross-attention width is {unet2d.config.cross_attention_dim}, the LivePhoto parts "
                f"expect {config.cross_attention_dim}; use the base model they were trained on"
            )
        if dinov2.config.hidden_size != config.dinov2_hidden_size:
            raise ModelFileError(
                f"the DINOv2 given has width {dinov2.config.hidden_size}; this LivePhoto model was trained with "
                f"{config.dinov2_variant} (width {config.dinov2_hidden_size}): pass that one"
            )
        adapter = motion_adapter if motion_adapter is not None else build_motion_adapter(config, unet2d)
        if adapter.config.motion_max_seq_length != config.motion_max_seq_length:
            raise ModelFileError(
                f"the motion module handles {adapter.config.motion_max_seq_length} frames, the LivePhoto config "
                f"expects {config.motion_max_seq_length}: pass the motion module it was trained with"
            )
        dtype, device = unet2d.dtype, unet2d.device
        unet = LivePhotoUNet.from_unet2d(
            unet2d, adapter, config.num_content_tokens, config.text_time_embedding, config.text_film
        )
        content_encoder = ContentEncoder(dinov2, config.cross_attention_dim, config.dinov2_image_size)
        reweighter = TextReweighter(
            config.cross_attention_dim,
            num_layers=config.reweighter_layers,
            num_heads=config.reweighter_heads,
            ff_mult=config.reweighter_ff_mult,
            init_bias=config.reweighter_init_bias,
        )
        model = cls(config, unet, content_encoder, reweighter).to(device=device, dtype=dtype)
        model.freeze_base()
        return model

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def freeze_base(self) -> None:
        self.unet.freeze_base()
        self.content_encoder.dinov2.requires_grad_(False)
        self.content_encoder.proj.requires_grad_(True)
        self.text_reweighter.requires_grad_(True)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly what a LivePhoto checkpoint stores (motion modules left out when they are external)."""
        state = {f"unet.{k}": v for k, v in self.unet.trainable_state_dict().items()}
        if self.config.motion_weights == "external":
            state = {k: v for k, v in state.items() if ".motion_modules." not in k}
        state.update({f"content_encoder.proj.{k}": v for k, v in self.content_encoder.proj.state_dict().items()})
        state.update({f"text_reweighter.{k}": v for k, v in self.text_reweighter.state_dict().items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ModelFileError(
                f"{source} does not fit this model: {len(missing)} missing tensors (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); was it trained on another base?"
            )
        wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
        if wrong:
            k = wrong[0]
            raise ModelFileError(
                f"{source} does not fit this model: {k} has shape {tuple(state[k].shape)}, "
                f"expected {tuple(expected[k].shape)}; was it trained on another base?"
            )
        with torch.no_grad():
            for name, target in expected.items():
                target.copy_(state[name])

    def reweight_text(self, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 77*k, D] CLIP embeddings -> (reweighted, weights [B, 77*k]); each 77-token chunk on its own."""
        batch, length, dim = text_embeddings.shape
        if length % CLIP_CONTEXT:  # ComfyUI encodes a longer prompt as several chunks of 77
            raise ValueError(f"text embeddings have {length} tokens; expected a multiple of {CLIP_CONTEXT}")
        if not self.config.text_reweighting:  # the ablation: CLIP as it is, every weight 1
            return text_embeddings.to(self.dtype), text_embeddings.new_ones(batch, length)
        chunks = text_embeddings.reshape(batch * length // CLIP_CONTEXT, CLIP_CONTEXT, dim)
        reweighted, weights = self.text_reweighter(chunks.to(self.dtype))
        return reweighted.reshape(batch, length, dim), weights.reshape(batch, length)

    def conditioning_channels(
        self, reference_latent: torch.Tensor, num_frames: int, intensity: torch.Tensor,
        positions: torch.Tensor | None = None,
    ):
        """[reference latent, frame embedding, intensity map] for the UNet; see modules.unet."""
        levels = intensity if self.config.intensity_map else torch.zeros_like(intensity)  # the ablation
        return conditioning_channels(reference_latent, num_frames, levels, positions)

    def encode_content(self, pixels: torch.Tensor) -> torch.Tensor:
        """Photo pixels [B, 3, H, W] in 0..1 -> content tokens [B, N, D]."""
        return self.content_encoder(pixels.to(self.device))
