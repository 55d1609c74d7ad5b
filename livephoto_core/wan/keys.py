"""Read the authors' ``base.safetensors`` (original Wan key names, no prefix) into ``LivePhotoWan``.

The file's shapes give every size but the head count: Wan2.1's heads are 128 wide in every released size
(1.3B: 12 heads of 128; 14B: 40), so that width is the default. Anything that is not a LivePhoto-Wan DiT
(an SD-1.5 file, a stock Wan2.1 without the LivePhoto modules, a diffusers-layout Wan, an image-to-video
Wan) is refused from the header alone, before gigabytes are read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFileError
from ..loading.detect import detect_kind, with_article
from ..loading.files import build_model, load_state_dict, read_safetensors_header
from ..loading.schema import expect_shape
from .model import INTENSITY_TOKENS, LivePhotoWan, transformer_config

WAN_HEAD_DIM = 128
HUB_FILES = "base.safetensors and lora.safetensors from the hub repository shirley430316/LivePhoto-Wan2.1"
LIVEPHOTO_KEYS = ("motion_intensity_embed.weight", "text_reweight.warmup")

# Original Wan name -> diffusers WanTransformer3DModel name; the block part is handled by _BLOCK_RENAMES.
_TOP_RENAMES = {
    "patch_embedding.": "patch_embedding.",
    "text_embedding.0.": "condition_embedder.text_embedder.linear_1.",
    "text_embedding.2.": "condition_embedder.text_embedder.linear_2.",
    "time_embedding.0.": "condition_embedder.time_embedder.linear_1.",
    "time_embedding.2.": "condition_embedder.time_embedder.linear_2.",
    "time_projection.1.": "condition_embedder.time_proj.",
    "head.head.": "proj_out.",
    "head.modulation": "scale_shift_table",
}
_BLOCK_RENAMES = {
    "self_attn.q.": "attn1.to_q.", "self_attn.k.": "attn1.to_k.", "self_attn.v.": "attn1.to_v.",
    "self_attn.o.": "attn1.to_out.0.", "self_attn.norm_q.": "attn1.norm_q.", "self_attn.norm_k.": "attn1.norm_k.",
    "cross_attn.q.": "attn2.to_q.", "cross_attn.k.": "attn2.to_k.", "cross_attn.v.": "attn2.to_v.",
    "cross_attn.o.": "attn2.to_out.0.", "cross_attn.norm_q.": "attn2.norm_q.", "cross_attn.norm_k.": "attn2.norm_k.",
    "norm3.": "norm2.",  # the original's cross-attention norm; diffusers numbers its norms in another order
    "ffn.0.": "ffn.net.0.proj.", "ffn.2.": "ffn.net.2.",
    "modulation": "scale_shift_table",
}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def diffusers_name(key: str) -> str | None:
    """The diffusers name of an original-layout DiT key, or None for a key the DiT does not have."""
    match = _BLOCK.fullmatch(key)
    if match:
        index, rest = match.groups()
        for old, new in _BLOCK_RENAMES.items():
            if rest.startswith(old):
                return f"blocks.{index}.{new}{rest[len(old):]}"
        return None
    for old, new in _TOP_RENAMES.items():
        if key.startswith(old):
            return new + key[len(old):]
    return None


def model_state_dict(original: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original-key state dict -> ``LivePhotoWan``'s keys (``transformer.*`` plus the LivePhoto modules as named).
    Keys neither part knows are kept under their own name, so that ``build_model`` reports them as unexpected."""
    converted = {}
    for key, value in original.items():
        if key.startswith(("motion_intensity_embed.", "text_reweight.")):
            converted[key] = value
        else:
            name = diffusers_name(key)
            converted[f"transformer.{name}" if name else key] = value
    return converted


def _what_it_is(shapes: Mapping[str, tuple[int, ...]], metadata) -> str:
    try:
        return with_article(detect_kind(shapes, metadata).description)
    except ModelFileError:
        return "an unrecognised weights file"


