"""What is this file? Detection from keys and shapes, and the messages for every wrong kind."""

import json
import os
import pickle
import random

import pytest
import torch
from livephoto_core.testing.ldm_layout import (
    animatediff_positional_encoding,
    motion_adapter_to_original,
    vae_to_ldm,
    write_tiny_sd15_file,
)
from safetensors.torch import save_file
from livephoto_core.testing.tiny import tiny_motion_adapter, tiny_sd15_models

from livephoto_core.errors import ModelFileError
from livephoto_core.loading.detect import (
    FileKind,
    detect_kind,
    detect_path,
    require_kind,
)
from livephoto_core.loading.files import load_state_dict


def _save(path, state, metadata=None):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def _tiny_dinov2_state(registers: int = 0):
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=1, patch_size=14, image_size=28)
    if registers:
        return Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
        ).state_dict()
    return Dinov2Model(Dinov2Config(**common)).state_dict()


def _expect(path, wanted, role, *fragments):
    """require_kind must refuse ``path`` with a one-line message holding every fragment."""
    found = detect_path(path)
    with pytest.raises(ModelFileError) as error:
        require_kind(found, wanted, path, role)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path.name} is ")
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return found


SD15_NEEDS = "--base needs an SD-1.5 checkpoint (.safetensors or a diffusers folder)"


def test_tiny_sd15_is_accepted_and_described(tmp_path):
    path = tmp_path / "tiny.safetensors"
    write_tiny_sd15_file(path)
    found = detect_path(path)
    assert found.kind == "sd15"
    assert found.description == "SD-1.5-style checkpoint (LDM layout, context dim 64)"
    assert found.details["components"] == ["unet", "vae", "text_encoder"]
    assert found.details["context_dim"] == 64 and found.details["in_channels"] == 4
    require_kind(found, "sd15", path, "--base")
    # From the header's shapes (detect_path) or from the tensors: the same answer.
    assert detect_kind(*load_state_dict(path)) == found


def test_full_size_names_from_shapes_alone():
    # Shapes of a real SD-1.5 file's signature keys; detection needs no tensors.
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    }
    assert detect_kind(shapes).description == "SD-1.5 checkpoint (LDM layout)"
    xl = {
        **shapes,
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
        "conditioner.embedders.1.model.positional_embedding": (77, 1280),
    }
    assert detect_kind(xl) == FileKind("sdxl", "SDXL checkpoint (context dim 2048)", detect_kind(xl).details)


def test_sdxl_as_base(tmp_path):
    path = tmp_path / "xl.safetensors"
    write_tiny_sd15_file(
        path,
        cross_attention_dim=2048,
        extra={"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(4)},
    )
    found = _expect(
        path,
        "sd15",
        "--base",
        "xl.safetensors is an SDXL checkpoint (context dim 2048)",
        SD15_NEEDS,
        "LivePhoto is built on SD-1.5",
    )
    assert found.kind == "sdxl"


def test_sd2_as_base(tmp_path):
    path = tmp_path / "v2.safetensors"
    write_tiny_sd15_file(path, cross_attention_dim=1024)
    found = _expect(
        path, "sd15", "--base", "is an SD-2.x checkpoint (context dim 1024)", SD15_NEEDS, "SD-2.x models do not fit"
    )
    assert found.kind == "sd2"


def test_inpainting_as_base(tmp_path):
    path = tmp_path / "inpaint.safetensors"
    write_tiny_sd15_file(path, in_channels=9)
    found = _expect(
        path,
        "sd15",
        "--base",
        "is an SD-1.5 inpainting checkpoint (9 input channels)",
        SD15_NEEDS,
        "not the 9-channel inpainting variant",
    )
    assert found.kind == "sd15_inpaint"


def test_v_prediction_as_base(tmp_path):
    path = tmp_path / "vpred.safetensors"
    write_tiny_sd15_file(path, extra={"v_pred": torch.tensor([])})
    found = _expect(
        path, "sd15", "--base", "is a v-prediction SD-1.5 checkpoint", SD15_NEEDS, "epsilon-prediction SD-1.5"
    )
    assert found.kind == "sd_v_prediction"
    # Without the marker the same weights are plain SD-1.5: nothing else tells the two apart.
    plain = tmp_path / "plain.safetensors"
    write_tiny_sd15_file(plain)
    assert detect_path(plain).kind == "sd15"


@pytest.mark.parametrize(
    "layout,keys",
    [
        (
            "kohya",
            {
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4),
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha": (),
            },
        ),
        (
            "PEFT",
            {
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 768),
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (320, 4),
            },
        ),
    ],
)
def test_lora_as_base(tmp_path, layout, keys):
    path = _save(tmp_path / "style.safetensors", {k: torch.zeros(s) for k, s in keys.items()})
    found = _expect(
        path,
        "sd15",
        "--base",
        f"is a LoRA ({layout} format) for SD-1.5",
        SD15_NEEDS,
        "load the SD-1.5 base with --base and apply the LoRA in ComfyUI with LoraLoader",
    )
    assert found.details == {"format": layout, "base": "SD-1.5"}


