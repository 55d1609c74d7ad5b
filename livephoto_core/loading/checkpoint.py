"""Our LivePhoto checkpoint: one safetensors file with the trained parts and the config as metadata.

Format (docs/checkpoint-format.md): tensors ``unet.*`` (widened conv_in, motion modules unless
external, content attention), ``content_encoder.proj.*`` and ``text_reweighter.*``; metadata
``livephoto_config`` (LivePhotoConfig as JSON), ``format`` = "livephoto", ``format_version``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import METADATA_KEY, LivePhotoConfig
from ..errors import ModelFileError
from ..fileio import atomic_write
from ..model import LivePhotoModel
from .files import load_state_dict


def save_livephoto_checkpoint(
    model: LivePhotoModel, path: str | os.PathLike, overwrite: bool = False, dtype: torch.dtype | None = None
) -> Path:
    """Write the trained parts atomically; refuses to replace an existing file unless `overwrite`."""
    state = {
        name: tensor.detach().to(device="cpu", dtype=dtype or tensor.dtype).contiguous()
        for name, tensor in model.trainable_state_dict().items()
    }
    with atomic_write(path, overwrite=overwrite) as temporary:
        save_file(state, str(temporary), metadata=model.config.to_metadata())
    return Path(path)


def read_livephoto_checkpoint(path: str | os.PathLike) -> tuple[LivePhotoConfig, dict[str, torch.Tensor]]:
    state, metadata = load_state_dict(path)
    if METADATA_KEY not in metadata:
        raise ModelFileError(
            f"{Path(path).name} is not a LivePhoto checkpoint (no {METADATA_KEY} metadata); "
            f"run `livephoto inspect {Path(path).name}` to see what it is"
        )
    return LivePhotoConfig.from_metadata(metadata, Path(path).name), state
