"""Load an AnimateDiff motion module (v1, v2, v3; original or diffusers layout) as a diffusers MotionAdapter.

The adapter's sizes are read from the weights' shapes, so tiny test modules load the same way as
the real 320/640/1280/1280 ones; what shapes cannot show is AnimateDiff's: 8 heads, 32 norm groups.
Conversion is diffusers' own ``convert_animatediff_checkpoint_to_diffusers``, which drops the stored
sinusoidal positional encodings; MotionAdapter recomputes the same values for the stored length.
"""

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFileError
from .detect import CLI_INPUTS, detect_path, require_kind
from .files import build_model, content_hash, load_pretrained, load_state_dict
from .folder_configs import MOTION_ADAPTER

MOTION_HEADS = 8
MOTION_NORM_GROUPS = 32


@dataclass
class LoadedMotionModule:
    adapter: Any  # diffusers.MotionAdapter
    version: str  # "v1", "v2" or "v3"
    max_seq_length: int
    has_mid_block: bool
    source: str
    content_hash: str


def load_motion_adapter(
    path: str | os.PathLike,
    block_out_channels: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    inputs: Mapping[str, str] = CLI_INPUTS,
) -> LoadedMotionModule:
    """Load a motion module file or diffusers MotionAdapter folder.

    ``block_out_channels``, when given, is the UNet's; a module made for other widths is refused.
    ``inputs``: the front end's names for its file inputs, for the messages (see ``require_kind``).
    """
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    path = Path(path)
    found = detect_path(path)
    require_kind(found, "motion_module", path, inputs["motion_module"], inputs)
    details = found.details
    if block_out_channels is not None and list(details["block_out_channels"]) != list(block_out_channels):
        raise ModelFileError(
            f"{path.name} is a motion module for UNet widths {tuple(details['block_out_channels'])} but the base "
            f"UNet has {tuple(block_out_channels)}; use a motion module made for this base"
        )

    if path.is_dir():  # its config.json was checked against folder_configs.MOTION_ADAPTER by detect_path
        adapter = load_pretrained(MotionAdapter, path, f"MotionAdapter folder {path.name}", torch_dtype=dtype)
    else:
        state_dict, _ = load_state_dict(path)
        config = dict(
            block_out_channels=list(details["block_out_channels"]),
            motion_layers_per_block=details["layers_per_block"],
            motion_transformer_layers_per_block=details["transformer_layers_per_block"],
            motion_mid_block_layers_per_block=1,
            motion_transformer_layers_per_mid_block=max(details["mid_transformer_layers_per_block"], 1),
            motion_num_attention_heads=MOTION_HEADS,
            motion_norm_num_groups=MOTION_NORM_GROUPS,
            motion_max_seq_length=details["max_seq_length"] or 32,
            use_motion_mid_block=details["has_mid_block"],
        )
        MOTION_ADAPTER.check(config, f"{path.name}: the config its shapes give")
        adapter = build_model(
            lambda: MotionAdapter(**config),
            convert_animatediff_checkpoint_to_diffusers(state_dict),
            dtype,
            f"motion module {path.name}",
            computed_buffers=("pos_embed.pe",),
        )
    return LoadedMotionModule(
        adapter=adapter,
        version=details["version"],
        max_seq_length=adapter.config.motion_max_seq_length,
        has_mid_block=adapter.config.use_motion_mid_block,
        source=str(path),
        content_hash=content_hash(path),
    )
