"""The LivePhoto UNet: SD-1.5 UNet + AnimateDiff motion modules, 10 input channels, content attention.

Per frame the UNet reads [noisy latent (4), reference latent (4), frame embedding (1), intensity
map (1)] (paper §3.2-3.4, Fig. 2). conv_in keeps SD's weights on the first 4 channels and starts
at zero on the 6 new ones; the content attention starts with a zero output; so with the new layers
at their initial values the model is exactly SD + motion modules.
"""

from __future__ import annotations

import contextvars
import functools

import torch
from accelerate import init_empty_weights
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from ..config import CONDITIONING_CHANNELS, LivePhotoConfig
from ..defaults import DEFAULT_CONTENT_SCALE
from .content import ContentAttnProcessor, ContentKeyValues, SpatialSelfAttnProcessor


def build_motion_adapter(config: LivePhotoConfig, unet2d: UNet2DConditionModel) -> MotionAdapter:
    """Fresh (AnimateDiff-initialised: zero proj_out) motion modules shaped for this base UNet.

    Built on the CPU in float32 (or on the meta device under `init_empty_weights`); assembling the
    motion UNet moves them to the base's device and dtype.
    """
    return MotionAdapter(
        block_out_channels=tuple(unet2d.config.block_out_channels),
        motion_layers_per_block=unet2d.config.layers_per_block,
        motion_num_attention_heads=config.motion_num_attention_heads,
        motion_norm_num_groups=config.motion_norm_num_groups,
        motion_max_seq_length=config.motion_max_seq_length,
        use_motion_mid_block=config.motion_use_mid_block,
    )


def match_device_and_dtype(module, like):
    # torch's own .to: diffusers' ModelMixin.to logs a warning on every dtype cast, needed or not.
    if module.device != like.device or module.dtype != like.dtype:
        module = torch.nn.Module.to(module, device=like.device, dtype=like.dtype)
    return module


def assemble_motion_unet(unet2d: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """UNetMotionModel.from_unet2d without random initialisation or copies.

    The motion UNet's parameter names are the union of the 2-D UNet's and the adapter's, so the
    model is built on the meta device and takes over their tensors (both inputs share storage with
    the result afterwards).
    """
    adapter = match_device_and_dtype(adapter, unet2d)
    with init_empty_weights():
        unet = UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False)
    state = {**unet2d.state_dict(), **adapter.state_dict()}
    unet.load_state_dict(state, strict=True, assign=True)
    return unet


def widen_conv_in(unet: UNetMotionModel, extra_channels: int = CONDITIONING_CHANNELS) -> None:
    """Give conv_in `extra_channels` more inputs; SD's weights stay on the first ones, the new ones are 0."""
    old = unet.conv_in
    new = nn.Conv2d(
        old.in_channels + extra_channels, old.out_channels, old.kernel_size, padding=old.padding,
        device=old.weight.device, dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)


def install_content_attention(unet: UNetMotionModel, num_content_tokens: int) -> None:
    """Put a ContentAttnProcessor on every SD cross-attention (attn2), and on SD's self-attentions
    (attn1) one that accepts the content scale; motion modules keep theirs (they never see it)."""
    processors = {}
    for name, processor in unet.attn_processors.items():
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if attn.is_cross_attention:
            processors[name] = ContentAttnProcessor(attn, num_content_tokens)
        elif ".motion_modules." not in name:
            processors[name] = SpatialSelfAttnProcessor()
        else:
            processors[name] = processor
    unet.set_attn_processor(processors)


def install_text_time_embedding(unet: UNetMotionModel, text_dim: int) -> None:
    """Give the timestep embedding a projection of the text (diffusers' `timestep_cond`, the input LCM
    conditions on its guidance scale), zero-initialised so that an untrained model is unchanged.

    A departure from the paper (LivePhotoConfig.text_time_embedding). In a small model trained from
    scratch, motion words reached through cross-attention alone were never used: after 600 steps the
    loss did not change when a caption's direction was swapped, although the text encoder told the
    directions apart. Added to the timestep embedding, the words shift every ResNet of the UNet.
    """
    embedding = unet.time_embedding
    weight = embedding.linear_1.weight
    embedding.cond_proj = nn.Linear(text_dim, embedding.linear_1.in_features, bias=False,
                                    device=weight.device, dtype=weight.dtype)
    nn.init.zeros_(embedding.cond_proj.weight)
    unet.register_to_config(time_cond_proj_dim=text_dim)


