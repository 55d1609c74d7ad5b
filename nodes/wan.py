"""LivePhoto-Wan2.1 nodes: Load LivePhoto-Wan Model (the DiT, its LoRA merged) and LivePhoto-Wan Sampler.

ComfyUI's own Wan loader cannot hold this model: comfy.model_base loads weights with strict=False and
comfy/ldm/wan's WanModel has no intensity embedding or text re-weighting, so those keys would be dropped
without a word. The DiT therefore comes from the core's loader (livephoto_core.wan.keys). The text encoder
and the VAE are ComfyUI's: CLIPLoader (type wan, umT5-XXL) + CLIPTextEncode and VAELoader (Wan 2.1 VAE)
compute what the core's umT5 and diffusers AutoencoderKLWan compute on the same weights (measured in
tests/test_comfyui_server.py: embeddings and latents agree to float32 precision; docs/comfyui.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io, ui

from ..livephoto_core.checks import MAX_SEED, check_seed
from ..livephoto_core.errors import InvalidInputError, ModelFileError
from ..livephoto_core.wan import sampling
from ..livephoto_core.wan.defaults import (
    WAN_DEFAULT_ALPHA,
    WAN_DEFAULT_FRAMES,
    WAN_DEFAULT_GUIDANCE,
    WAN_DEFAULT_HEIGHT,
    WAN_DEFAULT_INTENSITY,
    WAN_DEFAULT_STEPS,
    WAN_DEFAULT_WIDTH,
    WAN_FPS,
    WAN_MAX_ALPHA,
    WAN_MAX_INTENSITY,
    WAN_MIN_ALPHA,
    WAN_MIN_INTENSITY,
)
from ..livephoto_core.wan.keys import check_wan_base, load_livephoto_wan
from ..livephoto_core.wan.lora import check_lora_file
from ..livephoto_core.wan.pipeline import (
    SIZE_MULTIPLE,
    SPATIAL_FACTOR,
    TEMPORAL_FACTOR,
    TEXT_LENGTH,
    check_intensity,
    check_lora_alpha,
    check_wan_frames,
    check_wan_size,
)
from .handle import LivePhotoModule
from .loader import file_signature
from .paths import NONE, full_path
from .text import UNSUPPORTED_OPTIONS

LIVEPHOTO_WAN_MODEL = "LIVEPHOTO_WAN_MODEL"
DIT_FOLDER, LORA_FOLDER = "diffusion_models", "loras"  # where ComfyUI's Wan templates put a DiT and a LoRA
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MAX_WAN_FRAMES, MAX_WAN_SIDE, MAX_WAN_STEPS, MAX_WAN_GUIDANCE = 201, 2048, 200, 20.0
FILE_HINT = "the LivePhoto-Wan2.1 base.safetensors from the hub repository shirley430316/LivePhoto-Wan2.1"


@dataclass(eq=False, repr=False)
class WanModelHandle:
    """What flows along a LIVEPHOTO_WAN_MODEL link: the DiT under ComfyUI's memory manager, and its files."""

    patcher: object  # comfy.model_patcher.ModelPatcher around LivePhotoModule(LivePhotoWan)
    settings: dict = field(default_factory=dict)  # dit, lora, lora_alpha, dtype: for the sampler's settings output

    @property
    def model(self):
        return self.patcher.model.livephoto

    def __repr__(self) -> str:  # ComfyUI shows inputs' reprs in error reports
        return f"WanModelHandle({self.settings['dit']}, lora {self.settings['lora']}, {self.model.dtype})"

    def load(self):
        """Have ComfyUI put the DiT on its compute device (evicting others as needed); returns it there.
        Full load: plain torch modules cannot run partially offloaded (that needs comfy.ops layers)."""
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        return self.model


def wan_dtype(choice: str) -> torch.dtype:
    if choice == "auto":
        device = comfy.model_management.get_torch_device()
        return comfy.model_management.unet_dtype(device=device, supported_dtypes=list(DTYPES.values()))
    return DTYPES[choice]


def check_files(base: str, lora: str) -> tuple[str, str | None]:
    """The two paths, checked from their headers (milliseconds): a LivePhoto-Wan DiT and a LoRA for it."""
    base_path = full_path(DIT_FOLDER, base)
    shapes = check_wan_base(base_path, role="'base'")
    lora_path = None if lora == NONE else full_path(LORA_FOLDER, lora)
    if lora_path is not None:
        check_lora_file(lora_path, shapes, role="'lora'")
    return base_path, lora_path


_cache: dict[tuple, WanModelHandle] = {}


class LoadLivePhotoWanModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadLivePhotoWanModel",
            display_name="Load LivePhoto-Wan Model",
            category="LivePhoto",
            description="Loads the authors' LivePhoto-Wan2.1 DiT (Wan2.1-T2V-1.3B with their motion-intensity "
            "embedding and text re-weighting) and merges its image-to-video LoRA. ComfyUI's Load Diffusion Model "
            "would drop the intensity modules; the text encoder and VAE come from ComfyUI's Load CLIP (type wan) "
            "and Load VAE.",
            inputs=[
                io.Combo.Input(
                    "base", options=comfy_files(DIT_FOLDER),
                    tooltip=f"base.safetensors from models/{DIT_FOLDER}: {FILE_HINT}.",
                ),
                io.Combo.Input(
                    "lora", options=[NONE, *comfy_files(LORA_FOLDER)],
                    tooltip=f"lora.safetensors from models/{LORA_FOLDER} (same hub repository): the Pusa "
                    "image-to-video LoRA, merged as W += alpha * B @ A. 'none' runs the base alone.",
                ),
                io.Float.Input(
                    "lora_alpha", default=WAN_DEFAULT_ALPHA, min=WAN_MIN_ALPHA, max=WAN_MAX_ALPHA, step=0.05,
                    round=0.01, tooltip="Strength of the merged LoRA; the authors use 1.2 (their README) to 1.4 "
                    "(their script).",
                ),
                io.Combo.Input(
                    "dtype", options=["auto", *DTYPES], default="auto",
                    tooltip="Precision of the DiT; the authors run bf16. auto picks what ComfyUI picks for a "
                    "diffusion model on this device.",
                ),
            ],
            outputs=[
                io.Custom(LIVEPHOTO_WAN_MODEL).Output(
                    display_name="wan_model", tooltip="The LivePhoto-Wan2.1 DiT, for the LivePhoto-Wan Sampler.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, base: str, lora: str) -> bool | str:
        """The files' kinds before anything runs: an SD-1.5 file, a stock Wan without the LivePhoto modules
        or a LoRA for another model is refused in one line."""
        try:
            check_files(base, lora)
        except (InvalidInputError, ModelFileError) as error:
            return str(error)
        return True

    @classmethod
    def fingerprint_inputs(cls, base: str, lora: str, **other_inputs) -> tuple:
        """Run again when a chosen file is replaced on disk."""
        return tuple(file_signature(_existing(folder, name)) for folder, name in ((DIT_FOLDER, base), (LORA_FOLDER, lora)))

    @classmethod
    def execute(cls, base: str, lora: str, lora_alpha: float, dtype: str) -> io.NodeOutput:
        check_lora_alpha(lora_alpha)
        base_path, lora_path = check_files(base, lora)
        torch_dtype = wan_dtype(dtype)
        key = (file_signature(base_path), file_signature(lora_path), lora_alpha if lora_path else None, torch_dtype)
        if key not in _cache:
            _cache.clear()  # one DiT at a time: free the last before building the next
            model = load_livephoto_wan(base_path, lora_path, lora_alpha, torch_dtype).eval().requires_grad_(False)
            offload = comfy.model_management.unet_offload_device()
            patcher = comfy.model_patcher.ModelPatcher(
                LivePhotoModule(model, offload), load_device=comfy.model_management.get_torch_device(),
                offload_device=offload,
            )
            settings = {"dit": base, "lora": None if lora_path is None else lora,
                        "lora_alpha": lora_alpha if lora_path else None, "dtype": str(torch_dtype).split(".")[-1]}
            _cache[key] = WanModelHandle(patcher, settings)
        return io.NodeOutput(_cache[key])


def comfy_files(folder: str) -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list(folder)


def _existing(folder: str, name: str) -> str | None:
    if name == NONE:
        return None
    try:
        return full_path(folder, name)
    except InvalidInputError:
        return None


def umt5_embeddings(conditioning, text_dim: int, what: str) -> torch.Tensor:
    """The [1, 512, text_dim] umT5 embeddings of a CONDITIONING from CLIPTextEncode with a Wan text encoder.

    ComfyUI's umT5 pads to 512 tokens and zeroes every position past the prompt's end, as the authors' prompter
    does; a shorter tensor (from a node that trims) is padded with zeros the same way."""
    if not isinstance(conditioning, list) or len(conditioning) != 1:
        count = len(conditioning) if isinstance(conditioning, list) else type(conditioning).__name__
        raise InvalidInputError(f"the {what} conditioning holds {count} entries; LivePhoto-Wan takes one prompt: "
                                f"connect a single CLIPTextEncode (no Conditioning Combine)")
    embeddings, options = conditioning[0]
    unsupported = [UNSUPPORTED_OPTIONS[key] for key in UNSUPPORTED_OPTIONS if options.get(key) is not None]
    if unsupported:
        raise InvalidInputError(f"the {what} conditioning carries {' and '.join(unsupported)}, which the "
                                f"LivePhoto-Wan sampler cannot apply; connect the text conditioning directly")
    if embeddings.ndim != 3 or embeddings.shape[0] != 1 or embeddings.shape[2] != text_dim:
        raise InvalidInputError(f"the {what} conditioning has shape {tuple(embeddings.shape)}; LivePhoto-Wan needs "
                                f"umT5 embeddings [1, {TEXT_LENGTH}, {text_dim}]: load umt5_xxl with Load CLIP (type "
                                f"wan) and encode the prompt with CLIPTextEncode")
    if embeddings.shape[1] > TEXT_LENGTH:
        raise InvalidInputError(f"the {what} prompt is {embeddings.shape[1]} umT5 tokens long; LivePhoto-Wan2.1 reads "
                                f"at most {TEXT_LENGTH}: shorten it")
    return torch.nn.functional.pad(embeddings.float(), (0, 0, 0, TEXT_LENGTH - embeddings.shape[1]))


def check_wan_vae(vae) -> None:
    """A Wan 2.1 VAE from Load VAE (16 latent channels); other video VAEs share the shapes but not the latents."""
    model = getattr(vae, "first_stage_model", None)
    if type(model).__name__ != "WanVAE" or getattr(vae, "latent_channels", None) != 16:
        found = type(model).__name__ if model is not None else type(vae).__name__
        channels = getattr(vae, "latent_channels", "?")
        raise InvalidInputError(f"the VAE is a {found} with {channels} latent channels; LivePhoto-Wan2.1 needs the "
                                f"Wan 2.1 VAE (wan_2.1_vae.safetensors) from Load VAE")


def one_photo(image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InvalidInputError(f"the photo input is {shape}; LivePhoto-Wan animates one photo [1, H, W, 3] a run: "
                                f"connect Load Image (one sampler per photo)")
    return image


def resized_photo(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The photo resized to width x height with LANCZOS on its 8-bit pixels, as the core (and the authors)
    resize a photo file; aspect ratio not kept. IMAGE values from Load Image are k/255, so nothing is lost."""
    from PIL import Image

    pixels = np.rint(image[0, ..., :3].float().cpu().numpy() * 255).clip(0, 255).astype(np.uint8)
    resized = Image.fromarray(pixels).resize((width, height), resample=Image.LANCZOS)
    return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255)[None]


class StepProgress:
    """The core sampler's per-step callback: ComfyUI's progress bar, and Cancel within one step."""

    def __init__(self, steps: int):
        self.bar = comfy.utils.ProgressBar(steps)

    def __call__(self, step: int, steps: int) -> None:
        self.bar.update_absolute(step, steps)
        comfy.model_management.throw_exception_if_processing_interrupted()


class LivePhotoWanSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LivePhotoWanSampler",
            display_name="LivePhoto-Wan Sampler",
            category="LivePhoto",
            description="Animates one photo with LivePhoto-Wan2.1 as its authors do: the photo is latent frame 0, "
            "held clean; every other frame is denoised with its own timestep (Pusa), guided three ways (prompt, "
            "negative prompt, intensity). Decodes with the VAE and gives the frames as an IMAGE batch.",
            inputs=[
                io.Custom(LIVEPHOTO_WAN_MODEL).Input("wan_model", tooltip="From Load LivePhoto-Wan Model."),
                io.Conditioning.Input(
                    "positive", tooltip="The motion prompt from CLIPTextEncode with umt5_xxl loaded by Load CLIP "
                    "(type wan). At most 512 umT5 tokens.",
                ),
                io.Conditioning.Input(
                    "negative", tooltip="The negative prompt from CLIPTextEncode with the same text encoder (the "
                    "authors use Wan's standard negative prompt, as the example workflow does).",
                ),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (wan_2.1_vae.safetensors) from Load VAE."),
                io.Image.Input(
                    "photo", tooltip="One photo, from Load Image; it is resized to width x height (aspect ratio not "
                    "kept, as the authors do).",
                ),
                io.Int.Input(
                    "intensity", default=WAN_DEFAULT_INTENSITY, min=WAN_MIN_INTENSITY, max=WAN_MAX_INTENSITY,
                    tooltip="Motion intensity of LivePhoto-Wan2.1: 1 = nearly still, 6 = the most motion (the authors' "
                    "samples use 6). Not the SD-1.5 LivePhoto's 1-10 scale.",
                ),
                io.Int.Input(
                    "frames", default=WAN_DEFAULT_FRAMES, min=5, max=MAX_WAN_FRAMES, step=TEMPORAL_FACTOR,
                    tooltip="Frames to make, 4k + 1 (5, 9, ..., 81): the photo's frame, then 4 per latent frame. "
                    f"{WAN_DEFAULT_FRAMES} at {WAN_FPS} fps is what the model was trained on.",
                ),
                io.Int.Input(
                    "width", default=WAN_DEFAULT_WIDTH, min=SIZE_MULTIPLE, max=MAX_WAN_SIDE, step=SIZE_MULTIPLE,
                    tooltip="Video width, a multiple of 16 (the authors' 832).",
                ),
                io.Int.Input(
                    "height", default=WAN_DEFAULT_HEIGHT, min=SIZE_MULTIPLE, max=MAX_WAN_SIDE, step=SIZE_MULTIPLE,
                    tooltip="Video height, a multiple of 16 (the authors' 480).",
                ),
                io.Int.Input(
                    "steps", default=WAN_DEFAULT_STEPS, min=1, max=MAX_WAN_STEPS,
                    tooltip="Denoising steps (flow matching, shift 5); each runs the DiT three times (once at "
                    "guidance 1).",
                ),
                io.Float.Input(
                    "guidance", default=WAN_DEFAULT_GUIDANCE, min=1.0, max=MAX_WAN_GUIDANCE, step=0.1, round=0.01,
                    tooltip="Scale of both the text guidance and the intensity guidance (the authors' 5); 1 turns "
                    "guidance and the negative prompt off.",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                    tooltip="Seed of the starting noise, drawn on the CPU in float32: the same seed and settings "
                    "give the same video on any device, and the same as the livephoto command line.",
                ),
            ],
            outputs=[
                io.Image.Output(
                    display_name="frames", tooltip="The video as an IMAGE batch (the photo's frame first), for "
                    "Save Animated WEBP or Create Video -> Save Video.",
                ),
                io.Float.Output(
                    display_name="fps", tooltip=f"The playback rate LivePhoto-Wan2.1 was trained at ({WAN_FPS}): "
                    "connect it to the fps of Save Animated WEBP or Create Video.",
                ),
                io.String.Output(
                    display_name="settings", tooltip="What made the video, as JSON (model files, intensity, steps, "
                    "guidance, seed, frames, size, fps, dtype): the fields the command line writes into its videos.",
                ),
            ],
        )

    @classmethod
    def execute(cls, wan_model: WanModelHandle, positive, negative, vae, photo, intensity: int, frames: int,
                width: int, height: int, steps: int, guidance: float, seed: int) -> io.NodeOutput:
        # Every check before any model runs.
        intensity = check_intensity(intensity)
        check_wan_frames(frames)
        check_wan_size(height, width)
        seed = check_seed(seed)
        if not 1 <= steps <= MAX_WAN_STEPS or not 1.0 <= guidance <= MAX_WAN_GUIDANCE:
            raise InvalidInputError(f"steps must be 1 to {MAX_WAN_STEPS} and guidance 1 to {MAX_WAN_GUIDANCE:g}; got "
                                    f"{steps} and {guidance:g}")
        text_dim = wan_model.model.transformer.config.text_dim
        text = umt5_embeddings(positive, text_dim, "positive")
        negative_text = umt5_embeddings(negative, text_dim, "negative")
        check_wan_vae(vae)
        pixels = resized_photo(one_photo(photo), height, width)

        latent_format = comfy.latent_formats.Wan21()
        photo_latent = latent_format.process_in(vae.encode(pixels).float().cpu())
        model = wan_model.load()
        device = next(model.parameters()).device
        shape = (1, photo_latent.shape[1], (frames - 1) // TEMPORAL_FACTOR + 1, height // SPATIAL_FACTOR,
                 width // SPATIAL_FACTOR)
        latents = sampling.initial_latents(photo_latent, shape, seed, model.dtype).to(device)
        latents = sampling.sample(model, latents, text.to(device), negative_text.to(device), intensity, steps=steps,
                                  guidance=guidance, callback=StepProgress(steps))
        video = vae.decode(latent_format.process_out(latents.float().cpu()))
        output = video.reshape(-1, *video.shape[-3:]).to(comfy.model_management.intermediate_device())
        settings = {"model": "LivePhoto-Wan2.1", **wan_model.settings, "intensity": intensity, "steps": steps,
                    "guidance_scale": guidance, "seed": seed, "num_frames": frames, "height": height, "width": width,
                    "fps": WAN_FPS}
        text_settings = json.dumps(settings)
        return io.NodeOutput(output, float(WAN_FPS), text_settings, ui=ui.PreviewText(text_settings))
