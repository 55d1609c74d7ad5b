"""Put a LivePhotoPipeline together from local files: base SD-1.5, LivePhoto checkpoint, DINOv2.

A checkpoint whose config says ``base_model: "bundled"`` (the demo model) carries its own base in
``base/`` and its DINOv2 in ``dinov2/`` beside the checkpoint file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ModelFileError
from ..model import LivePhotoModel
from ..pipeline import LivePhotoPipeline
from .checkpoint import read_livephoto_checkpoint
from .dinov2 import load_dinov2
from .files import content_hash
from .motion_module import load_motion_adapter
from .sd15 import load_sd15
from .tokenizer import load_clip_tokenizer

DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "demo_model"
CHECKPOINT_NAME = "livephoto.safetensors"


def demo_checkpoint() -> Path:
    path = DEMO_MODEL_DIR / CHECKPOINT_NAME
    if not path.is_file():
        raise ModelFileError(f"the bundled demo model is missing ({path}); reinstall livephoto")
    return path


def load_pipeline(
    livephoto: str | os.PathLike | None = None,
    base: str | os.PathLike | None = None,
    motion_module: str | os.PathLike | None = None,
    dinov2: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LivePhotoPipeline:
    """Load every part from local paths (the bundled demo model when `livephoto` is None)."""
    checkpoint = Path(livephoto) if livephoto is not None else demo_checkpoint()
    config, state = read_livephoto_checkpoint(checkpoint)
    bundled = checkpoint.parent
    if config.base_model == "bundled":
        base = base or bundled / "base"
        dinov2 = dinov2 or bundled / "dinov2"
    if base is None:
        raise ModelFileError(
            f"{checkpoint.name} animates an SD-1.5 model: pass the SD-1.5 checkpoint (.safetensors or a diffusers "
            f"folder) with --base"
        )
    if dinov2 is None:
        raise ModelFileError(
            f"{checkpoint.name} was trained with {config.dinov2_variant}: pass it (a transformers folder or "
            f".safetensors file) with --dinov2"
        )
    if config.motion_weights == "external" and motion_module is None:
        raise ModelFileError(
            f"{checkpoint.name} was trained on a frozen AnimateDiff motion module "
            f"(sha256 {config.motion_module_hash[:12]}...): pass that file with --motion-module"
        )
    if config.motion_weights == "checkpoint" and motion_module is not None:
        raise ModelFileError(
            f"{checkpoint.name} carries its own trained motion modules; leave out --motion-module "
            f"(it is for checkpoints trained on a frozen AnimateDiff file)"
        )

    components = load_sd15(base, dtype=dtype, tokenizer_path=tokenizer)
    if components.tokenizer is None:
        components.tokenizer = load_clip_tokenizer(None)  # raises, saying how to supply one
    content = load_dinov2(dinov2, dtype=dtype)
    hashes = {"base": components.content_hash, "livephoto": content_hash(checkpoint), "dinov2": content.content_hash}
    adapter = None
    if motion_module is not None:
        motion = load_motion_adapter(motion_module)
        if motion.content_hash != config.motion_module_hash:
            raise ModelFileError(
                f"{Path(motion_module).name} is not the motion module {checkpoint.name} was trained with "
                f"(sha256 {config.motion_module_hash[:12]}...)"
            )
        adapter, hashes["motion_module"] = motion.adapter, motion.content_hash

    model = LivePhotoModel.from_base(config, components.unet, content.model, adapter)
    model.load_trainable_state_dict(state, checkpoint.name)
    model.to(device=device, dtype=dtype).eval()
    return LivePhotoPipeline(
        model,
        components.vae.to(device).eval(),
        components.text_encoder.to(device).eval(),
        components.tokenizer,
        components.scheduler_config,
        hashes,
    )
