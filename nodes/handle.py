"""LIVEPHOTO_MODEL: the converted LivePhoto model, handed to ComfyUI's memory manager.

The model is wrapped in a ``comfy.model_patcher.ModelPatcher`` so that ComfyUI loads it onto the
GPU, offloads it when another model needs the memory, and counts it like its own models. While
it runs, the MODEL it was converted from is unloaded from the GPU, so that only one copy of the
SD-1.5 UNet sits there.
"""

from __future__ import annotations

import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import latent_preview
import torch

from ..livephoto_core.model import LivePhotoModel
from ..livephoto_core.sampling import ProgressEvent

LIVEPHOTO_MODEL = "LIVEPHOTO_MODEL"
LIVEPHOTO_PRIOR = "LIVEPHOTO_PRIOR"
LIVEPHOTO_WINDOWS = "LIVEPHOTO_WINDOWS"


class LivePhotoModule(torch.nn.Module):
    """The LivePhoto model as a ModelPatcher sees it: a module with a settable ``device`` attribute."""

    def __init__(self, model: LivePhotoModel, device: torch.device):
        super().__init__()
        self.livephoto = model
        self.device = device


@dataclass(eq=False, repr=False)
class LivePhotoModelHandle:
    """What flows along a LIVEPHOTO_MODEL link."""

    model: LivePhotoModel
    patcher: Any  # comfy.model_patcher.ModelPatcher around LivePhotoModule(model)
    latent_scale: float  # the MODEL's latent_format.scale_factor: raw VAE latents * scale = what the UNet sees
    scheduler_config: dict  # SD-1.5's noise schedule, for livephoto_core.sampling.make_scheduler
    name: str  # the checkpoint file, for messages
    source: weakref.ref  # the MODEL (ModelPatcher) the UNet was converted from
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # marks conditioning and priors made with it

    def __repr__(self) -> str:  # ComfyUI shows inputs' reprs in error reports
        return f"LivePhotoModelHandle({self.name}, {self.model.dtype}, on {self.model.device})"

    @classmethod
    def wrap(cls, model: LivePhotoModel, source, latent_scale: float, scheduler_config: dict, name: str):
        offload_device = comfy.model_management.unet_offload_device()
        patcher = comfy.model_patcher.ModelPatcher(
            LivePhotoModule(model, offload_device),
            load_device=comfy.model_management.get_torch_device(),
            offload_device=offload_device,
        )
        return cls(model, patcher, latent_scale, scheduler_config, name, weakref.ref(source))

    def load(self, memory_required: float = 0) -> LivePhotoModel:
        """Have ComfyUI put the model on its compute device (evicting others as needed); returns it there."""
        management = comfy.model_management
        source = self.source()
        if source is not None and not management.is_device_cpu(self.patcher.load_device):
            management.unload_model_and_clones(source)
        # Full load: plain torch modules cannot run partially offloaded (that needs comfy.ops layers).
        management.load_models_gpu([self.patcher], memory_required=memory_required, force_full_load=True)
        return self.model


def sampling_memory(num_frames: int, latent_height: int, latent_width: int, guided: bool, dtype: torch.dtype) -> float:
    """Bytes of activations one guided UNet call needs, by ComfyUI's rule of thumb for SD-1.5
    (BaseModel.memory_required with PyTorch attention: 0.01 MiB per latent pixel and byte of dtype)."""
    batch = num_frames * (2 if guided else 1)
    return batch * latent_height * latent_width * torch.finfo(dtype).bits / 8 * 0.01 * 2**20


class NodeProgress:
    """The core's per-step callback inside a node: advances ComfyUI's progress bar with a live preview
    of the middle frame, as KSampler previews its batch, and honours Cancel.

    The preview goes through ComfyUI's own previewer for SD-1.5 latents, so the user's preview
    setting holds: none, latent2rgb or TAESD (with taesd_decoder in models/vae_approx)."""

    def __init__(self, total: int, previews: bool = False):
        self.bar = comfy.utils.ProgressBar(total)
        # Only sampling has a video to show; inversion must not load a TAESD decoder it never uses.
        self.previewer = latent_preview.get_previewer(
            comfy.model_management.get_torch_device(), comfy.latent_formats.SD15()
        ) if previews else None

    def __call__(self, event: ProgressEvent) -> None:
        image = None
        if self.previewer is not None and event.preview is not None:
            frames = event.preview[0]  # [F, 4, h, w], scaled as ComfyUI's SD-1.5 latents are
            middle = len(frames) // 2
            image = self.previewer.decode_latent_to_preview_image("JPEG", frames[middle : middle + 1].float())
        self.bar.update_absolute(event.step, event.total, image)
        comfy.model_management.throw_exception_if_processing_interrupted()
