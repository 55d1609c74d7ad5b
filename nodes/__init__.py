"""The LivePhoto nodes (ComfyUI's V3 node API), registered through ``comfy_entrypoint``."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .estimate import EstimateIntensity
from .loader import LoadLivePhotoModel
from .loop import PingPong
from .paths import register_model_folders
from .sampler import LivePhotoSampler, PriorInversion
from .save_for_phone import SaveForPhone
from .text import TextReweight
from .wan import LivePhotoWanSampler, LoadLivePhotoWanModel
from .windows import ContextWindows

NODES = [
    LoadLivePhotoModel, TextReweight, PriorInversion, ContextWindows, LivePhotoSampler, EstimateIntensity, SaveForPhone,
    PingPong, LoadLivePhotoWanModel, LivePhotoWanSampler,
]


class LivePhotoExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_model_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> LivePhotoExtension:
    return LivePhotoExtension()
