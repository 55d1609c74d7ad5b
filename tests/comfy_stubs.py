"""Minimal stand-ins for the parts of ComfyUI the LivePhoto nodes use, for tests without ComfyUI.

Each stand-in copies the behaviour of ComfyUI 0.33.0 that the nodes rely on (names, signatures,
data layouts), nothing more: ``comfy_api.latest`` (V3 node classes, schema, NodeOutput, PreviewText),
``comfy.model_management`` (devices, dtypes, load_models_gpu, the interrupt flag),
``comfy.utils.ProgressBar``, ``comfy.model_patcher.ModelPatcher`` (clone, weight patches of type
"diff" applied as ``comfy.lora.calculate_weight`` does), ``comfy.supported_models`` (config
classes) and ``folder_paths`` (model folders over a temp dir, the output folder beside them and its
file numbering). ComfyUI-shaped data stand-ins:
a MODEL over an LDM-layout UNet state dict, a CLIP over a transformers CLIPTextModel and tokenizer
(ComfyUI's SD-1 chunking and padding), a VAE over a diffusers AutoencoderKL, a CLIP_VISION holding
a DINOv2 in ComfyUI's (classic Hugging Face) key layout.

``stubbed_comfyui(models_dir)`` puts the modules in ``sys.modules`` only while it is active and
imports the pack the way ComfyUI does (its folder as a package); nothing leaks to other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import importlib
import importlib.util
import os
import sys
import types
import uuid
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "livephoto_pack_under_test"


# --- comfy_api.latest ------------------------------------------------------------------------------


class _Input:
    def __init__(self, id, display_name=None, optional=False, tooltip=None, **options):
        self.id, self.display_name, self.optional, self.tooltip, self.options = id, display_name, optional, tooltip, options


class _Output:
    def __init__(self, id=None, display_name=None, tooltip=None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name or id, tooltip, is_output_list


def _comfytype(io_type: str, widget: bool = False):
    input_class = type("Input", (_Input,), {"io_type": io_type, "is_widget": widget})
    output_class = type("Output", (_Output,), {"io_type": io_type})
    return type(io_type, (), {"io_type": io_type, "Input": input_class, "Output": output_class})


@dataclasses.dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list = dataclasses.field(default_factory=list)
    outputs: list = dataclasses.field(default_factory=list)
    hidden: list = dataclasses.field(default_factory=list)
    description: str = ""
    is_output_node: bool = False
    not_idempotent: bool = False
    is_input_list: bool = False

    def validate(self):
        """As ComfyUI's Schema.validate: input ids and output ids unique."""
        for ids in ([i.id for i in self.inputs], [o.id for o in self.outputs if o.id is not None]):
            if len(set(ids)) != len(ids):
                raise ValueError(f"ids must be unique: {ids}")


class NodeOutput:
    def __init__(self, *args, ui=None, expand=None, block_execution=None):
        self.args, self.ui = args, ui

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index):
        return self.args[index]