def test_vae_only_as_base(tmp_path):
    vae = tiny_sd15_models().vae
    for prefix in ("first_stage_model.", ""):
        path = _save(
            tmp_path / f"vae{prefix[:1]}.safetensors", {prefix + k: v for k, v in vae_to_ldm(vae.state_dict()).items()}
        )
        found = _expect(
            path,
            "sd15",
            "--base",
            "is a VAE-only file (LDM layout)",
            SD15_NEEDS,
            "pass the whole SD-1.5 checkpoint (VAE included) with --base",
        )
        assert found.details == {"layout": "ldm", "latent_channels": 4}


def _write_motion_module(path, max_seq_length=32, mid_block=True):
    adapter = tiny_motion_adapter(max_seq_length=max_seq_length, mid_block=mid_block)
    return _save(path, motion_adapter_to_original(adapter.state_dict(), max_seq_length))


@pytest.mark.parametrize("length,mid,version", [(24, False, "v1"), (32, True, "v2"), (32, False, "v3")])
def test_motion_module_versions_and_as_base(tmp_path, length, mid, version):
    path = _write_motion_module(tmp_path / "mm.safetensors", length, mid)
    found = _expect(
        path,
        "sd15",
        "--base",
        f"is an AnimateDiff motion module {version}",
        SD15_NEEDS,
        "pass it with --motion-module",
    )
    assert found.details["version"] == version and found.details["max_seq_length"] == length
    assert found.details["has_mid_block"] == mid and found.details["block_out_channels"] == [32, 64]
    assert found.details["layout"] == "original"
    require_kind(found, "motion_module", path, "--motion-module")


def test_animatediff_sdxl_beta_from_shapes_alone():
    shapes = {}
    for level, width in enumerate((320, 640, 1280)):
        base = f"down_blocks.{level}.motion_modules.0.temporal_transformer."
        shapes[base + "norm.weight"] = (width,)
        shapes[base + "transformer_blocks.0.attention_blocks.0.pos_encoder.pe"] = (1, 32, width)
    for level, width in enumerate((1280, 640, 320)):
        shapes[f"up_blocks.{level}.motion_modules.0.temporal_transformer.norm.weight"] = (width,)
    found = detect_kind(shapes)
    assert found.kind == "motion_module" and found.details["sdxl"]
    assert found.description == "AnimateDiff SDXL motion module (beta), not for SD-1.5"
    with pytest.raises(
        ModelFileError,
        match=r"mm_sdxl_v10_beta.ckpt is an AnimateDiff SDXL motion module \(beta\), not for "
        r"SD-1.5; --motion-module needs an AnimateDiff SD-1.5 motion module .*use an SD-1.5 motion module instead",
    ):
        require_kind(found, "motion_module", "mm_sdxl_v10_beta.ckpt", "--motion-module")


def test_dinov2_as_base_and_registers_refused(tmp_path):
    path = _save(tmp_path / "dino.safetensors", _tiny_dinov2_state())
    found = _expect(
        path, "sd15", "--base", "is a DINOv2 image encoder (hidden 32, 2 layers)", SD15_NEEDS, "pass it with --dinov2"
    )
    assert found.details["layout"] == "transformers" and found.details["patch_size"] == 14
    require_kind(found, "dinov2", path, "--dinov2")
    registers = _save(tmp_path / "dino_reg.safetensors", _tiny_dinov2_state(registers=4))
    found = _expect(
        registers,
        "dinov2",
        "--dinov2",
        "is a DINOv2 with registers image encoder",
        "DINOv2 with registers is not supported",
    )
    assert found.details["num_register_tokens"] == 4


def test_livephoto_checkpoint_as_base(tmp_path):
    config = json.dumps({"format_version": 1, "frames": 16})
    path = _save(
        tmp_path / "lp.safetensors", {"conv_in.weight": torch.zeros(2, 10, 3, 3)}, {"livephoto_config": config}
    )
    found = _expect(
        path, "sd15", "--base", "is a LivePhoto checkpoint (format 1)", SD15_NEEDS, "pass it with --livephoto"
    )
    assert found.details == {"format_version": 1}
    require_kind(found, "livephoto", path, "--livephoto")


def test_sd15_given_to_other_roles(tmp_path):
    path = tmp_path / "tiny.safetensors"
    write_tiny_sd15_file(path)
    _expect(
        path,
        "motion_module",
        "--motion-module",
        "is an SD-1.5-style checkpoint",
        "--motion-module needs an AnimateDiff SD-1.5 motion module",
        "pass it with --base",
    )
    _expect(path, "dinov2", "--dinov2", "--dinov2 needs a DINOv2 image encoder", "pass it with --base")