# The text vector [B, D] and frame positions [B, F] of the current forward call, for the FiLM hooks (a
# context variable: each thread's call sees its own, as content_scale travels per call).
_FILM_TEXT: contextvars.ContextVar[tuple[torch.Tensor, torch.Tensor] | None] = contextvars.ContextVar(
    "livephoto_film_text", default=None
)


def install_text_film(unet: UNetMotionModel, text_dim: int) -> None:
    """Give every ResNet of the UNet a FiLM from the text that also moves with time: features of frame
    f after its second GroupNorm become h * (1 + a + p_f * c) + (b + p_f * d), with p_f the frame's
    value in the frame-embedding channel (f / (F - 1) in one clip; what the context windows give it in
    a longer video) and (a, b, c, d) a zero-initialised Linear of the pooled text, so an untrained model
    is unchanged.

    A departure from the paper (LivePhotoConfig.text_film). The timestep embedding's shift is added
    before that GroupNorm, which removes its mean over each group of channels; a FiLM after the norm
    reaches the features unnormalised, as FiLM-conditioned networks (Perez et al., 2018) apply it. The
    terms in p_f hand each frame its share of a motion (how far along "moves left" it is) directly,
    instead of leaving the network to multiply the word by the frame channel of conv_in itself.
    """
    for module in unet.modules():
        if isinstance(module, ResnetBlock2D):
            weight = module.conv1.weight
            film = nn.Linear(text_dim, 4 * module.norm2.num_channels, device=weight.device, dtype=weight.dtype)
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
            module.text_film = film
            module.norm2.register_forward_hook(functools.partial(_apply_text_film, film))


def _apply_text_film(film: nn.Linear, _norm: nn.Module, _inputs, features: torch.Tensor) -> torch.Tensor:
    current = _FILM_TEXT.get()
    if current is None:
        return features
    text, positions = current
    still_scale, still_shift, frame_scale, frame_shift = film(text.to(features.dtype)).chunk(4, dim=1)
    position = positions.to(features)[:, :, None]  # [B, F, 1]
    # one row per frame, frame-major within each video (row b * F + f), as the ResNets see them
    scale = (still_scale[:, None] + position * frame_scale[:, None]).flatten(0, 1)
    shift = (still_shift[:, None] + position * frame_shift[:, None]).flatten(0, 1)
    return features * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