class Hidden(str, enum.Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"


class HiddenHolder:
    """The hidden inputs a node asked for; as ComfyUI's, None for any it was not given."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def __getattr__(self, name):
        return None


class ComfyNode:
    hidden = HiddenHolder()  # what ComfyUI's executor sets when the prompt has none

    @classmethod
    def define_schema(cls):
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.validate()
        return schema


class ComfyExtension:
    async def on_load(self) -> None:
        pass

    async def get_node_list(self):
        raise NotImplementedError


class PreviewText:
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self):
        return {"text": (self.value,)}


def _comfy_api_modules():
    io = types.ModuleType("comfy_api.latest.io")
    for name, io_type, widget in [
        ("Int", "INT", True), ("Float", "FLOAT", True), ("String", "STRING", True), ("Boolean", "BOOLEAN", True),
        ("Combo", "COMBO", True), ("Image", "IMAGE", False), ("Mask", "MASK", False), ("Latent", "LATENT", False),
        ("Conditioning", "CONDITIONING", False), ("Model", "MODEL", False), ("Clip", "CLIP", False),
        ("Vae", "VAE", False), ("ClipVision", "CLIP_VISION", False),
    ]:
        setattr(io, name, _comfytype(io_type, widget))
    io.Custom = lambda io_type: _comfytype(io_type)
    io.Schema, io.NodeOutput, io.ComfyNode, io.Hidden = Schema, NodeOutput, ComfyNode, Hidden
    ui = types.ModuleType("comfy_api.latest.ui")
    ui.PreviewText = PreviewText
    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ui, latest.ComfyExtension = io, ui, ComfyExtension
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.latest = latest
    return {"comfy_api": comfy_api, "comfy_api.latest": latest}


# --- comfy.model_management, comfy.utils -----------------------------------------------------------


class InterruptProcessingException(BaseException):
    pass


class ModelManagement(types.ModuleType):
    """comfy.model_management on a CPU-only machine, recording what the nodes ask of it."""

    InterruptProcessingException = InterruptProcessingException

    def __init__(self):
        super().__init__("comfy.model_management")
        self.interrupt_processing = False
        self.load_calls = []  # (models, memory_required, force_full_load)
        self.unloaded = []  # models passed to unload_model_and_clones
        self.torch_device = torch.device("cpu")

    def get_torch_device(self):
        return self.torch_device

    def unet_offload_device(self):
        return torch.device("cpu")

    def intermediate_device(self):
        return torch.device("cpu")

    def intermediate_dtype(self):
        return torch.float32

    def is_device_cpu(self, device):
        return torch.device(device).type == "cpu"

    def unet_dtype(self, device=None, model_params=0, supported_dtypes=(), weight_dtype=None):
        return torch.float32  # what ComfyUI picks on a CPU

    def load_models_gpu(self, models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        self.load_calls.append((list(models), memory_required, force_full_load))
        for patcher in models:
            if self.is_device_cpu(patcher.load_device):  # the stub has no accelerator to move to
                patcher.model.to(patcher.load_device)
            patcher.model.device = patcher.load_device

    def unload_model_and_clones(self, model, unload_additional_models=True, all_devices=False):
        self.unloaded.append(model)

    def interrupt_current_processing(self, value=True):
        self.interrupt_processing = value

    def processing_interrupted(self):
        return self.interrupt_processing

    def throw_exception_if_processing_interrupted(self):
        if self.interrupt_processing:
            self.interrupt_processing = False
            raise InterruptProcessingException()


class LatentFormatSD15:
    """comfy.latent_formats.SD15: what the previewer reads of it."""

    latent_channels = 4


class LatentFormatWan21:
    """comfy.latent_formats.Wan21: the Wan 2.1 VAE's latent statistics and process_in/out, as ComfyUI 0.33 has them."""

    latent_channels = 16
    scale_factor = 1.0
    latents_mean = torch.tensor([-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
                                 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]).view(1, 16, 1, 1, 1)
    latents_std = torch.tensor([2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
                                1.5579, 1.6382, 1.1253, 2.8251, 1.9160]).view(1, 16, 1, 1, 1)

    def process_in(self, latent):
        return (latent - self.latents_mean.to(latent)) * self.scale_factor / self.latents_std.to(latent)

    def process_out(self, latent):
        return latent * self.latents_std.to(latent) / self.scale_factor + self.latents_mean.to(latent)


class RecordingPreviewer:
    """latent_preview's previewer stand-in: the "image" is the latent it was given, recorded."""

    def decode_latent_to_preview_image(self, preview_format, x0):
        return (preview_format, x0.clone())


def get_previewer(device, latent_format):
    """latent_preview.get_previewer: None when the user's preview method is none (get_previewer.method)."""
    return None if get_previewer.method == "none" else RecordingPreviewer()


get_previewer.method = "auto"


class ProgressBar:
    """comfy.utils.ProgressBar; every update is recorded in ``ProgressBar.updates`` (the server's hook)."""

    updates: list[tuple[int, int]] = []

    def __init__(self, total, node_id=None):
        self.total, self.current = total, 0

    previews: list = []  # the preview of every update that had one

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        ProgressBar.updates.append((self.current, self.total))
        if preview is not None:
            ProgressBar.previews.append(preview)

    def update(self, value):
        self.update_absolute(self.current + value, self.total)


# --- comfy.model_patcher, comfy.supported_models, model stand-ins ---------------------------------


class ModelPatcher:
    """The classic ModelPatcher's surface the nodes use; weight patches of type "diff" only."""

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        if getattr(model, "device", None) is None:
            model.device = offload_device
        self.patches = {}
        self.patches_uuid = uuid.uuid4()
        self.clone_base_uuid = uuid.uuid4()

    def clone(self):
        n = ModelPatcher.__new__(ModelPatcher)
        n.model, n.load_device, n.offload_device = self.model, self.load_device, self.offload_device
        n.patches = {key: list(value) for key, value in self.patches.items()}
        n.patches_uuid, n.clone_base_uuid = self.patches_uuid, self.clone_base_uuid
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        state = self.model.state_dict()
        added = [key for key in patches if key in state]
        for key in added:
            self.patches.setdefault(key, []).append((strength_patch, patches[key], strength_model, None, None))
        self.patches_uuid = uuid.uuid4()
        return added

    def model_state_dict(self, filter_prefix=None):
        state = self.model.state_dict()
        return {k: v for k, v in state.items() if filter_prefix is None or k.startswith(filter_prefix)}

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False, return_weight=False, force_cast=False):
        weight = self.model.state_dict()[key]
        if key not in self.patches:
            return weight
        out = weight.to(device=device_to, dtype=torch.float32, copy=True)
        for strength, patch, strength_model, _, _ in self.patches[key]:  # comfy.lora.calculate_weight's order
            if strength_model != 1.0:
                out *= strength_model
            kind, (diff,) = patch
            if kind != "diff":
                raise NotImplementedError(f"the stub applies 'diff' patches only, not {kind!r}")
            out += strength * diff.to(out)
        if not return_weight:
            raise NotImplementedError("the nodes only ask for patched weights, never patch the model")
        return out.to(weight.dtype)