def test_other_families_are_named(tmp_path):
    path = _save(tmp_path / "flux.safetensors", {"double_blocks.0.img_attn.norm.key_norm.scale": torch.ones(4)})
    found = _expect(path, "sd15", "--base", "is a Flux model", SD15_NEEDS)
    assert found.kind == "unknown"
    other = _save(tmp_path / "other.safetensors", {"foo.weight": torch.ones(4)})
    _expect(other, "sd15", "--base", "is an unrecognised weights file (1 tensors)", SD15_NEEDS)


def test_unreadable_files_through_detect_path(tmp_path):
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(ModelFileError, match="noise.safetensors is truncated or corrupt"):
        detect_path(noise)
    whole = tmp_path / "whole.safetensors"
    write_tiny_sd15_file(whole)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-1000])
    with pytest.raises(
        ModelFileError,
        match=r"cut.safetensors is truncated or corrupt \(the header describes \d+ bytes but the file has \d+\)",
    ):
        detect_path(cut)

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'code_ran'}",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": {"x": RunsCode()}}))
    with pytest.raises(ModelFileError, match="evil.ckpt contains pickled code .*convert it to .safetensors"):
        detect_path(evil)
    assert not (tmp_path / "code_ran").exists()
    with pytest.raises(ModelFileError, match="does not exist"):
        detect_path(tmp_path / "absent.safetensors")


def test_ckpt_is_detected_like_safetensors(tmp_path):
    path = tmp_path / "mm.safetensors"
    _write_motion_module(path, 24, False)
    ckpt = tmp_path / "mm.ckpt"
    torch.save({"state_dict": load_state_dict(path)[0]}, ckpt)
    assert detect_path(ckpt) == detect_path(path)


# --- folders ---------------------------------------------------------------------------------------


def _diffusers_folder(root, unet_config, scheduler=None):
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **unet_config}))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    if scheduler is not None:
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return root


@pytest.mark.parametrize(
    "unet_config,scheduler,kind,description",
    [
        (
            {"cross_attention_dim": 768, "in_channels": 4},
            {"prediction_type": "epsilon"},
            "sd15",
            "SD-1.5 checkpoint (diffusers layout)",
        ),
        (
            {"cross_attention_dim": 2048, "addition_embed_type": "text_time"},
            None,
            "sdxl",
            "SDXL checkpoint (context dim 2048)",
        ),
        (
            {"cross_attention_dim": 1024, "use_linear_projection": True},
            None,
            "sd2",
            "SD-2.x checkpoint (context dim 1024)",
        ),
        (
            {"cross_attention_dim": 768, "in_channels": 9},
            None,
            "sd15_inpaint",
            "SD-1.5 inpainting checkpoint (9 input channels)",
        ),
        (
            {"cross_attention_dim": 768},
            {"prediction_type": "v_prediction"},
            "sd_v_prediction",
            "v-prediction SD-1.5 checkpoint",
        ),
    ],
)
def test_diffusers_folders(tmp_path, unet_config, scheduler, kind, description):
    folder = _diffusers_folder(tmp_path / "model", unet_config, scheduler)
    found = detect_path(folder)
    assert (found.kind, found.description) == (kind, description)
    if kind != "sd15":
        _expect(folder, "sd15", "--base", description, SD15_NEEDS)


def test_transformers_and_adapter_folders(tmp_path):
    from transformers import Dinov2Config

    dino = tmp_path / "dinov2-large"
    Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16).save_pretrained(dino)
    found = detect_path(dino)
    assert found.kind == "dinov2" and found.description == "DINOv2 ViT-L/14 image encoder (hidden 1024, 24 layers)"
    require_kind(found, "dinov2", dino, "--dinov2")

    adapter = tmp_path / "adapter"
    tiny_motion_adapter(max_seq_length=24, mid_block=False).save_config(adapter)
    found = detect_path(adapter)
    assert (found.kind, found.details["version"]) == ("motion_module", "v1")

    with pytest.raises(
        ModelFileError, match="empty is a folder without model_index.json or config.json; --base needs"
    ):
        (tmp_path / "empty").mkdir()
        require_kind(detect_path(tmp_path / "empty"), "sd15", tmp_path / "empty", "--base")


def test_positional_encoding_helper_is_animatediffs():
    # AnimateDiff's table: sin on even, cos on odd features, position 0 -> (0, 1, 0, 1, ...).
    table = animatediff_positional_encoding(24, 8)
    assert table.shape == (1, 24, 8)
    assert torch.equal(table[0, 0], torch.tensor([0.0, 1.0] * 4))
    assert torch.allclose(table[0, 3, 0], torch.sin(torch.tensor(3.0)))
