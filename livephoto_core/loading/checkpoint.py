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
from .files import SAFETENSORS_SUFFIXES, load_state_dict, read_safetensors_metadata


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


def read_livephoto_config(path: str | os.PathLike) -> LivePhotoConfig:
    """A checkpoint's config, from the safetensors header alone (milliseconds, no tensors read)."""
    path = Path(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        metadata = read_safetensors_metadata(path)
    else:  # pickles carry no metadata, but reading one names any pickled code in it
        metadata = load_state_dict(path)[1]
    if METADATA_KEY not in metadata:
        raise ModelFileError(
            f"{path.name} is not a LivePhoto checkpoint (no {METADATA_KEY} metadata); "
            f"run `livephoto inspect {path.name}` to see what it is"
        )
    return LivePhotoConfig.from_metadata(metadata, path.name)


def read_livephoto_checkpoint(path: str | os.PathLike) -> tuple[LivePhotoConfig, dict[str, torch.Tensor]]:
    config = read_livephoto_config(path)  # a wrong file is refused before its tensors are read
    state, _ = load_state_dict(path)
    return config, state