class ModelType(enum.Enum):
    EPS = 1
    V_PREDICTION = 2


class BASE:
    def __init__(self, unet_config):
        self.unet_config = dict(unet_config)


def _supported_models():
    module = types.ModuleType("comfy.supported_models")
    module.BASE = BASE
    module.SD15 = type("SD15", (BASE,), {})
    module.SD20 = type("SD20", (BASE,), {})
    module.SDXL = type("SDXL", (BASE,), {})
    module.SVD_img2vid = type("SVD_img2vid", (BASE,), {})
    module.SD15_instructpix2pix = type("SD15_instructpix2pix", (module.SD15,), {})
    return module


@dataclasses.dataclass
class LatentFormat:
    scale_factor: float = 0.18215


class BaseModel:
    """comfy.model_base.BaseModel as a MODEL's ``.model``: config, type, latent format, LDM state dict."""

    def __init__(self, unet_state: dict[str, torch.Tensor], model_config, model_type=ModelType.EPS):
        self._state = {f"diffusion_model.{key}": value for key, value in unet_state.items()}
        self.model_config, self.model_type, self.latent_format = model_config, model_type, LatentFormat()

    def state_dict(self):
        return dict(self._state)


def stand_in_model(unet_state, config_class: str = "SD15", model_type=ModelType.EPS, **unet_config) -> ModelPatcher:
    """A MODEL as CheckpointLoaderSimple gives it, over an LDM-layout UNet state dict (no ``model.`` prefix)."""
    classes = sys.modules["comfy.supported_models"]
    config = getattr(classes, config_class)({"in_channels": 4, "context_dim": 768, **unet_config})
    cpu = torch.device("cpu")
    return ModelPatcher(BaseModel(unet_state, config, model_type), load_device=cpu, offload_device=cpu)


