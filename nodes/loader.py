"""LoadLivePhotoModel: ComfyUI's SD-1.5 MODEL + a LivePhoto checkpoint -> LIVEPHOTO_MODEL.

The UNet weights are read from the MODEL with its weight patches (LoRAs) merged the way ComfyUI
merges them, converted to the core's diffusers layout once, and cached for as long as the same
MODEL, files and settings come in again.
"""

from __future__ import annotations

import os
import weakref

import comfy.model_management
import comfy.supported_models
import torch
from comfy_api.latest import io

from ..livephoto_core.config import LivePhotoConfig
from ..livephoto_core.errors import InvalidInputError, ModelFileError
from ..livephoto_core.loading.assemble import assemble_model
from ..livephoto_core.loading.assemble import check_motion_module_choice as choose_motion_module
from ..livephoto_core.loading.checkpoint import read_livephoto_checkpoint
from ..livephoto_core.loading.detect import detect_path, with_article
from ..livephoto_core.loading.dinov2 import dinov2_from_state_dict, load_dinov2
from ..livephoto_core.loading.files import read_safetensors_metadata
from ..livephoto_core.loading.motion_module import load_motion_adapter
from ..livephoto_core.loading.sd15 import shipped_config, unet_from_ldm
from .handle import LIVEPHOTO_MODEL, LivePhotoModelHandle
from .paths import (
    LIVEPHOTO_FOLDER,
    MOTION_MODULE_FOLDER,
    NONE,
    dinov2_choices,
    dinov2_path,
    full_path,
    livephoto_choices,
    motion_module_choices,
)

UNET_PREFIX = "diffusion_model."  # ComfyUI's BaseModel keys; checkpoints add "model." in front
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
LOAD_CHECKPOINT_HINT = "load an SD-1.5 checkpoint (e.g. v1-5-pruned-emaonly.safetensors) with Load Checkpoint"
# ComfyUI model classes users meet most, in words.
_MODEL_NAMES = {
    "SD20": "an SD-2.x model",
    "SD21UnclipL": "an SD-2.1 unCLIP model",
    "SD21UnclipH": "an SD-2.1 unCLIP model",
    "SDXL": "an SDXL model",
    "SDXLRefiner": "the SDXL refiner",
    "SVD_img2vid": "a Stable Video Diffusion model",
    "SD15_instructpix2pix": "an InstructPix2Pix model",
}
# Which widget each kind of file belongs in, for messages about a file picked in the wrong one.
_WIDGET_FOR_KIND = {"livephoto": "livephoto_checkpoint", "dinov2": "dinov2", "motion_module": "motion_module"}
# The same, in the words of the core loaders' messages ("pass it with 'dinov2'").
NODE_INPUTS = {"sd15": "Load Checkpoint", **{kind: f"'{widget}'" for kind, widget in _WIDGET_FOR_KIND.items()}}
_KIND_NOUNS = {
    "livephoto": "a LivePhoto checkpoint",
    "dinov2": "a DINOv2 image encoder",
    "motion_module": "an AnimateDiff SD-1.5 motion module",
}

_cache: dict[tuple, tuple[weakref.ref, weakref.ref | None, LivePhotoModelHandle]] = {}


def check_sd15(model) -> None:
    """Refuse a MODEL that is not an epsilon-prediction, 4-channel SD-1.x UNet, saying what it is."""
    base = model.model
    config = base.model_config
    unet = config.unet_config
    kind = type(config).__name__
    details = (
        f"ComfyUI model class {kind}, context dim {unet.get('context_dim')}, {unet.get('in_channels')} input channels"
    )
    if not isinstance(config, comfy.supported_models.SD15):
        name = _MODEL_NAMES.get(kind, f"a {kind} model")
        raise InvalidInputError(f"the MODEL is {name} ({details}); LivePhoto needs SD-1.5: {LOAD_CHECKPOINT_HINT}")
    if unet.get("in_channels") != 4:
        name = _MODEL_NAMES.get(kind, "an SD-1.5 inpainting model")
        raise InvalidInputError(
            f"the MODEL is {name} ({details}); LivePhoto needs the plain 4-channel SD-1.5 or a fine-tune of it: "
            f"{LOAD_CHECKPOINT_HINT}"
        )
    prediction = base.model_type.name
    if prediction != "EPS":
        raise InvalidInputError(
            f"the MODEL predicts {prediction} ({details}); LivePhoto's modules are trained for epsilon prediction: "
            f"{LOAD_CHECKPOINT_HINT}"
        )


