"""The LivePhoto-Wan2.1 nodes over stub ComfyUI modules, with the tiny released-layout DiT and LoRA of
tests/fixtures/wan and a tiny umT5 and Wan VAE standing in for ComfyUI's CLIPLoader (type wan) and VAELoader
outputs. That ComfyUI's own umT5 and Wan VAE compute what the stand-ins (and the core) compute is checked
against the real ComfyUI in tests/test_comfyui_server.py."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from comfy_stubs import PACK_NAME, ProgressBar, StandInWanCLIP, StandInWanVAE, stubbed_comfyui
from PIL import Image
from safetensors.torch import load_file, save_file

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "wan"
BASE, LORA = FIXTURES / "tiny_base.safetensors", FIXTURES / "tiny_lora.safetensors"
PROMPT, NEGATIVE = "the red circle moves left", "a square"
SETTINGS = dict(intensity=3, frames=5, width=32, height=32, steps=2, guidance=5.0, seed=1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    from livephoto_core.testing.tiny import tiny_wan_folder

    models = tmp_path_factory.mktemp("comfyui") / "models"
    for folder, source in (("diffusion_models", BASE), ("loras", LORA)):
        (models / folder).mkdir(parents=True)
        shutil.copy(source, models / folder / source.name)
    folder = tiny_wan_folder(tmp_path_factory.mktemp("wan"))
    with stubbed_comfyui(models) as stubs, pytest.MonkeyPatch.context() as patch:
        # The tiny DiT's heads are 12 wide; Wan's are 128 (keys.WAN_HEAD_DIM, read when a file loads).
        patch.setattr(f"{PACK_NAME}.livephoto_core.wan.keys.WAN_HEAD_DIM", 12)
        clip = StandInWanCLIP(UMT5EncoderModel.from_pretrained(folder / "text_encoder").eval(),
                              AutoTokenizer.from_pretrained(folder / "tokenizer"))
        vae = StandInWanVAE(AutoencoderKLWan.from_pretrained(folder / "vae").eval())
        yield type("Env", (), dict(stubs=stubs, folder=folder, models=models, clip=clip, vae=vae))


@pytest.fixture(autouse=True)
def _fresh(env):
    ProgressBar.updates.clear()
    env.stubs.model_management.interrupt_processing = False


def node(env, name):
    return env.stubs.nodes[name]


def load(env, **overrides):
    inputs = dict(base=BASE.name, lora=LORA.name, lora_alpha=1.3, dtype="fp32")
    with torch.inference_mode():
        return node(env, "LoadLivePhotoWanModel").execute(**{**inputs, **overrides})[0]


def text(env, prompt):
    return env.clip.encode_from_tokens_scheduled(env.clip.tokenize(prompt))


def photo_file():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))


def photo_image(image=None):
    return torch.from_numpy(np.asarray(image or photo_file(), dtype=np.float32) / 255)[None]  # as Load Image gives it


def sample(env, model=None, **overrides):
    inputs = dict(wan_model=model or load(env), positive=text(env, PROMPT), negative=text(env, NEGATIVE), vae=env.vae,
                  photo=photo_image(), **SETTINGS)
    with torch.inference_mode():
        return node(env, "LivePhotoWanSampler").execute(**{**inputs, **overrides})


def test_the_two_wan_nodes_are_registered_with_tooltips_everywhere(env):
    for name in ("LoadLivePhotoWanModel", "LivePhotoWanSampler"):
        schema = node(env, name).GET_SCHEMA()
        assert schema.category == "LivePhoto" and schema.description
        assert all(socket.tooltip for socket in [*schema.inputs, *schema.outputs]), name
    base, lora = node(env, "LoadLivePhotoWanModel").GET_SCHEMA().inputs[:2]
    assert base.options["options"] == [BASE.name] and lora.options["options"] == ["none", LORA.name]
    intensity = next(s for s in node(env, "LivePhotoWanSampler").GET_SCHEMA().inputs if s.id == "intensity")
    assert (intensity.options["min"], intensity.options["max"], intensity.options["default"]) == (1, 6, 4)


def test_the_node_makes_the_frames_the_core_pipeline_makes(env):
    """Same files, photo, prompts, seed and settings: the sampler node's frames are animate_wan's."""
    from livephoto_core.wan import keys
    from livephoto_core.wan.pipeline import animate_wan

    frames, fps, settings = sample(env).args
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keys, "WAN_HEAD_DIM", 12)
        core = animate_wan(photo_file(), PROMPT, dit=BASE, base_folder=env.folder, lora=LORA, lora_alpha=1.3,
                           negative_prompt=NEGATIVE, num_frames=5, guidance=5.0, seed=1, steps=2, intensity=3,
                           height=32, width=32, dtype=torch.float32)
    assert frames.shape == core.frames.shape == (5, 32, 32, 3)
    torch.testing.assert_close(frames, core.frames, atol=1e-5, rtol=0)
    assert frames.std() > 0.01  # not a constant clip that would match anything
    assert fps == 25.0
    written = json.loads(settings)
    assert {k: written[k] for k in ("model", "dit", "lora", "lora_alpha", "intensity", "seed", "num_frames", "fps")} == {
        "model": "LivePhoto-Wan2.1", "dit": BASE.name, "lora": LORA.name, "lora_alpha": 1.3, "intensity": 3, "seed": 1,
        "num_frames": 5, "fps": 25}


def test_intensity_and_the_lora_change_the_frames_and_the_loader_reuses_its_model(env):
    model = load(env)
    assert load(env) is model  # same files and settings: no second load
    plain = load(env, lora="none")
    assert plain is not model and plain.settings["lora"] is None
    frames = sample(env, model)[0]
    assert (frames - sample(env, model, intensity=6)[0]).abs().max() > 1e-3
    assert (frames - sample(env, plain)[0]).abs().max() > 1e-3


def write(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


@pytest.mark.parametrize("folder, name, tensors, message", [
    ("diffusion_models", "v1-5.safetensors", lambda: {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(32, 768)},
     r"v1-5.safetensors is an SD-1\.5 .*not a Wan DiT; 'base' needs the LivePhoto-Wan2.1 base.safetensors"),
    ("diffusion_models", "wan2.1_t2v.safetensors", lambda: {
        k: v for k, v in load_file(BASE).items() if not k.startswith(("motion_intensity_embed.", "text_reweight."))},
     "wan2.1_t2v.safetensors is a Wan2.1 DiT without LivePhoto's intensity modules .*a stock Wan model cannot take an "
     "intensity"),
    ("loras", "other_lora.safetensors", lambda: {
        **load_file(LORA), "blocks.7.self_attn.q.lora_A.default.weight": torch.zeros(2, 24),
        "blocks.7.self_attn.q.lora_B.default.weight": torch.zeros(24, 2)},
     r"names blocks\.7\.self_attn\.q\.weight, which the Wan DiT does not have; 'lora' needs the LoRA made for this base"),
])
def test_wrong_files_are_refused_in_one_line_before_anything_runs(env, folder, name, tensors, message):
    write(env.models / folder / name, tensors())
    picked = {"base": BASE.name, "lora": LORA.name, ("base" if folder == "diffusion_models" else "lora"): name}
    answer = node(env, "LoadLivePhotoWanModel").validate_inputs(**picked)
    assert isinstance(answer, str) and "\n" not in answer and re.search(message, answer), answer
    with pytest.raises(env.stubs.pack.livephoto_core.errors.ModelFileError, match=message):
        load(env, **picked)


@pytest.mark.parametrize("change, message", [
    (dict(intensity=7), r"LivePhoto-Wan2.1 takes an intensity from 1 to 6 \(one level for the whole video\); got 7"),
    (dict(intensity=0), "takes an intensity from 1 to 6"),
    (dict(frames=8), r"makes 4k \+ 1 frames \(5, 9, ..., 81\); got 8, try 5"),
    (dict(width=40), "multiples of 16"),
    (dict(photo="two"), r"the photo input is \(2, 40, 48, 3\); LivePhoto-Wan animates one photo"),
    (dict(negative="sd15"), r"the negative conditioning has shape \(1, 77, 64\); LivePhoto-Wan needs umT5 embeddings "
                            r"\[1, 512, 32\]: load umt5_xxl with Load CLIP \(type wan\)"),
    (dict(positive="long"), "the positive prompt is 513 umT5 tokens long; LivePhoto-Wan2.1 reads at most 512: shorten it"),
    (dict(positive="combined"), "the positive conditioning holds 2 entries"),
    (dict(vae="sd15"), r"the VAE is a StandInVAE with \? latent channels; LivePhoto-Wan2.1 needs the Wan 2.1 VAE"),
])
def test_bad_inputs_are_refused_before_the_dit_runs(env, monkeypatch, change, message):
    model = load(env)
    monkeypatch.setattr(model, "load", lambda: pytest.fail("the DiT was loaded before the inputs were checked"))
    inputs = {}
    for name, value in change.items():
        if value == "two":
            value = torch.cat([photo_image(), photo_image()])
        elif value == "sd15" and name == "vae":
            value = type("StandInVAE", (), {})()
        elif value == "sd15":
            value = [[torch.zeros(1, 77, 64), {"pooled_output": torch.zeros(1, 64)}]]
        elif value == "long":
            value = [[torch.zeros(1, 513, 32), {"pooled_output": None}]]
        elif value == "combined":
            value = text(env, PROMPT) + text(env, NEGATIVE)
        inputs[name] = value
    with pytest.raises(env.stubs.pack.livephoto_core.errors.InvalidInputError, match=message):
        sample(env, model, **inputs)


def test_progress_advances_every_step_and_cancel_stops_within_one(env, monkeypatch):
    model = load(env)
    sample(env, model, steps=3)
    assert ProgressBar.updates == [(1, 3), (2, 3), (3, 3)]
    ProgressBar.updates.clear()
    management = env.stubs.model_management
    calls = []
    forward = type(model.model).forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the first step's three passes: press Cancel
            management.interrupt_processing = True
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model.model), "forward", counting)
    with pytest.raises(management.InterruptProcessingException):
        sample(env, model, steps=20)
    assert ProgressBar.updates == [(1, 20)] and len(calls) == 3
    monkeypatch.undo()
    assert sample(env, model)[0].shape[0] == 5  # the model stays usable