class StandInCLIP:
    """comfy.sd.CLIP for SD-1: 77-token chunks (start, 75 tokens, end, padded with the end token),
    encoded as a batch and concatenated along the token axis; pooled output of the first chunk."""

    def __init__(self, text_encoder, tokenizer):
        self.text_encoder, self.tokenizer = text_encoder, tokenizer

    def tokenize(self, text, return_word_ids=False):
        tokenizer = self.tokenizer
        ids = tokenizer(text, truncation=False).input_ids[1:-1]
        start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
        chunks = []
        for first in range(0, max(len(ids), 1), 75):
            body = [(token, 1.0, 1) for token in ids[first : first + 75]]
            chunk = [(start, 1.0, 0), *body, (end, 1.0, 0)]
            chunks.append(chunk + [(end, 1.0, 0)] * (77 - len(chunk)))
        if not return_word_ids:
            chunks = [[(token, weight) for token, weight, _ in chunk] for chunk in chunks]
        return {"l": chunks}

    def encode_from_tokens_scheduled(self, tokens):
        ids = torch.tensor([[entry[0] for entry in chunk] for chunk in tokens["l"]])
        with torch.no_grad():
            out = self.text_encoder(ids)
        cond = out.last_hidden_state.reshape(1, -1, out.last_hidden_state.shape[-1]).float()
        return [[cond, {"pooled_output": out.pooler_output[:1].float()}]]

    def decode(self, token_ids, skip_special_tokens=True):
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)


class StandInVAE:
    """comfy.sd.VAE: IMAGE [B, H, W, 3] 0..1 <-> raw latents (posterior mode, no scaling)."""

    def __init__(self, vae):
        self.vae = vae

    def encode(self, pixels):
        with torch.no_grad():
            return self.vae.encode(pixels[..., :3].movedim(-1, 1) * 2 - 1).latent_dist.mode()

    def decode(self, samples):
        with torch.no_grad():
            return ((self.vae.decode(samples).sample + 1) / 2).clamp(0, 1).movedim(1, -1)


class StandInWanCLIP:
    """comfy.sd.CLIP loaded by CLIPLoader (type wan) over a transformers UMT5EncoderModel and tokenizer: ComfyUI's
    umT5 path (comfy/text_encoders/wan.py): the prompt's tokens and end token, padded with 0 to at least 512,
    attention masked past the end token, and the outputs there zeroed (zero_out_masked)."""

    def __init__(self, text_encoder, tokenizer, min_length: int = 512):
        self.text_encoder, self.tokenizer, self.min_length = text_encoder, tokenizer, min_length

    def tokenize(self, text, return_word_ids=False):
        ids = self.tokenizer(text).input_ids
        return {"umt5xxl": [[(token, 1.0) for token in ids + [0] * max(0, self.min_length - len(ids))]]}

    def encode_from_tokens_scheduled(self, tokens):
        [pairs] = tokens["umt5xxl"]
        ids = [token for token, _ in pairs]
        end = ids.index(self.tokenizer.eos_token_id) + 1  # attended up to and including the end token
        mask = (torch.arange(len(ids)) < end).long()[None]
        ids = torch.tensor([ids])
        with torch.no_grad():
            hidden = self.text_encoder(ids, attention_mask=mask).last_hidden_state.float()
        return [[hidden * mask[..., None], {"pooled_output": None}]]


