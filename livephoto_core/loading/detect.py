"""Tell what a weights file or model folder is from its keys and shapes alone.

``detect_path`` reads only a safetensors header (or a folder's config files), so ``livephoto
inspect`` and the early checks of every loader cost milliseconds even for multi-GB files.
``require_kind`` turns a wrong kind into a message that names what was found and what to do.
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelFileError
from ..fileio import check_input_path
from .files import SAFETENSORS_SUFFIXES, check_weight_file, load_state_dict, read_safetensors_header
from .folder_configs import DINOV2, FOLDER_KIND, MODEL_INDEX, MOTION_ADAPTER, SCHEDULER, UNET, VAE, read_config
from .schema import expect_shape, parse_json, read_json_object

KINDS = (
    "sd15",
    "sd15_inpaint",
    "sd2",
    "sdxl",
    "sd_v_prediction",
    "lora",
    "vae",
    "motion_module",
    "dinov2",
    "livephoto",
    "wan_livephoto",
    "wan",
    "unknown",
)

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIXES = ("first_stage_model.", "vae.")
LDM_CLIP_PREFIX = "cond_stage_model.transformer.text_model."
DINOV2_PREFIXES = ("", "dinov2.", "model.")

# Model families LivePhoto cannot use, named by diffusers' own signature keys.
_OTHER_FAMILIES = {
    "controlnet": "ControlNet",
    "sd3": "SD3 model",
    "sd35_large": "SD3.5 Large model",
    "flux": "Flux model",
    "flux2": "Flux.2 model",
    "chroma": "Chroma model",
    "hunyuan-video": "HunyuanVideo model",
    "ltx-video": "LTX-Video model",
    "wan": "Wan video model",
    "hidream": "HiDream model",
    "lumina2": "Lumina 2 model",
    "auraflow": "AuraFlow model",
    "mochi-1-preview": "Mochi model",
    "stable_cascade_stage_c": "Stable Cascade model",
    "stable_cascade_stage_b": "Stable Cascade model",
}
_DINOV2_SIZES = {384: "ViT-S/14", 768: "ViT-B/14", 1024: "ViT-L/14", 1536: "ViT-g/14"}
_LAYOUT_NAMES = {"ldm": "LDM layout", "diffusers": "diffusers layout"}


@dataclass(frozen=True)
class FileKind:
    """What a file is: ``kind`` (one of KINDS), a human ``description``, and the ``details`` seen."""

    kind: str
    description: str
    details: dict[str, Any] = field(default_factory=dict)


Shapes = Mapping[str, tuple[int, ...]]


def detect_kind(state_dict_or_shapes: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> FileKind:
    """Classify a state dict, or a map of key -> shape, by its keys and shapes only."""
    shapes = {key: tuple(getattr(value, "shape", value)) for key, value in state_dict_or_shapes.items()}
    metadata = metadata or {}
    if "livephoto_config" in metadata:
        return _livephoto(metadata["livephoto_config"])
    # Other families last: naming them imports diffusers, which SD and motion files never need.
    for detector in (_lora, _motion_module, _dinov2, _stable_diffusion, _vae, _wan, _other_family):
        found = detector(shapes, metadata)
        if found is not None:
            return found
    return FileKind("unknown", f"unrecognised weights file ({len(shapes)} tensors)", {"num_tensors": len(shapes)})


def detect_path(path: str | os.PathLike) -> FileKind:
    """Classify a weights file (header only for .safetensors) or a diffusers/transformers folder."""
    path = check_input_path(path, "a weights file or a model folder", ModelFileError, folders=True)
    if path.is_dir():
        return _detect_folder(path)
    path = check_weight_file(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        shapes, metadata = read_safetensors_header(path)
    else:
        shapes, metadata = load_state_dict(path)
    try:
        return detect_kind(shapes, metadata)
    except ModelFileError as error:  # a tensor of the wrong shape (expect_shape), which names no file
        raise ModelFileError(f"{path.name}: {error}") from None


# --- single files ----------------------------------------------------------------------------------


def _livephoto(config_json: str) -> FileKind:
    try:
        config = parse_json(config_json, "the LivePhoto config")
    except ModelFileError:
        config = None
    version = config.get("format_version") if isinstance(config, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        return FileKind("livephoto", "LivePhoto checkpoint with an unreadable config", {"format_version": None})
    return FileKind("livephoto", f"LivePhoto checkpoint (format {version})", {"format_version": version})


def _lora(shapes: Shapes, metadata) -> FileKind | None:
    keys = list(shapes)
    if any(".hada_w1_a" in k or ".lokr_w1" in k for k in keys):
        layout = "LyCORIS"
    elif any("lora_up." in k or "lora_down." in k for k in keys):
        layout = "kohya"
    elif any(".lora_A." in k or ".lora_B." in k for k in keys):
        layout = "PEFT"
    elif any("lora.up." in k or "lora.down." in k for k in keys):
        layout = "diffusers"
    else:
        return None
    if any(".motion_modules." in k for k in keys):
        return FileKind("lora", f"AnimateDiff motion LoRA ({layout} format)", {"format": layout, "base": "motion"})
    base = None
    if any(k.startswith("lora_te2_") for k in keys):
        base = "SDXL"
    else:
        # The input width of a cross-attention key projection is the base model's context dim.
        down = re.compile(r"attn2[._](processor[._])?to_k.*(lora_down|lora_A|lora\.down)")
        widths = [shapes[k][-1] for k in keys if down.search(k) and len(shapes[k]) == 2]
        base = {768: "SD-1.5", 1024: "SD-2.x", 2048: "SDXL"}.get(widths[0]) if widths else None
        if base is None and any(re.match(r"(diffusion_model\.)?blocks\.\d+\.(self_attn|cross_attn)\.", k) for k in keys):
            base = "Wan2.1"  # original Wan names (LivePhoto-Wan2.1's lora.safetensors): --wan-lora
    description = f"LoRA ({layout} format)" + (f" for {base}" if base else "")
    if base == "Wan2.1":
        description += " (LivePhoto-Wan2.1's goes to --wan-lora)"
    return FileKind("lora", description, {"format": layout, "base": base})


def _motion_module(shapes: Shapes, metadata) -> FileKind | None:
    if not any(k.startswith("down_blocks.0.motion_modules.") for k in shapes):
        return None
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES

    if CHECKPOINT_KEY_NAMES["animatediff_scribble"] in shapes or CHECKPOINT_KEY_NAMES["animatediff_rgb"] in shapes:
        return FileKind("unknown", "AnimateDiff SparseCtrl ControlNet", {})
    original = any(".temporal_transformer." in k for k in shapes)
    inner = "temporal_transformer." if original else ""
    details = motion_module_structure(shapes, inner)
    details["layout"] = "original" if original else "diffusers"
    widths = details["block_out_channels"]
    if tuple(widths) == (320, 640, 1280) or shapes.get(f"up_blocks.2.motion_modules.0.{inner}norm.weight") == (320,):
        details.update(version="sdxl_beta", sdxl=True)
        return FileKind("motion_module", "AnimateDiff SDXL motion module (beta), not for SD-1.5", details)
    version = _motion_version(details)
    details.update(version=version, sdxl=False)
    description = f"AnimateDiff motion module {version}" + ("" if original else " (diffusers layout)")
    return FileKind("motion_module", description, details)


def motion_module_structure(shapes: Shapes, inner: str) -> dict[str, Any]:
    """Widths, layer counts and positional-encoding length of a motion module's state dict.

    ``inner`` is ``"temporal_transformer."`` for the original AnimateDiff layout, ``""`` for diffusers'.
    """
    widths = []
    while (norm := f"down_blocks.{len(widths)}.motion_modules.0.{inner}norm.weight") in shapes:
        widths.append(expect_shape(shapes, norm, 1)[0])
    layers = len({k.split(".")[3] for k in shapes if k.startswith("down_blocks.0.motion_modules.")})

    def depth(block: str) -> int:  # transformer layers in the block's first motion module
        start = f"{block}.motion_modules.0.{inner}transformer_blocks."
        return len({k[len(start) :].split(".")[0] for k in shapes if k.startswith(start)})

    pe_name = "attention_blocks.0.pos_encoder.pe" if inner else "pos_embed.pe"
    pe = f"down_blocks.0.motion_modules.0.{inner}transformer_blocks.0.{pe_name}"
    return {
        "block_out_channels": widths,
        "layers_per_block": layers,
        "transformer_layers_per_block": depth("down_blocks.0"),
        "mid_transformer_layers_per_block": depth("mid_block"),
        "max_seq_length": expect_shape(shapes, pe, 3)[1] if pe in shapes else None,
        "has_mid_block": any(k.startswith("mid_block.motion_modules.") for k in shapes),
    }


def _dinov2(shapes: Shapes, metadata) -> FileKind | None:
    details = dinov2_structure(shapes)
    if details is None:
        if any(k.startswith("vision_model.embeddings.patch_embedding") for k in shapes):
            return FileKind("unknown", "CLIP vision encoder", {})
        if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in shapes):
            return FileKind("unknown", "ViT image encoder that is not DINOv2 (no layer scale)", {})
        return None
    hidden, layers = details["hidden_size"], details["num_hidden_layers"]
    size = _DINOV2_SIZES.get(hidden) if details["patch_size"] == 14 else None
    name = f"DINOv2 {size}" if size else "DINOv2"
    if details["num_register_tokens"]:
        name += " with registers"
    return FileKind("dinov2", f"{name} image encoder (hidden {hidden}, {layers} layers)", details)


def dinov2_structure(shapes: Shapes) -> dict[str, Any] | None:
    """Size, layout and key prefix of a DINOv2 state dict, or None if it is not one.

    Layouts: "transformers" (``attention.q_proj``, transformers >= 5), "classic" (``attention.attention.query``,
    the published Hugging Face files and ComfyUI's clip_vision), "facebookresearch" (the original .pth).
    """
    for prefix in DINOV2_PREFIXES:
        if f"{prefix}embeddings.cls_token" in shapes and f"{prefix}encoder.layer.0.layer_scale1.lambda1" in shapes:
            layer = f"{prefix}encoder.layer."
            layout = "transformers" if f"{layer}0.attention.q_proj.weight" in shapes else "classic"
            patch, positions = f"{prefix}embeddings.patch_embeddings.projection.weight", f"{prefix}embeddings.position_embeddings"
            registers = f"{prefix}embeddings.register_tokens"
            swiglu = f"{layer}0.mlp.weights_in.weight" in shapes or f"{layer}0.mlp.gate_proj.weight" in shapes
            break
        if f"{prefix}cls_token" in shapes and f"{prefix}blocks.0.ls1.gamma" in shapes:
            layer, layout = f"{prefix}blocks.", "facebookresearch"
            patch, positions, registers = f"{prefix}patch_embed.proj.weight", f"{prefix}pos_embed", f"{prefix}register_tokens"
            swiglu = f"{layer}0.mlp.w12.weight" in shapes
            break
    else:
        return None
    if patch not in shapes or positions not in shapes:
        raise ModelFileError(f"a DINOv2 file holds {patch!r} and {positions!r}; this one lacks them, so it is incomplete")
    hidden, channels, _, patch_size = expect_shape(shapes, patch, 4)  # a Conv2d: [out, in, kh, kw]
    return {
        "layout": layout,
        "prefix": prefix,
        "hidden_size": hidden,
        "num_channels": channels,
        "patch_size": patch_size,
        "num_hidden_layers": len({k[len(layer) :].split(".")[0] for k in shapes if k.startswith(layer)}),
        "num_positions": expect_shape(shapes, positions, 3)[1],  # [1, positions, hidden]
        "use_swiglu_ffn": swiglu,
        "num_register_tokens": expect_shape(shapes, registers, 3)[1] if registers in shapes else 0,
    }


def _wan(shapes: Shapes, metadata) -> FileKind | None:
    """A Wan2.1 DiT in the original layout (no prefix): LivePhoto-Wan2.1's base.safetensors when it has the
    intensity modules, else a stock Wan, which LivePhoto cannot give an intensity."""
    if "patch_embedding.weight" not in shapes or "blocks.0.self_attn.q.weight" not in shapes:
        return None
    dim = expect_shape(shapes, "patch_embedding.weight", 5)[0]
    blocks = 1 + max(int(m.group(1)) for m in (re.match(r"blocks\.(\d+)\.", k) for k in shapes) if m)
    details = {"layout": "original Wan", "dim": dim, "blocks": blocks}
    if "motion_intensity_embed.weight" in shapes and "text_reweight.warmup" in shapes:
        levels = expect_shape(shapes, "motion_intensity_embed.weight", 2)[0]
        details["intensity_levels"] = f"1-{levels - 1} (0: the guidance's null level)"
        return FileKind("wan_livephoto", f"LivePhoto-Wan2.1 DiT ({blocks} blocks, width {dim}; use it with "
                        f"--wan-dit)", details)
    return FileKind("wan", f"Wan2.1 DiT without LivePhoto's intensity modules ({blocks} blocks, width {dim})", details)


def _other_family(shapes: Shapes, metadata) -> FileKind | None:
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES

    for name, description in _OTHER_FAMILIES.items():
        signature = CHECKPOINT_KEY_NAMES[name]
        if any(key in shapes for key in ([signature] if isinstance(signature, str) else signature)):
            return FileKind("unknown", description, {"family": name})
    return None


def _stable_diffusion(shapes: Shapes, metadata) -> FileKind | None:
    v_prediction = "v_pred" in shapes or metadata.get("modelspec.prediction_type") == "v"
    if f"{LDM_UNET_PREFIX}input_blocks.0.0.weight" in shapes or "input_blocks.0.0.weight" in shapes:
        prefix = LDM_UNET_PREFIX if f"{LDM_UNET_PREFIX}input_blocks.0.0.weight" in shapes else ""
        upscaler = f"{prefix}input_blocks.10.0.skip_connection.bias" in shapes
        if upscaler and f"{prefix}input_blocks.11.0.in_layers.0.weight" not in shapes:
            return FileKind("unknown", "SD x4 upscaler", {})
        proj_in = next((s for k, s in shapes.items() if k.startswith(prefix) and k.endswith(".proj_in.weight")), None)
        components = [
            name
            for name, present in (
                ("unet", True),
                ("vae", any(f"{p}encoder.conv_in.weight" in shapes for p in LDM_VAE_PREFIXES)),
                ("text_encoder", f"{LDM_CLIP_PREFIX}embeddings.token_embedding.weight" in shapes),
            )
            if present
        ]
        return classify_unet(
            in_channels=expect_shape(shapes, f"{prefix}input_blocks.0.0.weight", 4)[1],
            context_dim=_context_dim(shapes, prefix),
            sdxl_keys=f"{prefix}label_emb.0.0.weight" in shapes
            or any(k.startswith("conditioner.embedders.") for k in shapes),
            sd2_keys=(proj_in is not None and len(proj_in) == 2)
            or any(k.startswith("cond_stage_model.model.") for k in shapes),
            v_prediction=v_prediction,
            details={"layout": "ldm", "components": components},
            noun="checkpoint" if len(components) > 1 else "UNet",
        )
    controlnet = any(k.startswith("controlnet_") for k in shapes)
    if "conv_in.weight" in shapes and "time_embedding.linear_1.weight" in shapes and not controlnet:
        proj_in = next((s for k, s in shapes.items() if k.endswith(".proj_in.weight")), None)
        return classify_unet(
            in_channels=expect_shape(shapes, "conv_in.weight", 4)[1],
            context_dim=_context_dim(shapes, ""),
            sdxl_keys="add_embedding.linear_1.weight" in shapes,
            sd2_keys=proj_in is not None and len(proj_in) == 2,
            v_prediction=v_prediction,
            details={"layout": "diffusers", "components": ["unet"]},
            noun="UNet",
        )
    return None


def _context_dim(shapes: Shapes, prefix: str) -> int | None:
    """The input width of the first cross-attention key projection (a Linear: [out, in])."""
    key = next((k for k in shapes if k.startswith(prefix) and k.endswith("attn2.to_k.weight")), None)
    return expect_shape(shapes, key, 2)[1] if key is not None else None


def classify_unet(
    in_channels: int,
    context_dim: int | None,
    sdxl_keys: bool,
    sd2_keys: bool,
    v_prediction: bool,
    details: dict[str, Any],
    noun: str = "checkpoint",
) -> FileKind:
    """Name a Stable Diffusion model (``noun``: "checkpoint" or "UNet") from the facts every layout shares."""
    details = {
        **details,
        "in_channels": in_channels,
        "context_dim": context_dim,
        "prediction_type": "v_prediction" if v_prediction else "epsilon",
    }
    layout = _LAYOUT_NAMES[details["layout"]]
    if sdxl_keys or context_dim in (1280, 2048):
        refiner = " refiner" if context_dim == 1280 else ""
        return FileKind("sdxl", f"SDXL{refiner} {noun} (context dim {context_dim})", details)
    if sd2_keys or context_dim == 1024:
        return FileKind("sd2", f"SD-2.x {noun} (context dim {context_dim})", details)
    if in_channels == 9:
        return FileKind("sd15_inpaint", f"SD-1.5 inpainting {noun} (9 input channels)", details)
    if in_channels != 4:
        description = f"SD-1.5-style {noun} with {in_channels} input channels (InstructPix2Pix or similar)"
        return FileKind("unknown", description, details)
    if v_prediction:
        return FileKind("sd_v_prediction", f"v-prediction SD-1.5 {noun}", details)
    if context_dim == 768:
        return FileKind("sd15", f"SD-1.5 {noun} ({layout})", details)
    return FileKind("sd15", f"SD-1.5-style {noun} ({layout}, context dim {context_dim})", details)


def _vae(shapes: Shapes, metadata) -> FileKind | None:
    for prefix in (*LDM_VAE_PREFIXES, ""):
        if f"{prefix}encoder.conv_in.weight" in shapes and f"{prefix}decoder.conv_in.weight" in shapes:
            layout = "diffusers" if f"{prefix}encoder.down_blocks.0.resnets.0.conv1.weight" in shapes else "ldm"
            post_quant = f"{prefix}post_quant_conv.weight"
            latent = expect_shape(shapes, post_quant, 4)[0] if post_quant in shapes else None
            return FileKind(
                "vae", f"VAE-only file ({_LAYOUT_NAMES[layout]})", {"layout": layout, "latent_channels": latent}
            )
    return None


# --- folders ---------------------------------------------------------------------------------------


def _detect_folder(path: Path) -> FileKind:
    if (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file():
        return _diffusers_pipeline(path)
    if (path / "config.json").is_file():
        source = str(path / "config.json")
        config = read_json_object(path / "config.json")
        named = FOLDER_KIND.check(config, source)
        model_type, class_name = named["model_type"], named["_class_name"]
        if model_type in ("dinov2", "dinov2_with_registers"):
            return _dinov2_config(DINOV2.check(config, source))
        if class_name == "MotionAdapter":
            return _motion_adapter_config(MOTION_ADAPTER.check(config, source))
        if class_name == "UNet2DConditionModel":
            return _classify_unet_config(UNET.check(config, source), None, ["unet"], "UNet")
        if class_name == "AutoencoderKL":
            return FileKind(
                "vae",
                "VAE-only folder (diffusers layout)",
                {"layout": "diffusers", "latent_channels": VAE.check(config, source)["latent_channels"]},
            )
        return FileKind("unknown", f"{class_name or model_type or 'unnamed'} model folder", {})
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return FileKind("unknown", "tokenizer folder", {})
    return FileKind("unknown", "folder without model_index.json or config.json", {})


def _diffusers_pipeline(path: Path) -> FileKind:
    if not (path / "unet" / "config.json").is_file():
        index = read_config(path / "model_index.json", MODEL_INDEX)
        return FileKind("unknown", f"diffusers {index['_class_name']} folder without unet/", {})
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler = read_config(scheduler_file, SCHEDULER) if scheduler_file.is_file() else {}
    # A pipeline folder is a whole model even if parts are missing; the loader names what is.
    components = [
        "unet",
        *(name for name in ("vae", "text_encoder", "tokenizer", "scheduler") if (path / name).is_dir()),
    ]
    unet_config = read_config(path / "unet" / "config.json", UNET)
    return _classify_unet_config(unet_config, scheduler.get("prediction_type"), components, "checkpoint")


def _classify_unet_config(
    config: dict[str, Any], prediction_type: str | None, components: list[str], noun: str
) -> FileKind:
    """``config``: checked by folder_configs.UNET."""
    context = config["cross_attention_dim"]
    context = context[0] if isinstance(context, list) else context
    return classify_unet(
        in_channels=config["in_channels"],
        context_dim=context,
        sdxl_keys=config["addition_embed_type"] == "text_time",
        sd2_keys=config["use_linear_projection"],
        v_prediction=prediction_type == "v_prediction",
        details={"layout": "diffusers", "components": components},
        noun=noun,
    )


def _dinov2_config(config: dict[str, Any]) -> FileKind:
    """``config``: checked by folder_configs.DINOV2."""
    hidden, patch = config["hidden_size"], config["patch_size"]
    registers = config["num_register_tokens"] if config["model_type"] == "dinov2_with_registers" else 0
    details = {
        "layout": "transformers folder",
        "prefix": "",
        "hidden_size": hidden,
        "patch_size": patch,
        "num_channels": config["num_channels"],
        "num_hidden_layers": config["num_hidden_layers"],
        "use_swiglu_ffn": config["use_swiglu_ffn"],
        "num_register_tokens": registers,
    }
    size = _DINOV2_SIZES.get(hidden) if patch == 14 else None
    name = (f"DINOv2 {size}" if size else "DINOv2") + (" with registers" if registers else "")
    return FileKind(
        "dinov2", f"{name} image encoder (hidden {hidden}, {details['num_hidden_layers']} layers)", details
    )


def _motion_adapter_config(config: dict[str, Any]) -> FileKind:
    """``config``: checked by folder_configs.MOTION_ADAPTER."""
    widths = config["block_out_channels"]
    details = {
        "layout": "diffusers folder",
        "block_out_channels": widths,
        "max_seq_length": config["motion_max_seq_length"],
        "has_mid_block": config["use_motion_mid_block"],
    }
    if tuple(widths) == (320, 640, 1280):
        details.update(version="sdxl_beta", sdxl=True)
        return FileKind("motion_module", "AnimateDiff SDXL motion module (beta), not for SD-1.5", details)
    version = _motion_version(details)
    details.update(version=version, sdxl=False)
    return FileKind("motion_module", f"AnimateDiff motion module {version} (diffusers folder)", details)


def _motion_version(details: dict[str, Any]) -> str:
    """v1 encodes 24 frames; v2 and v3 encode 32 and differ by v2's mid-block module."""
    if details["max_seq_length"] == 24:
        return "v1"
    return "v2" if details["has_mid_block"] else "v3"


# --- what each role accepts ------------------------------------------------------------------------

_WANTED = {
    "sd15": "an SD-1.5 checkpoint (.safetensors or a diffusers folder)",
    "motion_module": "an AnimateDiff SD-1.5 motion module (v1, v2 or v3; .safetensors or .ckpt)",
    "dinov2": "a DINOv2 image encoder (a transformers folder or a .safetensors)",
    "livephoto": "a LivePhoto checkpoint (.safetensors)",
}
_BASE_HINTS = {
    "sd2": "LivePhoto is built on SD-1.5 (context dim 768) and SD-2.x models do not fit its modules",
    "sdxl": "LivePhoto is built on SD-1.5 (context dim 768) and SDXL models do not fit its modules",
    "sd15_inpaint": "use the plain SD-1.5 model or a fine-tune of it, not the 9-channel inpainting variant",
    "sd_v_prediction": "LivePhoto's modules expect epsilon prediction; use an epsilon-prediction SD-1.5 model",
}


# Where each kind of file goes, in the CLI's words; other front ends pass their own (the nodes: widget names).
CLI_INPUTS = {"sd15": "--base", "motion_module": "--motion-module", "dinov2": "--dinov2", "livephoto": "--livephoto"}


def require_kind(
    found: FileKind, wanted: str, path: str | os.PathLike, role: str, inputs: Mapping[str, str] = CLI_INPUTS
) -> None:
    """Raise ModelFileError unless ``found`` is ``wanted`` (a key of _WANTED) and usable in ``role``.

    ``role`` names the input as the user set it, e.g. ``"--base"``; ``inputs`` names, for each kind of
    file, the input where it belongs (CLI flags by default), so that the hints say where to put it.
    """
    details = found.details
    accepted = found.kind == wanted and not details.get("sdxl") and not details.get("num_register_tokens")
    if accepted:
        return
    hint = _hint(found, wanted, inputs)
    message = f"{Path(path).name} is {with_article(found.description)}; {role} needs {_WANTED[wanted]}"
    raise ModelFileError(message + (f"; {hint}" if hint else ""))


def with_article(description: str) -> str:
    """"SDXL checkpoint" -> "an SDXL checkpoint", "LoRA ..." -> "a LoRA ..." (by sound: SD is "es-dee")."""
    vowel = description[:1].lower() in "aeiou" or description.startswith(("SD", "x", "LTX"))
    return f"{'an' if vowel else 'a'} {description}"


def _hint(found: FileKind, wanted: str, inputs: Mapping[str, str]) -> str | None:
    kind, details = found.kind, found.details
    if kind == "motion_module" and details.get("sdxl"):
        return "use an SD-1.5 motion module instead (mm_sd_v15_v2 or v3_sd15_mm)"
    if kind == "dinov2" and details.get("num_register_tokens"):
        return "DINOv2 with registers is not supported; use a plain DINOv2 (facebook/dinov2-*)"
    if kind == "lora":
        if details.get("base") == "motion":
            return f"motion LoRAs are not supported; pass a full motion module with {inputs['motion_module']}"
        return f"load the SD-1.5 base with {inputs['sd15']} and apply the LoRA in ComfyUI with LoraLoader"
    if kind in _BASE_HINTS:
        if wanted == "sd15":
            return _BASE_HINTS[kind]
        return f"it is a base model; pass an SD-1.5 one with {inputs['sd15']}"
    if kind == "vae" and wanted == "sd15":
        return (
            f"a VAE alone has no UNet or text encoder; pass the whole SD-1.5 checkpoint (VAE included) with "
            f"{inputs['sd15']}"
        )
    if kind in inputs:
        return f"pass it with {inputs[kind]}"
    return None