def patched_unet_state_dict(model, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The MODEL's UNet in LDM layout (``model.diffusion_model.*``) as CPU copies in `dtype`, with its
    weight patches (LoRAs, merges) applied by ComfyUI's own code, without touching the MODEL."""
    cpu = torch.device("cpu")
    weights = {}
    for key, weight in model.model_state_dict(UNET_PREFIX).items():
        patched = key in model.patches
        if patched:
            weight = model.patch_weight_to_device(key, device_to=cpu, return_weight=True)
        # A copy even when nothing changes: ComfyUI moves and patches its tensors on its own schedule.
        weights[f"model.{key}"] = weight.to(device=cpu, dtype=dtype, copy=not patched)
    return weights


def dinov2_from_clip_vision(clip_vision, dtype: torch.dtype):
    """A transformers Dinov2Model with the weights of a CLIP_VISION that holds a DINOv2."""
    model_type = getattr(clip_vision, "model_type", "unknown")
    if model_type != "dinov2":
        raise InvalidInputError(
            f"the clip_vision input holds a {model_type} image encoder; LivePhoto needs DINOv2: load a DINOv2 file "
            f"with Load CLIP Vision, or disconnect clip_vision and pick the file in 'dinov2'"
        )
    state = {key: value.to(device="cpu", copy=True) for key, value in clip_vision.get_sd().items()}
    return dinov2_from_state_dict(state, dtype, "the DINOv2 of the clip_vision input")


def model_dtype(choice: str) -> torch.dtype:
    if choice == "auto":
        device = comfy.model_management.get_torch_device()
        return comfy.model_management.unet_dtype(device=device, supported_dtypes=list(DTYPES.values()))
    return DTYPES[choice]


def check_file_kind(path: str, name: str, widget: str, wanted: str) -> None:
    """Refuse a .safetensors file of another kind, naming the widget it belongs in (others: checked on load)."""
    if not path.lower().endswith(".safetensors"):
        return
    found = detect_path(path)
    if found.kind == wanted:
        return
    belongs = _WIDGET_FOR_KIND.get(found.kind)
    hint = f" (that file belongs in '{belongs}')" if belongs else ""
    described = with_article(found.description)
    raise ModelFileError(f"{name} is {described}, not {_KIND_NOUNS[wanted]}{hint}; pick one in '{widget}'")


def checkpoint_config(path: str, name: str) -> LivePhotoConfig:
    """The checkpoint's config from its header alone (no tensors read)."""
    if not path.lower().endswith(".safetensors"):
        raise ModelFileError(
            f"{name} is not a LivePhoto checkpoint (those are .safetensors files); pick one in 'livephoto_checkpoint'"
        )
    return LivePhotoConfig.from_metadata(read_safetensors_metadata(path), name)


def check_motion_module_choice(config: LivePhotoConfig, checkpoint: str, motion_module: str) -> None:
    choose_motion_module(
        config, checkpoint, motion_module != NONE,
        to_give=f"put that file in models/{MOTION_MODULE_FOLDER} and pick it in 'motion_module'",
        to_remove="set 'motion_module' to none",
    )


def file_signature(path: str | None) -> tuple | None:
    if path is None:
        return None
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_size, stat.st_mtime_ns


def build_handle(
    model, checkpoint_path: str, checkpoint: str, dinov2_file: str | None, clip_vision, motion_path: str | None,
    dtype: torch.dtype,
) -> LivePhotoModelHandle:
    config, state = read_livephoto_checkpoint(checkpoint_path)
    unet2d = unet_from_ldm(patched_unet_state_dict(model, dtype), dtype, "the MODEL")
    if clip_vision is None:
        dinov2 = load_dinov2(dinov2_file, dtype, NODE_INPUTS).model
    else:
        dinov2 = dinov2_from_clip_vision(clip_vision, dtype)
    motion = None
    if motion_path is not None:
        motion = load_motion_adapter(motion_path, unet2d.config.block_out_channels, dtype, NODE_INPUTS)
    livephoto = assemble_model(config, state, unet2d, dinov2, checkpoint, motion)
    livephoto.eval().requires_grad_(False)
    scale = float(model.model.latent_format.scale_factor)
    return LivePhotoModelHandle.wrap(livephoto, model, scale, shipped_config("scheduler"), checkpoint)


class LoadLivePhotoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadLivePhotoModel",
            display_name="Load LivePhoto Model",
            category="LivePhoto",
            description="Builds the LivePhoto video model around an SD-1.5 MODEL: adds the motion modules, the "
            "photo (DINOv2) attention and the text re-weighter from a LivePhoto checkpoint.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The SD-1.5 model from Load Checkpoint; LoRAs applied with LoraLoader are merged in.",
                ),
                io.Combo.Input(
                    "livephoto_checkpoint",
                    options=livephoto_choices(),
                    tooltip=f"A LivePhoto checkpoint (.safetensors) from models/{LIVEPHOTO_FOLDER}.",
                ),
                io.Combo.Input(
                    "dinov2",
                    options=dinov2_choices(),
                    tooltip="The DINOv2 image encoder the checkpoint was trained with, from models/livephoto or "
                    "models/clip_vision. Not used when clip_vision is connected.",
                ),
                io.Combo.Input(
                    "motion_module",
                    options=motion_module_choices(),
                    tooltip=f"An AnimateDiff motion module from models/{MOTION_MODULE_FOLDER}, only for checkpoints "
                    "trained on a frozen one; 'none' for checkpoints that carry their own.",
                ),
                io.Combo.Input(
                    "dtype",
                    options=["auto", *DTYPES],
                    default="auto",
                    tooltip="Precision of the LivePhoto model; auto picks what ComfyUI picks for a UNet on this device.",
                ),
                io.ClipVision.Input(
                    "clip_vision",
                    optional=True,
                    tooltip="A DINOv2 loaded with Load CLIP Vision, instead of the dinov2 file.",
                ),
            ],
            outputs=[
                io.Custom(LIVEPHOTO_MODEL).Output(
                    display_name="livephoto_model",
                    tooltip="The LivePhoto model, for Text Reweight, Prior Inversion, LivePhoto Sampler and "
                    "Estimate Motion Intensity.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, livephoto_checkpoint: str, dinov2: str, motion_module: str) -> bool | str:
        """File kinds and the motion-module rule, before anything runs. Only .safetensors headers are read
        here (milliseconds); other files are checked when they load."""
        try:
            path = full_path(LIVEPHOTO_FOLDER, livephoto_checkpoint)
            check_file_kind(path, livephoto_checkpoint, "livephoto_checkpoint", "livephoto")
            check_motion_module_choice(checkpoint_config(path, livephoto_checkpoint), livephoto_checkpoint, motion_module)
            if dinov2 != NONE:
                check_file_kind(dinov2_path(dinov2), dinov2, "dinov2", "dinov2")
            if motion_module != NONE:
                check_file_kind(full_path(MOTION_MODULE_FOLDER, motion_module), motion_module, "motion_module",
                                "motion_module")
        except (InvalidInputError, ModelFileError) as error:
            return str(error)
        return True

    @classmethod
    def fingerprint_inputs(cls, livephoto_checkpoint: str, dinov2: str, motion_module: str, **other_inputs) -> tuple:
        """Run again when a chosen file is replaced on disk. (ComfyUI passes every input here.)"""
        paths = (
            _existing(LIVEPHOTO_FOLDER, livephoto_checkpoint),
            _existing_dinov2(dinov2),
            _existing(MOTION_MODULE_FOLDER, motion_module),
        )
        return tuple(file_signature(path) for path in paths)

    @classmethod
    def execute(cls, model, livephoto_checkpoint, dinov2, motion_module, dtype, clip_vision=None) -> io.NodeOutput:
        check_sd15(model)
        checkpoint_path = full_path(LIVEPHOTO_FOLDER, livephoto_checkpoint)
        dinov2_file = None
        if clip_vision is None:
            if dinov2 == NONE:
                raise InvalidInputError(
                    "no DINOv2: pick the DINOv2 file the checkpoint was trained with in 'dinov2', "
                    "or connect a Load CLIP Vision node that loads it to 'clip_vision'"
                )
            dinov2_file = dinov2_path(dinov2)
        motion_path = None if motion_module == NONE else full_path(MOTION_MODULE_FOLDER, motion_module)
        config = checkpoint_config(checkpoint_path, livephoto_checkpoint)
        check_motion_module_choice(config, livephoto_checkpoint, motion_module)
        torch_dtype = model_dtype(dtype)

        key = (
            id(model.model), model.patches_uuid, file_signature(checkpoint_path), file_signature(dinov2_file),
            id(clip_vision), file_signature(motion_path), torch_dtype,
        )
        if key in _cache:
            model_ref, clip_vision_ref, handle = _cache[key]
            if model_ref() is model.model and (clip_vision_ref is None or clip_vision_ref() is clip_vision):
                return io.NodeOutput(handle)
        _cache.clear()  # one converted model at a time: free the last before building the next
        handle = build_handle(
            model, checkpoint_path, livephoto_checkpoint, dinov2_file, clip_vision, motion_path, torch_dtype
        )
        _cache[key] = (weakref.ref(model.model), None if clip_vision is None else weakref.ref(clip_vision), handle)
        return io.NodeOutput(handle)


def _existing(folder: str, name: str) -> str | None:
    return None if name == NONE else _none_if_missing(lambda: full_path(folder, name))


def _existing_dinov2(choice: str) -> str | None:
    return None if choice == NONE else _none_if_missing(lambda: dinov2_path(choice))


def _none_if_missing(find):
    try:
        return find()
    except InvalidInputError:
        return None