class WanVAE(torch.nn.Module):
    """Named as comfy.ldm.wan.vae's class, the VAE model the LivePhoto-Wan sampler checks for."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae


class StandInWanVAE:
    """comfy.sd.VAE loaded by VAELoader from a Wan 2.1 VAE (over a diffusers AutoencoderKLWan): IMAGE [B, H, W, 3]
    0..1 as B frames -> raw latents [1, 16, F, h, w] (posterior mode, no normalisation) -> [1, F', H, W, 3] 0..1."""

    latent_channels = 16

    def __init__(self, vae):
        self.first_stage_model = WanVAE(vae)

    def encode(self, pixels):
        with torch.no_grad():
            video = pixels[..., :3].movedim(-1, 0).unsqueeze(0) * 2 - 1
            return self.first_stage_model.vae.encode(video).latent_dist.mode()

    def decode(self, samples):
        with torch.no_grad():
            return ((self.first_stage_model.vae.decode(samples).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)


_CLASSIC_DINOV2_NAMES = {
    "attention.q_proj.": "attention.attention.query.",
    "attention.k_proj.": "attention.attention.key.",
    "attention.v_proj.": "attention.attention.value.",
    "attention.o_proj.": "attention.output.dense.",
}


class StandInClipVision:
    """comfy.clip_vision.ClipVisionModel holding a DINOv2: ``model_type`` and ``get_sd()`` in classic names."""

    def __init__(self, dinov2, model_type="dinov2"):
        self.model_type = model_type
        self._state = {}
        for key, value in dinov2.state_dict().items():
            for new, old in _CLASSIC_DINOV2_NAMES.items():
                key = key.replace(new, old)
            self._state[key] = value

    def get_sd(self):
        return dict(self._state)


# --- folder_paths ----------------------------------------------------------------------------------


def _folder_paths(models_dir: Path):
    module = types.ModuleType("folder_paths")
    module.models_dir = str(models_dir)
    module.supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
    module.folder_names_and_paths = {
        name: ([str(models_dir / name)], set(module.supported_pt_extensions)) for name in ("checkpoints", "clip_vision", "loras", "diffusion_models")
    }

    def get_filename_list(folder_name):
        paths, extensions = module.folder_names_and_paths[folder_name]
        found = set()
        for folder in paths:
            for root, _, files in os.walk(folder):
                for name in files:
                    if not extensions or os.path.splitext(name)[1].lower() in extensions:
                        found.add(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
        return sorted(found)

    def get_full_path(folder_name, filename):
        if folder_name not in module.folder_names_and_paths:
            return None
        filename = os.path.relpath(os.path.join("/", filename), "/")
        for folder in module.folder_names_and_paths[folder_name][0]:
            path = os.path.join(folder, filename)
            if os.path.isfile(path):
                return path
        return None

    def get_output_directory():
        return str(models_dir.parent / "output")

    def get_save_image_path(filename_prefix, output_dir, image_width=0, image_height=0):
        """ComfyUI's numbering: the next counter after the highest "<prefix>_<counter>_..." in the folder."""
        subfolder = os.path.dirname(os.path.normpath(filename_prefix))
        filename = os.path.basename(os.path.normpath(filename_prefix))
        full_output_folder = os.path.join(output_dir, subfolder)
        root = os.path.abspath(output_dir)
        if os.path.commonpath((root, os.path.abspath(full_output_folder))) != root:
            raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")
        os.makedirs(full_output_folder, exist_ok=True)
        counters = [0]
        for name in os.listdir(full_output_folder):
            prefix, remainder = name[: len(filename) + 1], name[len(filename) + 1 :]
            if prefix == filename + "_" and remainder.split(".")[0].split("_")[0].isdigit():
                counters.append(int(remainder.split(".")[0].split("_")[0]))
        return full_output_folder, filename, max(counters) + 1, subfolder, filename_prefix

    module.get_filename_list, module.get_full_path = get_filename_list, get_full_path
    module.get_output_directory, module.get_save_image_path = get_output_directory, get_save_image_path
    return module


# --- putting it together ---------------------------------------------------------------------------


@dataclasses.dataclass
class Stubs:
    pack: types.ModuleType  # the pack, imported as ComfyUI imports it
    nodes: dict  # node id -> class, from comfy_entrypoint
    model_management: ModelManagement
    folder_paths: types.ModuleType
    supported_models: types.ModuleType


@contextlib.contextmanager
def stubbed_comfyui(models_dir: Path):
    """Stub modules in sys.modules and the pack imported over them; all removed on exit."""
    models_dir = Path(models_dir)
    management = ModelManagement()
    comfy = types.ModuleType("comfy")
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    patcher = types.ModuleType("comfy.model_patcher")
    patcher.ModelPatcher = ModelPatcher
    supported = _supported_models()
    formats = types.ModuleType("comfy.latent_formats")
    formats.SD15, formats.Wan21 = LatentFormatSD15, LatentFormatWan21
    previews = types.ModuleType("latent_preview")
    previews.get_previewer = get_previewer
    comfy.model_management, comfy.utils, comfy.model_patcher, comfy.supported_models = management, utils, patcher, supported
    comfy.latent_formats = formats
    folders = _folder_paths(models_dir)
    modules = {
        "comfy": comfy, "comfy.model_management": management, "comfy.utils": utils, "comfy.model_patcher": patcher,
        "comfy.supported_models": supported, "comfy.latent_formats": formats, "latent_preview": previews,
        "folder_paths": folders, **_comfy_api_modules(),
    }
    before = set(sys.modules)
    saved = {name: sys.modules[name] for name in modules if name in sys.modules}
    sys.modules.update(modules)
    try:
        pack = import_pack()
        extension = asyncio.run(pack.comfy_entrypoint())
        asyncio.run(extension.on_load())
        nodes = {node.GET_SCHEMA().node_id: node for node in asyncio.run(extension.get_node_list())}
        yield Stubs(pack, nodes, management, folders, supported)
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
        sys.modules.update(saved)


def import_pack(name: str = PACK_NAME) -> types.ModuleType:
    """Import the repository folder as a package, as ComfyUI's load_custom_node does."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- tiny model files for the node tests ----------------------------------------------------------


@dataclasses.dataclass
class TinyFiles:
    base: Path  # a tiny SD-1.5 single file (LDM layout), in models/checkpoints
    unet_ldm: dict  # its UNet, LDM keys without "model.diffusion_model."
    tokenizer_dir: Path
    checkpoint: str  # LivePhoto checkpoint, in models/livephoto
    dinov2: str  # DINOv2 single file, in models/livephoto
    base_unet: torch.nn.Module  # the diffusers UNet the base file was written from


def write_tiny_livephoto_files(models_dir: Path, seed: int = 0) -> TinyFiles:
    """A tiny SD-1.5 file, a LivePhoto checkpoint built on it (its new parts randomized so that they
    act) and the DINOv2 it uses, in a ComfyUI models folder."""
    from livephoto_core.testing.ldm_layout import unet_to_ldm, write_tiny_sd15_file
    from safetensors.torch import save_file
    from livephoto_core.testing.tiny import (
        randomize_,
        tiny_config,
        tiny_dinov2,
        tiny_sd15_models,
        tiny_tokenizer,
        train_livephoto_parts_,
    )

    from livephoto_core.loading.checkpoint import save_livephoto_checkpoint
    from livephoto_core.model import LivePhotoModel

    models_dir = Path(models_dir)
    for folder in ("checkpoints", "livephoto", "clip_vision"):
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
    base = models_dir / "checkpoints" / "tiny_sd15.safetensors"
    written = write_tiny_sd15_file(base, seed)
    dinov2 = tiny_dinov2(seed)
    model = LivePhotoModel.from_base(tiny_config(num_frames=4), tiny_sd15_models(seed).unet, dinov2).eval()
    train_livephoto_parts_(model, seed)
    for name, module in model.unet.motion_unet.named_modules():
        if name.endswith("motion_modules"):
            randomize_(module, seed + 5)
    save_livephoto_checkpoint(model, models_dir / "livephoto" / "tiny_livephoto.safetensors")
    save_file({k: v.contiguous() for k, v in dinov2.state_dict().items()}, str(models_dir / "livephoto" / "dinov2_tiny.safetensors"))
    tokenizer_dir = models_dir.parent / "tokenizer"
    tiny_tokenizer(tokenizer_dir)
    return TinyFiles(
        base=base,
        unet_ldm=unet_to_ldm(written.unet.state_dict(), written.unet.config.layers_per_block),
        tokenizer_dir=tokenizer_dir,
        checkpoint="tiny_livephoto.safetensors",
        dinov2="livephoto/dinov2_tiny.safetensors",
        base_unet=written.unet,
    )


class NodeEnv:
    """The pack over stubs plus tiny models: build ComfyUI-shaped data, run nodes as ComfyUI does."""

    def __init__(self, stubs, files):
        self.stubs, self.files = stubs, files
        from livephoto_core.testing.tiny import tiny_sd15_models
        from transformers import CLIPTokenizer

        self.errors = importlib.import_module(f"{PACK_NAME}.livephoto_core.errors")
        models = tiny_sd15_models(0)
        self.clip = StandInCLIP(models.text_encoder, CLIPTokenizer.from_pretrained(files.tokenizer_dir))
        self.vae = StandInVAE(models.vae)
        self.model = self.stand_in()
        self.handle = self.load()  # one LIVEPHOTO_MODEL for the tests that do not test loading
        self.default_photo = self.photo()
        self.default_reference = self.encode(self.default_photo)

    def stand_in(self, **kwargs):
        return stand_in_model(self.files.unet_ldm, context_dim=64, **kwargs)

    def node(self, node_id):
        return self.stubs.nodes[node_id]

    def run(self, node_id, **inputs):
        """Run a node on single values as ComfyUI does: a node that takes lists (is_input_list) gets each as a
        list of one. A list output (is_output_list) comes back as the list."""
        if self.node(node_id).GET_SCHEMA().is_input_list:
            inputs = {name: [value] for name, value in inputs.items()}
        return self.run_lists(node_id, **inputs)

    def run_lists(self, node_id, **inputs):
        """Run a node on inputs as ComfyUI hands them over (lists, for a node that takes lists)."""
        with torch.inference_mode():
            return self.node(node_id).execute(**inputs)

    def load(self, model=None, **overrides):
        inputs = dict(model=model or self.model, livephoto_checkpoint=self.files.checkpoint, dinov2=self.files.dinov2,
                      motion_module="none", dtype="auto")
        return self.run("LoadLivePhotoModel", **{**inputs, **overrides})[0]

    def photo(self, size=64, batch=1, seed=0):
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randint(0, 256, (batch, size, size, 3), generator=generator, dtype=torch.uint8)
        return pixels.float() / 255  # IMAGE values are k/255, as LoadImage gives them

    def encode(self, image):
        return {"samples": self.vae.encode(image)}

    def text(self, prompt):
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))

    def sample_inputs(self, handle=None) -> dict:
        return dict(
            livephoto_model=handle or self.handle, positive=self.text("the red circle moves left"),
            negative=self.text(""), reference=self.default_reference, photo=self.default_photo, intensity=5, frames=4,
            steps=2, cfg=7.5, seed=3, scheduler="ddim", content_scale=1.0,
        )

    def sample(self, handle=None, **overrides):
        """The sampler's latent output for one photo and one prompt (its list of one video)."""
        [latent] = self.run("LivePhotoSampler", **{**self.sample_inputs(handle), **overrides})[0]
        return latent

    def prior(self, handle=None, **overrides) -> list:
        """Prior Inversion's output: a prior per photo (of the default photo unless `photo` and `reference` are given)."""
        inputs = dict(livephoto_model=handle or self.handle, clip=self.clip, reference=self.default_reference,
                      photo=self.default_photo, intensity=5, steps=2, scheduler="ddim", start=0.033, end=0.016)
        return self.run("LivePhotoPriorInversion", **{**inputs, **overrides})[0]

    def reweight(self, text: str, handle=None) -> list:
        """Text Reweight's conditioning output: one per line of `text`."""
        return self.run("LivePhotoTextReweight", livephoto_model=handle or self.handle, clip=self.clip, text=text)[0]
