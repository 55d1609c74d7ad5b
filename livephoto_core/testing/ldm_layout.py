"""Test helper: write diffusers models as original LDM (CompVis / A1111 / ComfyUI) single files.

The mapping is written from the LDM naming scheme, not from diffusers' converter, so a round trip
(diffusers -> this -> the loader under test -> diffusers) checks the loader against an independent
description of the layout.

LDM UNet: ``input_blocks.0.0`` is conv_in; then per level ``layers`` blocks of [ResBlock, SpatialTransformer?]
and, except on the last level, a block holding a Downsample (``.0.op``). ``middle_block`` is
[ResBlock, SpatialTransformer, ResBlock]. ``output_blocks`` hold per level ``layers + 1`` blocks of
[ResBlock, SpatialTransformer?, Upsample?] (the Upsample in the level's last block). ResBlocks name
their parts in_layers (0 norm, 2 conv), emb_layers.1, out_layers (0 norm, 3 conv), skip_connection.
LDM VAE: ``encoder.down.N.block.M`` / ``.downsample``, ``decoder.up.N`` numbered from the lowest
resolution up (the reverse of diffusers), ``mid.block_1/attn_1/block_2`` with q/k/v/proj_out as 1x1
convs, ``nin_shortcut`` and ``norm_out``.
"""

import math

import torch
from safetensors.torch import save_file
from livephoto_core.testing.tiny import TinySD15, tiny_sd15_models

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_resnet(rest: str) -> str:
    part, _, tail = rest.partition(".")
    return f"{_RESNET[part]}.{tail}"


def unet_to_ldm(state_dict: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> LDM keys (without the ``model.diffusion_model.`` prefix)."""
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    has_up_attention = {int(k.split(".")[1]) for k in state_dict if k.startswith("up_blocks.") and ".attentions." in k}
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        head, _, param = key.rpartition(".")
        if head in fixed:
            out[f"{fixed[head]}.{param}"] = value
        elif parts[0] == "down_blocks":
            level, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":  # down_blocks.L.downsamplers.0.conv.weight
                out[f"input_blocks.{(level + 1) * (layers_per_block + 1)}.0.op.{parts[5]}"] = value
            else:
                block = 1 + level * (layers_per_block + 1) + int(parts[3])
                rest = ".".join(parts[4:])
                out[
                    f"input_blocks.{block}.0.{_rename_resnet(rest)}"
                    if kind == "resnets"
                    else f"input_blocks.{block}.1.{rest}"
                ] = value
        elif parts[0] == "mid_block":
            rest = ".".join(parts[3:])
            if parts[1] == "resnets":
                out[f"middle_block.{2 * int(parts[2])}.{_rename_resnet(rest)}"] = value
            else:
                out[f"middle_block.1.{rest}"] = value
        elif parts[0] == "up_blocks":
            level, kind = int(parts[1]), parts[2]
            if kind == "upsamplers":  # the Upsample sits after the SpatialTransformer when there is one
                block = level * (layers_per_block + 1) + layers_per_block
                slot = 2 if level in has_up_attention else 1
                out[f"output_blocks.{block}.{slot}.conv.{parts[5]}"] = value
            else:
                block = level * (layers_per_block + 1) + int(parts[3])
                rest = ".".join(parts[4:])
                out[
                    f"output_blocks.{block}.0.{_rename_resnet(rest)}"
                    if kind == "resnets"
                    else f"output_blocks.{block}.1.{rest}"
                ] = value
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
    return out


def vae_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> LDM keys (without the ``first_stage_model.`` prefix)."""
    num_up = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("decoder.up_blocks."))
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        coder = parts[0]
        if coder in ("quant_conv", "post_quant_conv") or parts[1] in ("conv_in", "conv_out"):
            out[key] = value
        elif parts[1] == "conv_norm_out":
            out[f"{coder}.norm_out.{parts[2]}"] = value
        elif parts[1] in ("down_blocks", "up_blocks"):
            level = int(parts[2]) if coder == "encoder" else num_up - 1 - int(parts[2])
            stage = "down" if coder == "encoder" else "up"
            if parts[3] == "resnets":
                name = parts[5].replace("conv_shortcut", "nin_shortcut")
                out[f"{coder}.{stage}.{level}.block.{parts[4]}.{name}.{parts[6]}"] = value
            else:  # downsamplers.0.conv / upsamplers.0.conv
                out[f"{coder}.{stage}.{level}.{'downsample' if stage == 'down' else 'upsample'}.conv.{parts[6]}"] = (
                    value
                )
        elif parts[2] == "resnets":  # mid_block.resnets.N
            name = parts[4].replace("conv_shortcut", "nin_shortcut")
            out[f"{coder}.mid.block_{int(parts[3]) + 1}.{name}.{parts[5]}"] = value
        elif parts[2] == "attentions":  # mid_block.attentions.0.<proj>.<weight|bias>; LDM uses 1x1 convs
            proj = ".".join(parts[4:-1])
            tensor = value[:, :, None, None] if parts[-1] == "weight" and value.ndim == 2 else value
            out[f"{coder}.mid.attn_1.{_VAE_ATTENTION[proj]}.{parts[-1]}"] = tensor
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
    return out


