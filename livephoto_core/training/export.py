"""Export a trained model: our LivePhoto checkpoint, and for from-scratch runs a bundled model folder.

Bundled folder (config ``base_model: "bundled"``, what ``loading.pipeline.load_pipeline`` expects):

    livephoto.safetensors   the LivePhoto parts (widened conv_in, motion modules, content attention,
                            content projection, text reweighter)
    base/                   diffusers layout: unet/ (a plain 4-channel UNet2DConditionModel holding
                            the trained UNet's other weights), vae/, text_encoder/, tokenizer/, scheduler/
    dinov2/                 transformers Dinov2Model
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..loading.checkpoint import save_livephoto_checkpoint
from ..model import LivePhotoModel
from ..modules.unet import is_trainable_key
from .base import TrainingBase, write_base_folder
from .resume import atomic_directory

CHECKPOINT_NAME = "livephoto.safetensors"


def base_unet_state(model: LivePhotoModel) -> dict[str, torch.Tensor]:
    """The motion UNet's SD weights in UNet2DConditionModel names: everything but the motion modules
    and content attention, with conv_in cut back to the 4 noisy-latent channels."""
    state = {}
    for name, tensor in model.unet.motion_unet.state_dict().items():
        if name.startswith("conv_in."):
            state[name] = tensor[:, :4] if name.endswith("weight") else tensor
        elif not is_trainable_key(name):
            state[name] = tensor
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def base_unet(model: LivePhotoModel, like) -> torch.nn.Module:
    """A UNet2DConditionModel with the config of `like` (the base it started from) and the trained weights."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(like.config)
    unet.load_state_dict(base_unet_state(model), strict=True)
    return unet.eval()


def export_model(model: LivePhotoModel, base: TrainingBase, folder: Path) -> Path:
    """Write `folder` atomically: livephoto.safetensors, plus base/ and dinov2/ for a bundled model."""
    with atomic_directory(folder) as temporary:
        save_livephoto_checkpoint(model, temporary / CHECKPOINT_NAME)
        if model.config.base_model == "bundled":
            write_base_folder(
                temporary / "base", base_unet(model, base.unet2d), base.vae, base.text_encoder, base.scheduler_config
            )
            shutil.copytree(base.folder / "tokenizer", temporary / "base" / "tokenizer")
            base.dinov2.save_pretrained(temporary / "dinov2")
    return folder