def check_wan_base(path: str | os.PathLike, role: str = "--wan-dit") -> dict[str, tuple[int, ...]]:
    """The shapes of ``path`` after checking, from its header, that it is a LivePhoto-Wan DiT in the original layout."""
    shapes, metadata = read_safetensors_header(path)
    name = Path(path).name
    if "model.diffusion_model.patch_embedding.weight" in shapes:
        raise ModelFileError(f"{name} stores the Wan DiT under the prefix 'model.diffusion_model.'; {role} reads "
                             f"the authors' unprefixed base.safetensors ({HUB_FILES})")
    if "blocks.0.attn1.to_q.weight" in shapes:
        raise ModelFileError(f"{name} is a Wan DiT in diffusers layout; {role} needs the authors' original-layout "
                             f"base.safetensors ({HUB_FILES})")
    if "patch_embedding.weight" not in shapes or "blocks.0.self_attn.q.weight" not in shapes:
        raise ModelFileError(f"{name} is {_what_it_is(shapes, metadata)}, not a Wan DiT; {role} needs the "
                             f"LivePhoto-Wan2.1 base.safetensors ({HUB_FILES})")
    missing = [key for key in LIVEPHOTO_KEYS if key not in shapes]
    if missing:
        raise ModelFileError(f"{name} is a Wan2.1 DiT without LivePhoto's intensity modules (no {missing[0]}): a stock "
                             f"Wan model cannot take an intensity; {role} needs {HUB_FILES}")
    if any(key.startswith("img_emb.") for key in shapes):
        raise ModelFileError(f"{name} is an image-to-video Wan DiT (it has img_emb.*); LivePhoto-Wan2.1 is built on "
                             f"the text-to-video Wan2.1-T2V-1.3B: pass {HUB_FILES}")
    return shapes


def infer_config(shapes: Mapping[str, tuple[int, ...]], head_dim: int = WAN_HEAD_DIM) -> dict[str, Any]:
    """LivePhotoWan's config from an original-layout file's shapes: {"transformer": ..., "intensity_levels": ...}."""
    dim, in_channels, *patch = expect_shape(shapes, "patch_embedding.weight", 5)
    text_dim = expect_shape(shapes, "text_embedding.0.weight", 2)[1]
    freq_dim = expect_shape(shapes, "time_embedding.0.weight", 2)[1]
    ffn_dim = expect_shape(shapes, "blocks.0.ffn.0.weight", 2)[0]
    head_out = expect_shape(shapes, "head.head.weight", 2)[0]
    levels, width = expect_shape(shapes, "motion_intensity_embed.weight", 2)
    num_layers = 1 + max(int(m.group(1)) for m in map(_BLOCK.fullmatch, shapes) if m)
    patch_volume = patch[0] * patch[1] * patch[2]
    problems = []
    if dim % head_dim:
        problems.append(f"width {dim} is not a whole number of {head_dim}-wide heads")
    if head_out % patch_volume:
        problems.append(f"head.head.weight has {head_out} outputs, not a multiple of the patch volume {patch_volume}")
    if width != INTENSITY_TOKENS * text_dim:
        problems.append(f"motion_intensity_embed.weight is {width} wide where the text width {text_dim} needs "
                        f"{INTENSITY_TOKENS * text_dim}")
    if text_dim % 8:
        problems.append(f"text width {text_dim} is not divisible by text_reweight's 8 heads")
    if problems:
        raise ModelFileError(f"the Wan DiT's shapes do not fit together ({'; '.join(problems)}); the file is damaged: "
                             f"download it again")
    config = transformer_config(
        dim=dim, num_heads=dim // head_dim, in_channels=in_channels, out_channels=head_out // patch_volume,
        text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim, num_layers=num_layers, patch_size=tuple(patch),
    )
    return {"transformer": config, "intensity_levels": levels}


def load_livephoto_wan(
    path: str | os.PathLike,
    lora: str | os.PathLike | None = None,
    lora_alpha: float = 1.2,
    dtype: torch.dtype = torch.bfloat16,
    head_dim: int | None = None,
) -> LivePhotoWan:
    """The authors' base.safetensors (and lora.safetensors merged at ``lora_alpha``) as a LivePhotoWan in ``dtype``;
    ``head_dim`` None: Wan's (WAN_HEAD_DIM, read at call time so tests of tiny models can set it)."""
    from .lora import merge_lora, read_lora

    shapes = check_wan_base(path)
    config = infer_config(shapes, WAN_HEAD_DIM if head_dim is None else head_dim)
    lora_pairs = read_lora(lora, shapes) if lora is not None else None  # a wrong LoRA fails before the base loads
    original, _ = load_state_dict(path)
    if lora_pairs is not None:
        merge_lora(original, lora_pairs, lora_alpha)
    return build_model(
        lambda: LivePhotoWan(config["transformer"], config["intensity_levels"]), model_state_dict(original), dtype,
        f"{Path(path).name} (a LivePhoto-Wan DiT)", computed_buffers=("rope.freqs_cos", "rope.freqs_sin"),
    )