def text_encoder_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel keys -> ``cond_stage_model.transformer.text_model.*`` keys."""
    return {
        "cond_stage_model.transformer.text_model." + key.removeprefix("text_model."): value
        for key, value in state_dict.items()
    }


def sd15_to_ldm(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """One LDM single-file state dict from the three diffusers/transformers models."""
    state = {
        f"model.diffusion_model.{k}": v
        for k, v in unet_to_ldm(unet.state_dict(), unet.config.layers_per_block).items()
    }
    state.update({f"first_stage_model.{k}": v for k, v in vae_to_ldm(vae.state_dict()).items()})
    state.update(text_encoder_to_ldm(text_encoder.state_dict()))
    return state


def write_tiny_sd15_file(
    path, seed: int = 0, extra: dict[str, torch.Tensor] | None = None, **unet_overrides
) -> TinySD15:
    """Write a tiny SD-1.5-structured LDM .safetensors and return the diffusers models it came from."""
    models = tiny_sd15_models(seed, **unet_overrides)
    state = sd15_to_ldm(models.unet, models.vae, models.text_encoder)
    state.update(extra or {})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return models


# --- AnimateDiff motion modules in their original layout -------------------------------------------


def animatediff_positional_encoding(length: int, width: int) -> torch.Tensor:
    """The sinusoidal table AnimateDiff's PositionalEncoding stores as ``pos_encoder.pe``: [1, length, width]."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(1, length, width)
    table[0, :, 0::2] = torch.sin(position * frequency)
    table[0, :, 1::2] = torch.cos(position * frequency)
    return table


_MOTION_NAMES = {
    ".norm1.": ".norms.0.",
    ".norm2.": ".norms.1.",
    ".norm3.": ".ff_norm.",
    ".attn1.": ".attention_blocks.0.",
    ".attn2.": ".attention_blocks.1.",
}


def motion_adapter_to_original(state_dict: dict[str, torch.Tensor], max_seq_length: int) -> dict[str, torch.Tensor]:
    """diffusers MotionAdapter keys -> guoyww/AnimateDiff keys, with the ``pos_encoder.pe`` tables it stores.

    Original: ``<block>.motion_modules.<i>.temporal_transformer.{norm,proj_in,proj_out,transformer_blocks.<j>.
    {attention_blocks.<0|1>.{to_q,to_k,to_v,to_out.0,pos_encoder.pe},norms.<0|1>,ff.net.*,ff_norm}}``.
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith("pos_embed.pe"):
            continue
        block, _, rest = key.partition(".motion_modules.")
        index, _, inner = rest.partition(".")
        inner = "." + inner
        for new, old in _MOTION_NAMES.items():
            inner = inner.replace(new, old)
        prefix = f"{block}.motion_modules.{index}.temporal_transformer"
        out[prefix + inner] = value
        if inner.endswith((".attention_blocks.0.to_q.weight", ".attention_blocks.1.to_q.weight")):
            pe_key = prefix + inner.replace("to_q.weight", "pos_encoder.pe")
            out[pe_key] = animatediff_positional_encoding(max_seq_length, value.shape[0])
    return out


# --- a small CLIP BPE vocabulary ---------------------------------------------------------------------


def synthetic_clip_bpe(words: list[str], header: str = '"bpe_simple_vocab_16e6.txt#version: 0.2') -> str:
    """Text in the format of CLIP's bpe_simple_vocab_16e6.txt: a header line, then one merge per line,
    here the left-to-right merges that spell each (ASCII) word as one ``word</w>`` token."""
    merges = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for symbol in symbols[1:]:
            if (current, symbol) not in merges:
                merges.append((current, symbol))
            current += symbol
    return "\n".join([header] + [f"{a} {b}" for a, b in merges]) + "\n"
