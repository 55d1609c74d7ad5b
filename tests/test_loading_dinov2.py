"""DINOv2 from a transformers folder or a single file in any of its key layouts: same outputs."""

import hashlib

import pytest
import torch
from safetensors.torch import load_file, save_file
from livephoto_core.testing.tiny import randomize_

from livephoto_core.errors import ModelFileError
from livephoto_core.loading.dinov2 import load_dinov2


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _tiny(swiglu=False, seed=0):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=1, patch_size=14, image_size=28, use_swiglu_ffn=swiglu
    )
    return randomize_(Dinov2Model(config), seed).eval()


def _facebookresearch(state):
    """transformers 5 keys -> the original facebookresearch/dinov2 .pth keys (fused qkv, ls1.gamma, ...)."""
    top = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    }
    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
            continue
        _, _, index, rest = key.split(".", 3)
        if rest.startswith("attention.q_proj."):
            kind = rest.rsplit(".", 1)[1]
            parts = [state[f"encoder.layer.{index}.attention.{n}_proj.{kind}"] for n in "qkv"]
            out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(parts)
        elif rest.startswith(("attention.k_proj.", "attention.v_proj.")):
            continue
        else:
            rest = (
                rest.replace("attention.o_proj.", "attn.proj.")
                .replace("layer_scale1.lambda1", "ls1.gamma")
                .replace("layer_scale2.lambda1", "ls2.gamma")
            )
            out[f"blocks.{index}.{rest}"] = value
    return out


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))


def _assert_same_outputs(loaded, source, pixels):
    with torch.no_grad():
        expected = source(pixel_values=pixels).last_hidden_state
        assert torch.allclose(loaded.model(pixel_values=pixels).last_hidden_state, expected, atol=1e-5, rtol=0)
        # Another resolution exercises the interpolated position embeddings.
        bigger = torch.nn.functional.interpolate(pixels, size=42)
        assert torch.allclose(
            loaded.model(pixel_values=bigger).last_hidden_state,
            source(pixel_values=bigger).last_hidden_state,
            atol=1e-5,
            rtol=0,
        )


def test_every_layout_gives_the_same_model(tmp_path, pixels):
    source = _tiny()
    folder = tmp_path / "dinov2-tiny"
    source.save_pretrained(folder)
    new_names = source.state_dict()
    # transformers 5 writes the classic Hugging Face names, so its own file is our classic-layout sample.
    classic = load_file(str(folder / "model.safetensors"))
    assert "encoder.layer.0.attention.attention.query.weight" in classic
    files = {
        "transformers5.safetensors": new_names,
        "classic.safetensors": classic,
        "classic_prefixed.safetensors": {"dinov2." + k: v for k, v in classic.items()},
        "model_prefixed.safetensors": {"model." + k: v for k, v in new_names.items()},
        "facebookresearch.safetensors": _facebookresearch(new_names),
    }
    for name, state in [("folder", None), *files.items()]:
        path = folder if state is None else tmp_path / name
        if state is not None:
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        loaded = load_dinov2(path)
        assert (loaded.hidden_size, loaded.patch_size) == (32, 14), name
        assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters()), name
        assert loaded.model.config.image_size == 28 and loaded.model.config.num_attention_heads == 1, name
        _assert_same_outputs(loaded, source, pixels)
    assert loaded.content_hash == hashlib.sha256((tmp_path / "facebookresearch.safetensors").read_bytes()).hexdigest()


def test_swiglu_classic_and_facebookresearch(tmp_path, pixels):
    source = _tiny(swiglu=True, seed=1)
    state = source.state_dict()
    assert "encoder.layer.0.mlp.gate_proj.weight" in state
    # Fused SwiGLU input as the published giant stores it: gate rows first, then value rows.
    classic = {}
    for key, value in state.items():
        if ".mlp.up_proj." in key:
            continue
        if ".mlp.gate_proj." in key:
            classic[key.replace("gate_proj", "weights_in")] = torch.cat(
                [value, state[key.replace("gate_proj", "up_proj")]]
            )
        else:
            classic[key.replace("mlp.down_proj", "mlp.weights_out")] = value
    path = tmp_path / "giant_like.safetensors"
    save_file(classic, str(path))
    loaded = load_dinov2(path)
    assert loaded.model.config.use_swiglu_ffn
    _assert_same_outputs(loaded, source, pixels)

    original = {
        k.replace("mlp.weights_in", "mlp.w12").replace("mlp.weights_out", "mlp.w3"): v
        for k, v in _facebookresearch({**state, **classic}).items()
        if "mlp.gate_proj" not in k and "mlp.up_proj" not in k and "mlp.down_proj" not in k
    }
    path = tmp_path / "dinov2_vitg14_like.pth"
    torch.save(original, path)
    _assert_same_outputs(load_dinov2(path), source, pixels)


def test_folders_load_their_only_fp16_weights_and_a_damaged_folder_is_one_line(tmp_path, pixels):
    source = _tiny()
    folder = tmp_path / "dinov2-fp16"
    source.save_pretrained(folder)
    (folder / "model.safetensors").rename(folder / "model.fp16.safetensors")  # as a variant-only download names it
    _assert_same_outputs(load_dinov2(folder), source, pixels)
    (folder / "model.fp16.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ModelFileError, match=r"^DINOv2 folder dinov2-fp16 cannot be loaded \(.*\); download it again$"):
        load_dinov2(folder)


def test_half_precision(tmp_path):
    path = tmp_path / "dino.safetensors"
    save_file(_tiny().state_dict(), str(path))
    loaded = load_dinov2(path, dtype=torch.float16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float16}


def test_refusals(tmp_path):
    from transformers import (
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        ViTConfig,
        ViTModel,
    )

    registers = Dinov2WithRegistersModel(
        Dinov2WithRegistersConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=1, image_size=28, num_register_tokens=4
        )
    )
    path = tmp_path / "dinov2_reg.safetensors"
    save_file(registers.state_dict(), str(path))
    with pytest.raises(
        ModelFileError,
        match=r"dinov2_reg.safetensors is a DINOv2 with registers image encoder .*--dinov2 needs "
        r"a DINOv2 image encoder .*; DINOv2 with registers is not supported; use a plain DINOv2",
    ):
        load_dinov2(path)
    folder = tmp_path / "dinov2-reg-folder"
    registers.save_pretrained(folder)
    with pytest.raises(ModelFileError, match="DINOv2 with registers is not supported"):
        load_dinov2(folder)

    vit = tmp_path / "vit.safetensors"
    save_file(
        ViTModel(
            ViTConfig(
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=1,
                intermediate_size=64,
                image_size=28,
                patch_size=14,
            ),
            add_pooling_layer=False,
        ).state_dict(),
        str(vit),
    )
    with pytest.raises(
        ModelFileError, match=r"vit.safetensors is a ViT image encoder that is not DINOv2 .*; --dinov2 needs"
    ):
        load_dinov2(vit)
