"""Put a LivePhotoPipeline together from local files: base SD-1.5, LivePhoto checkpoint, DINOv2.

A checkpoint whose config says ``base_model: "bundled"`` (the demo model) carries its own base in
``base/`` and its DINOv2 in ``dinov2/`` beside the checkpoint file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import init_empty_weights

from ..checks import check_device
from ..config import LivePhotoConfig
from ..errors import ModelFileError
from ..model import LivePhotoModel
from ..modules.unet import build_motion_adapter
from ..pipeline import LivePhotoPipeline
from .checkpoint import read_livephoto_checkpoint
from .dinov2 import load_dinov2
from .files import content_hash
from .motion_module import LoadedMotionModule, load_motion_adapter
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
    low_memory: bool | None = None,
) -> LivePhotoPipeline:
    """Load every part from local paths (the bundled demo model when `livephoto` is None).
    `low_memory`: see LivePhotoPipeline."""
    device = check_device(device)  # before the loading, which takes a while for real models
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
    check_motion_module_choice(
        config, checkpoint.name, motion_module is not None,
        to_give="pass that file with --motion-module",
        to_remove="leave out --motion-module (it is for checkpoints trained on a frozen AnimateDiff file)",
    )

    components = load_sd15(base, dtype=dtype, tokenizer_path=tokenizer)
    if components.tokenizer is None:
        components.tokenizer = load_clip_tokenizer(None)  # raises, saying how to supply one
    content = load_dinov2(dinov2, dtype=dtype)
    hashes = {"base": components.content_hash, "livephoto": content_hash(checkpoint), "dinov2": content.content_hash}
    motion = None
    if motion_module is not None:
        motion = load_motion_adapter(motion_module, components.unet.config.block_out_channels, dtype)
        hashes["motion_module"] = motion.content_hash
    model = assemble_model(config, state, components.unet, content.model, checkpoint.name, motion)
    model.to(device=device, dtype=dtype).eval()
    return LivePhotoPipeline(
        model,
        components.vae.to(device).eval(),
        components.text_encoder.to(device).eval(),
        components.tokenizer,
        components.scheduler_config,
        hashes,
        low_memory=low_memory,
    )


def check_motion_module_choice(config: LivePhotoConfig, checkpoint: str, given: bool, to_give: str, to_remove: str):
    """A checkpoint trained on a frozen AnimateDiff file needs that file; one with its own motion modules takes none.
    `to_give` and `to_remove` say how, in the words of the front end (CLI flag, node widget)."""
    if config.motion_weights == "external" and not given:
        raise ModelFileError(
            f"{checkpoint} was trained on a frozen AnimateDiff motion module "
            f"(sha256 {config.motion_module_hash[:12]}...): {to_give}"
        )
    if config.motion_weights == "checkpoint" and given:
        raise ModelFileError(f"{checkpoint} carries its own trained motion modules; {to_remove}")


def assemble_model(
    config: LivePhotoConfig,
    state: dict[str, torch.Tensor],
    unet2d,
    dinov2,
    checkpoint: str,
    motion: LoadedMotionModule | None = None,
) -> LivePhotoModel:
    """The LivePhoto model from a base UNet, a DINOv2, a checkpoint's tensors and, for checkpoints
    trained on a frozen one, the AnimateDiff motion module. Nothing is randomly initialised that the
    checkpoint then overwrites."""
    if motion is not None and motion.content_hash != config.motion_module_hash:
        raise ModelFileError(
            f"{Path(motion.source).name} is not the motion module {checkpoint} was trained with "
            f"(sha256 {config.motion_module_hash[:12]}...)"
        )
    adapter = motion.adapter if motion is not None else motion_adapter_from_checkpoint(config, unet2d, state, checkpoint)
    model = LivePhotoModel.from_base(config, unet2d, dinov2, adapter)
    model.load_trainable_state_dict(state, checkpoint)
    return model.eval()


def motion_adapter_from_checkpoint(config: LivePhotoConfig, unet2d, state: dict[str, torch.Tensor], checkpoint: str):
    """The checkpoint's motion modules as a MotionAdapter (the motion UNet and the adapter share names)."""
    prefix = "unet."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and ".motion_modules." in k}
    with init_empty_weights():
        adapter = build_motion_adapter(config, unet2d)
    expected = set(adapter.state_dict())
    if set(weights) != expected:
        missing = sorted(expected - set(weights))
        raise ModelFileError(
            f"{checkpoint} lacks motion-module tensors it should carry (e.g. {missing[:2]}); "
            f"was it written by another livephoto version?"
        )
    adapter.load_state_dict(weights, strict=True, assign=True)
    return adapter