def pooled_text(context: torch.Tensor, num_content_tokens: int, videos: int) -> torch.Tensor:
    """The mean of each video's text tokens: context [B or B*F, text + content tokens, D] -> [B, D]."""
    text = context[:, :-num_content_tokens]
    return text[:: text.shape[0] // videos].mean(dim=1)  # frame-major rows: every F-th is a new video


FRAME_EMBEDDING_CHANNEL = 4  # in the 6 conditioning channels: after the reference latent's 4


def frame_embedding(num_frames: int) -> torch.Tensor:
    """n / (F - 1) for frame n: 0 for the first frame (trust the reference), 1 for the last (§3.3)."""
    if num_frames == 1:
        return torch.zeros(1)
    return torch.arange(num_frames, dtype=torch.float32) / (num_frames - 1)


def conditioning_channels(
    reference_latent: torch.Tensor, num_frames: int, intensity: torch.Tensor, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """The 6 channels after the noisy latent: [reference latent, frame embedding, intensity map].

    reference_latent [B, 4, h, w] (scaled), intensity raw levels 1..10, [B] (one per video) or [B, F]
    (one per frame), positions the frame embedding's values [F] (default ``frame_embedding``)
    -> [B, F, 6, h, w].
    """
    batch, _, height, width = reference_latent.shape
    reference = reference_latent.unsqueeze(1).expand(batch, num_frames, -1, height, width)
    positions = frame_embedding(num_frames) if positions is None else positions
    frames = positions.to(reference_latent).view(1, num_frames, 1, 1, 1)
    frames = frames.expand(batch, num_frames, 1, height, width)
    levels = intensity.to(reference_latent).view(batch, -1, 1, 1, 1).expand(batch, num_frames, 1, height, width)
    return torch.cat([reference, frames, levels], dim=2)


def is_trainable_key(name: str) -> bool:
    """The parameters LivePhoto trains inside the UNet: conv_in, motion modules, content attention (and
    the text's timestep projection or FiLM layers, when the model has them)."""
    return (name.startswith(("conv_in.", "time_embedding.cond_proj.")) or ".motion_modules." in name
            or ".processor." in name or ".text_film." in name)


class LivePhotoUNet(nn.Module):
    """Denoiser over [B, F, 4, h, w] latents with the 6 conditioning channels and text+content context."""

    def __init__(self, unet: UNetMotionModel, num_content_tokens: int):
        super().__init__()
        self.motion_unet = unet
        self.num_content_tokens = num_content_tokens
        # Read once: forward asks every call, and walking the modules costs milliseconds at full size.
        self.text_film = any(isinstance(m, ResnetBlock2D) and hasattr(m, "text_film") for m in unet.modules())

    @classmethod
    def from_unet2d(
        cls, unet2d: UNet2DConditionModel, adapter: MotionAdapter, num_content_tokens: int,
        text_time_embedding: bool = False,
        text_film: bool = False,
    ) -> "LivePhotoUNet":
        unet = assemble_motion_unet(unet2d, adapter)
        widen_conv_in(unet)
        install_content_attention(unet, num_content_tokens)
        if text_time_embedding:
            install_text_time_embedding(unet, unet.config.cross_attention_dim)
        if text_film:
            install_text_film(unet, unet.config.cross_attention_dim)
        return cls(unet, num_content_tokens)

    @property
    def text_time_embedding(self) -> bool:
        return self.motion_unet.time_embedding.cond_proj is not None

    # Read off one weight: diffusers' ModelMixin.dtype/.device walk every submodule on each call, which
    # the sampling loop and the pipeline ask for often (milliseconds per call at full size).
    @property
    def dtype(self) -> torch.dtype:
        return self.motion_unet.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.motion_unet.conv_in.weight.device

    @property
    def max_frames(self) -> int:
        return self.motion_unet.config.motion_max_seq_length

    def content_processors(self) -> list[ContentAttnProcessor]:
        return [p for p in self.motion_unet.attn_processors.values() if isinstance(p, ContentAttnProcessor)]

    def set_feed_forward_chunking(self, enabled: bool) -> None:
        """Run each transformer block's feed-forward a slice at a time (a frame in the spatial blocks, a
        frame position in the motion modules): its 8x-wide GEGLU activation is the UNet's largest."""
        for name, module in self.motion_unet.named_modules():
            if isinstance(module, BasicTransformerBlock):
                module.set_chunk_feed_forward(1 if enabled else None, 1 if ".motion_modules." in name else 0)

    def freeze_base(self) -> None:
        """SD stays frozen (paper §4.1); conv_in, motion modules and content attention train."""
        for name, param in self.motion_unet.named_parameters():
            param.requires_grad_(is_trainable_key(name))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.motion_unet.state_dict().items() if is_trainable_key(k)}

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        conditioning: torch.Tensor,
        content_scale: float = DEFAULT_CONTENT_SCALE,
        content_kv: ContentKeyValues | None = None,
    ) -> torch.Tensor:
        """noisy_latents [B, F, 4, h, w], timestep [] or [B], context [B, text+content tokens, D] (one row
        per video, shared by its frames: the cheaper form) or [B*F, ...] (one per frame, frame-major: row
        b*F + f), conditioning [B, F, 6, h, w] -> prediction [B, F, 4, h, w].

        `content_scale` weighs the content attention in this call only (0 turns the photo tokens off).
        `content_kv`, where every context row carries the same content tokens: the loop's store of their
        keys and values, filled by its first call and read by the rest (``ContentKeyValues``)."""
        sample = torch.cat([noisy_latents, conditioning.to(noisy_latents.dtype)], dim=2)
        text_vector = pooled_text(context, self.num_content_tokens, noisy_latents.shape[0])
        positions = conditioning[:, :, FRAME_EMBEDDING_CHANNEL, 0, 0]  # [B, F]: the same in every pixel
        film = _FILM_TEXT.set((text_vector, positions) if self.text_film else None)
        try:
            out = self.motion_unet(
                sample.transpose(1, 2), timestep, encoder_hidden_states=context,
                timestep_cond=text_vector if self.text_time_embedding else None,
                cross_attention_kwargs={"content_scale": content_scale, "content_kv": content_kv}, return_dict=False,
            )[0]
        finally:
            _FILM_TEXT.reset(film)
        return out.transpose(1, 2)
