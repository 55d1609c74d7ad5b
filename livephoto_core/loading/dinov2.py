"""Load a frozen DINOv2 image encoder as a transformers Dinov2Model, from a folder or a single file.

Single files come in three key layouts (see ``detect.dinov2_structure``): transformers >= 5's
(``attention.q_proj``), the classic Hugging Face one (``attention.attention.query``; the published
files and ComfyUI's clip_vision), and the original facebookresearch .pth (``blocks.N.attn.qkv``),
each optionally under a ``dinov2.``/``model.`` prefix. All are renamed to transformers 5's names and
the config is read from the shapes; heads are DINOv2's width-64 heads.
"""

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFileError
from .detect import CLI_INPUTS, detect_kind, detect_path, require_kind
from .files import build_model, content_hash, load_pretrained, load_state_dict
from .folder_configs import DINOV2
from .schema import expect_shape

DINOV2_HEAD_WIDTH = 64

_CLASSIC_NAMES = {
    "attention.attention.query.": "attention.q_proj.",
    "attention.attention.key.": "attention.k_proj.",
    "attention.attention.value.": "attention.v_proj.",
    "attention.output.dense.": "attention.o_proj.",
    "mlp.weights_out.": "mlp.down_proj.",
}
_FACEBOOK_BLOCK_NAMES = {
    "attn.proj.": "attention.o_proj.",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.w3.": "mlp.down_proj.",
}
_FACEBOOK_TOP_NAMES = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


@dataclass
class LoadedDinov2:
    model: Any  # transformers.Dinov2Model, eval mode, requires_grad False
    hidden_size: int
    patch_size: int
    source: str
    content_hash: str


def load_dinov2(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, inputs: Mapping[str, str] = CLI_INPUTS
) -> LoadedDinov2:
    """Load DINOv2 from a transformers folder (config.json + weights) or a single weights file.

    ``inputs``: the front end's names for its file inputs, for the messages (see ``require_kind``)."""
    from transformers import Dinov2Model

    path = Path(path)
    found = detect_path(path)
    require_kind(found, "dinov2", path, inputs["dinov2"], inputs)
    if path.is_dir():  # its config.json was checked against folder_configs.DINOV2 by detect_path
        model = load_pretrained(Dinov2Model, path, f"DINOv2 folder {path.name}", dtype=dtype)
    else:
        model = dinov2_from_state_dict(load_state_dict(path)[0], dtype, f"DINOv2 file {path.name}")
    model.eval().requires_grad_(False)
    return LoadedDinov2(model, model.config.hidden_size, model.config.patch_size, str(path), content_hash(path))


def dinov2_from_state_dict(state_dict: dict[str, torch.Tensor], dtype: torch.dtype, source: str):
    """A frozen transformers Dinov2Model from a DINOv2 state dict of any supported layout."""
    from transformers import Dinov2Model

    found = detect_kind(state_dict)
    if found.kind != "dinov2":
        raise ModelFileError(f"{source} holds {found.description}, not DINOv2; give the DINOv2 image encoder")
    weights = dinov2_to_transformers(state_dict, found.details)
    try:
        config = infer_dinov2_config(weights, found.details)
    except ModelFileError as error:  # a tensor of the wrong shape, or sizes no DINOv2 has: name the file
        raise ModelFileError(f"{source}: {error}") from None
    model = build_model(lambda: Dinov2Model(config), weights, dtype, source)
    return model.eval().requires_grad_(False)


def dinov2_to_transformers(state_dict: dict[str, torch.Tensor], details: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a DINOv2 state dict of any supported layout to transformers 5's Dinov2Model keys."""
    prefix, layout = details["prefix"], details["layout"]
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        if layout == "facebookresearch":
            if key.startswith("blocks."):
                _, index, rest = key.split(".", 2)
                for old, new in _FACEBOOK_BLOCK_NAMES.items():
                    rest = rest.replace(old, new)
                key = f"encoder.layer.{index}.{rest}"
                if rest.startswith("attn.qkv."):  # one fused projection -> q, k, v
                    for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                        out[f"encoder.layer.{index}.attention.{name}.{rest.rsplit('.', 1)[1]}"] = part
                    continue
                key = key.replace("mlp.w12.", "mlp.weights_in.")
            else:
                key = _FACEBOOK_TOP_NAMES.get(key, key)
        for old, new in _CLASSIC_NAMES.items():
            key = key.replace(old, new)
        if "mlp.weights_in." in key:  # fused SwiGLU input: first half gates, second half is the value
            gate, up = value.chunk(2, dim=0)
            out[key.replace("weights_in", "gate_proj")] = gate
            out[key.replace("weights_in", "up_proj")] = up
        else:
            out[key] = value
    if "embeddings.mask_token" not in out:  # only used for masked-image training; zeros are its init
        out["embeddings.mask_token"] = torch.zeros(1, details["hidden_size"])
    return out


def infer_dinov2_config(weights: dict[str, torch.Tensor], details: dict[str, Any]):
    """A Dinov2Config matching a state dict in transformers 5's names."""
    from transformers import Dinov2Config

    hidden, patch = details["hidden_size"], details["patch_size"]
    grid = math.isqrt(details["num_positions"] - 1)
    if grid * grid != details["num_positions"] - 1:
        raise ModelFileError(
            f"a DINOv2 with {details['num_positions']} position embeddings is not a square grid plus CLS"
        )
    shapes = {key: tuple(value.shape) for key, value in weights.items()}
    mlp = "encoder.layer.0.mlp.gate_proj.weight" if details["use_swiglu_ffn"] else "encoder.layer.0.mlp.fc1.weight"
    if mlp not in shapes:
        raise ModelFileError(f"a DINOv2 has {mlp!r}; this one lacks it, so the file is incomplete")
    if details["use_swiglu_ffn"]:
        swiglu_width = expect_shape(shapes, mlp, 2)[0]
        # transformers sizes SwiGLU as (int(hidden * ratio * 2/3) + 7) // 8 * 8; giant uses ratio 4.
        candidates = (4, swiglu_width * 1.5 / hidden)
        mlp_ratio = next((r for r in candidates if (int(int(hidden * r) * 2 / 3) + 7) // 8 * 8 == swiglu_width), None)
        if mlp_ratio is None:
            raise ModelFileError(
                f"a DINOv2 SwiGLU width of {swiglu_width} for hidden size {hidden} is not one transformers can build"
            )
    else:
        mlp_ratio = expect_shape(shapes, mlp, 2)[0] / hidden
        mlp_ratio = int(mlp_ratio) if mlp_ratio.is_integer() else mlp_ratio
    config = dict(
        hidden_size=hidden,
        num_hidden_layers=details["num_hidden_layers"],
        num_attention_heads=max(1, hidden // DINOV2_HEAD_WIDTH),
        mlp_ratio=mlp_ratio,
        use_swiglu_ffn=details["use_swiglu_ffn"],
        patch_size=patch,
        num_channels=details["num_channels"],
        image_size=grid * patch,
        qkv_bias="encoder.layer.0.attention.q_proj.bias" in weights,
    )
    DINOV2.check({"model_type": "dinov2", **config}, "the config its shapes give")
    return Dinov2Config(**config)
