"""The ComfyUI nodes, called as ComfyUI calls them, with ComfyUI-shaped data and stub ComfyUI modules.

IMAGE [B, H, W, 3] in 0..1, LATENT {"samples": raw VAE latents}, CONDITIONING [[tensor, {"pooled_output": ...}]],
a MODEL whose UNet state dict is in ComfyUI's LDM key layout. Node calls run under torch.inference_mode(),
as ComfyUI's executor runs them.
"""

from __future__ import annotations

import importlib
import logging
import sys

import numpy as np
import pytest
import torch
from comfy_stubs import (
    PACK_NAME,
    ModelType,
    NodeEnv,
    ProgressBar,
    StandInClipVision,
    import_pack,
    stand_in_model,
    stubbed_comfyui,
    write_tiny_livephoto_files,
)

LORA_KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
LORA_KEY_DIFFUSERS = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    models = tmp_path_factory.mktemp("comfyui") / "models"
    files = write_tiny_livephoto_files(models)
    with stubbed_comfyui(models) as stubs:
        yield NodeEnv(stubs, files)


@pytest.fixture(autouse=True)
def _fresh_progress(env):
    ProgressBar.updates.clear()
    ProgressBar.previews.clear()
    env.stubs.model_management.interrupt_processing = False


# --- registration ----------------------------------------------------------------------------------


def test_ten_nodes_in_the_livephoto_category_with_a_tooltip_on_every_input_and_output(env):
    assert set(env.stubs.nodes) == {
        "LoadLivePhotoModel", "LivePhotoTextReweight", "LivePhotoPriorInversion", "LivePhotoSampler",
        "LivePhotoEstimateIntensity", "LivePhotoSaveForPhone", "LivePhotoPingPong", "LivePhotoContextWindows",
        "LoadLivePhotoWanModel", "LivePhotoWanSampler",
    }
    for node in env.stubs.nodes.values():
        schema = node.define_schema()
        assert schema.category == "LivePhoto" and schema.description and schema.display_name
        for socket in [*schema.inputs, *schema.outputs]:
            assert socket.tooltip, f"{schema.node_id}.{socket.id or socket.display_name} has no tooltip"


def test_model_folders_are_registered_with_weight_extensions(env):
    folders = env.stubs.folder_paths.folder_names_and_paths
    for name in ("livephoto", "animatediff_models"):
        paths, extensions = folders[name]
        assert str(env.files.base.parent.parent / name) in paths
        assert {".safetensors", ".ckpt"} <= extensions
    # extra_model_paths.yaml creates a name with an empty extension set, which lets any file through.
    folders["livephoto"] = (["/elsewhere/livephoto"], set())
    env.stubs.pack.nodes.paths.register_model_folders()
    paths, extensions = folders["livephoto"]
    assert paths[0] == "/elsewhere/livephoto" and len(paths) == 2 and ".safetensors" in extensions


def test_a_missing_dependency_is_one_log_line_and_no_nodes(env, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # "import diffusers" now raises ImportError
    with caplog.at_level(logging.DEBUG):
        pack = import_pack("livephoto_pack_without_diffusers")
    for name in [n for n in sys.modules if n.startswith("livephoto_pack_without_diffusers")]:
        del sys.modules[name]
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "diffusers" in caplog.records[0].getMessage() and "requirements.txt" in caplog.records[0].getMessage()
    assert pack.NODE_CLASS_MAPPINGS == {} and not hasattr(pack, "comfy_entrypoint")


def test_a_comfyui_without_its_node_api_is_told_to_update_comfyui_not_to_pip_install(env, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "comfy_api.latest", None)  # an old ComfyUI: no comfy_api.latest
    with caplog.at_level(logging.DEBUG):
        pack = import_pack("livephoto_pack_on_old_comfyui")
    for name in [n for n in sys.modules if n.startswith("livephoto_pack_on_old_comfyui")]:
        del sys.modules[name]
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    message = caplog.records[0].getMessage()
    assert "comfy_api" in message and "update ComfyUI" in message and "pip" not in message
    assert pack.NODE_CLASS_MAPPINGS == {}


def test_outside_comfyui_the_pack_registers_nothing_silently(monkeypatch, caplog):
    """pytest imports the repository's __init__.py while collecting; without ComfyUI that must be a no-op."""
    monkeypatch.delitem(sys.modules, "folder_paths", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not p.endswith("ComfyUI")])
    with caplog.at_level(logging.DEBUG):
        pack = import_pack("livephoto_pack_outside_comfyui")
    del sys.modules["livephoto_pack_outside_comfyui"]
    assert pack.NODE_CLASS_MAPPINGS == {} and not caplog.records
    assert not [name for name in sys.modules if name.startswith("livephoto_pack_outside_comfyui.")]


# --- LoadLivePhotoModel ----------------------------------------------------------------------------


def test_the_converted_unet_holds_the_models_weights_and_comfyui_manages_it(env):
    handle = env.load()
    converted = handle.model.unet.motion_unet.state_dict()
    for key, weight in env.files.base_unet.state_dict().items():
        if not key.startswith("conv_in."):  # conv_in is LivePhoto's, widened and trained: from the checkpoint
            assert torch.equal(converted[key], weight), key
    assert type(handle.patcher).__name__ == "ModelPatcher" and handle.patcher.model.livephoto is handle.model
    handle.load(memory_required=123)
    models, memory, full = env.stubs.model_management.load_calls[-1]
    assert models == [handle.patcher] and memory == 123 and full
    # the copy is the model's own: changing it leaves ComfyUI's MODEL alone
    assert converted["conv_out.weight"].data_ptr() != env.model.model_state_dict()["diffusion_model.out.2.weight"].data_ptr()


def test_lora_patches_on_the_model_reach_the_converted_weights(env):
    diff = torch.randn(env.files.unet_ldm[LORA_KEY.removeprefix("diffusion_model.")].shape)
    lora = env.model.clone()
    assert lora.add_patches({LORA_KEY: ("diff", (diff,))}, strength_patch=0.5) == [LORA_KEY]
    plain, patched = env.load(), env.load(lora)
    assert patched is not plain
    plain_weights, patched_weights = plain.model.unet.motion_unet.state_dict(), patched.model.unet.motion_unet.state_dict()
    expected = env.files.base_unet.state_dict()[LORA_KEY_DIFFUSERS] + 0.5 * diff
    torch.testing.assert_close(patched_weights[LORA_KEY_DIFFUSERS], expected)
    assert not torch.allclose(plain_weights[LORA_KEY_DIFFUSERS], patched_weights[LORA_KEY_DIFFUSERS])
    untouched = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert torch.equal(plain_weights[untouched], patched_weights[untouched])
    assert LORA_KEY not in env.model.patches  # the incoming MODEL is never changed


def test_the_loader_reuses_its_conversion_only_for_the_same_model_files_and_dtype(env):
    first = env.load()
    assert env.load() is first
    assert env.load(dtype="bf16") is not first
    assert env.load(dtype="bf16").model.dtype == torch.bfloat16
    other = env.stand_in()  # same weights, but another MODEL object: converted anew
    assert env.load(other) is not first


def test_only_one_unet_on_the_gpu_the_source_model_is_unloaded_first(env, monkeypatch):
    management = env.stubs.model_management
    monkeypatch.setattr(management, "torch_device", torch.device("cuda"))
    source = env.stand_in()  # ComfyUI's output cache keeps the MODEL alive
    handle = env.load(dtype="fp32", model=source)
    handle.load()
    assert management.unloaded[-1] is source
    assert management.load_calls[-1][0] == [handle.patcher]


@pytest.mark.parametrize(
    ("config_class", "unet_config", "model_type", "named"),
    [
        ("SDXL", {"context_dim": 2048, "adm_in_channels": 2816}, ModelType.EPS, "an SDXL model"),
        ("SD20", {"context_dim": 1024}, ModelType.V_PREDICTION, "an SD-2.x model"),
        ("SVD_img2vid", {"context_dim": 1024, "in_channels": 8}, ModelType.V_PREDICTION, "a Stable Video Diffusion model"),
        ("SD15", {"in_channels": 9}, ModelType.EPS, "an SD-1.5 inpainting model"),
        ("SD15", {}, ModelType.V_PREDICTION, "predicts V_PREDICTION"),
    ],
)
def test_a_model_that_is_not_plain_sd15_is_refused_naming_what_it_is(env, config_class, unet_config, model_type, named):
    model = stand_in_model({}, config_class, model_type, **unet_config)
    with pytest.raises(env.errors.InvalidInputError, match="Load Checkpoint") as error:
        env.load(model)
    assert named in str(error.value) and "SD-1.5" in str(error.value)


def test_files_picked_in_the_wrong_widget_are_refused_before_running(env):
    validate = env.node("LoadLivePhotoModel").validate_inputs
    assert validate(env.files.checkpoint, env.files.dinov2, "none") is True
    message = validate("dinov2_tiny.safetensors", env.files.dinov2, "none")
    assert "DINOv2" in message and "'dinov2'" in message and "'livephoto_checkpoint'" in message
    message = validate(env.files.checkpoint, "livephoto/tiny_livephoto.safetensors", "none")
    assert "LivePhoto checkpoint" in message and "'livephoto_checkpoint'" in message
    assert "not in models/livephoto" in validate("missing.safetensors", env.files.dinov2, "none")


def test_a_checkpoint_with_its_own_motion_modules_refuses_an_extra_one(env):
    folder = env.files.base.parent.parent / "animatediff_models"
    folder.mkdir(exist_ok=True)
    (folder / "mm.safetensors").write_bytes((folder.parent / "livephoto" / env.files.checkpoint).read_bytes())
    message = env.node("LoadLivePhotoModel").validate_inputs(env.files.checkpoint, env.files.dinov2, "mm.safetensors")
    assert "carries its own trained motion modules" in message and "'motion_module' to none" in message


def test_dinov2_from_a_clip_vision_gives_the_same_model_as_the_file(env):
    from livephoto_core.testing.tiny import tiny_dinov2

    from_file = env.load()
    from_clip_vision = env.load(dinov2="none", clip_vision=StandInClipVision(tiny_dinov2(0)))
    pixels = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(from_clip_vision.model.encode_content(pixels), from_file.model.encode_content(pixels))


def test_a_clip_vision_that_is_not_dinov2_or_no_dinov2_at_all_is_refused(env):
    from livephoto_core.testing.tiny import tiny_dinov2

    with pytest.raises(env.errors.InvalidInputError, match="needs DINOv2: load a DINOv2 file"):
        env.load(dinov2="none", clip_vision=StandInClipVision(tiny_dinov2(0), model_type="clip_vision_model"))
    with pytest.raises(env.errors.InvalidInputError, match="pick the DINOv2 file .* or connect a Load CLIP Vision"):
        env.load(dinov2="none")


# --- sampler and prior: settings and inputs ---------------------------------------------------------


@pytest.mark.parametrize("intensity", [0, 11])
def test_intensity_outside_1_to_10_is_refused_at_validation_naming_the_range(env, intensity):
    # ComfyUI validates as it runs: the sampler (is_input_list) gets the widget as a list of one, and a
    # link as (None,): judged when it runs.
    for node, value, linked in [("LivePhotoSampler", [intensity], (None,)), ("LivePhotoPriorInversion", intensity, None)]:
        message = env.node(node).validate_inputs(intensity=value)
        assert f"got {intensity}" in message and "from 1 (still) to 10" in message
        assert env.node(node).validate_inputs(intensity=linked) is True
    with pytest.raises(env.errors.InvalidInputError, match="from 1 \\(still\\) to 10"):
        env.sample(intensity=intensity)


def test_settings_fed_by_links_are_checked_when_the_node_runs(env):
    for setting, value, message in [
        ("steps", 0, "steps must be from 1 to 1000; got 0"),
        ("cfg", -1.0, "guidance scale must be from 0 to 100"),
        ("content_scale", 2.5, "content scale must be from 0"),
        ("seed", -1, "seed must be from 0"),
    ]:
        with pytest.raises(env.errors.InvalidInputError, match=message):
            env.sample(**{setting: value})


def windows(env, window_length=0, window_overlap=-1, schedule="static", loop=False):
    return env.run("LivePhotoContextWindows", window_length=window_length, window_overlap=window_overlap,
                   schedule=schedule, loop=loop)[0]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(frames=513), "frames must be from 2 to 512; got 513"),
        (dict(frames=20, windows=dict(window_length=17)), "window length must be from 2 to 16 frames"),
        (dict(frames=20, windows=dict(window_length=4, window_overlap=4)), "window overlap must be from 0 to 3"),
        (dict(frames=4, windows=dict(loop=True)), "a loop needs at least two windows"),
        (dict(frames=8, intensity_schedule="2:0,8:8"), "keyframe at frame 8, beyond the video's last frame (7)"),
        (dict(intensity_schedule="2:3,8:1"), "keyframes must be in order of frame"),
        (dict(intensity_schedule="0:0"), "level 0 is outside 1 (still) to 10"),
    ],
)
def test_frames_windows_and_schedules_that_cannot_work_are_refused_before_sampling(env, settings, message):
    if "windows" in settings:
        settings = {**settings, "windows": windows(env, **settings["windows"])}
    calls = []
    hook = env.handle.model.unet.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(env.errors.InvalidInputError) as caught:
            env.sample(**settings)
    finally:
        hook.remove()
    assert message in str(caught.value) and calls == []


def test_a_long_looped_scheduled_render_runs_window_by_window(env):
    calls = []
    hook = env.handle.model.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    try:
        looped = env.sample(frames=10, steps=2, windows=windows(env, loop=True), intensity_schedule="2:0,9:9")
    finally:
        hook.remove()
    assert looped["samples"].shape == (10, 4, 8, 8)
    assert calls == [4] * 5 * 2  # the checkpoint's 4-frame window, half overlapping: 5 closed windows, 2 steps
    plain = env.sample(frames=10, steps=2, intensity_schedule="2:0,9:9")["samples"]
    assert not torch.equal(plain, looped["samples"])
    constant = env.sample(frames=10, steps=2, intensity=5)["samples"]
    torch.testing.assert_close(env.sample(frames=10, steps=2, intensity_schedule="5")["samples"], constant,
                               atol=0, rtol=0)


def test_a_prior_carries_its_intensity_schedule_to_the_sampler(env):
    [prior] = env.prior(intensity=7, intensity_schedule="3:0,9:5")
    assert prior.intensity == 3  # the inversion ran at frame 0's level
    with_schedule = env.sample(frames=6, steps=2, prior=prior)["samples"]
    torch.testing.assert_close(env.sample(frames=6, steps=2, prior=prior, intensity_schedule="")["samples"],
                               with_schedule, atol=0, rtol=0)  # the prior's schedule wins over the sampler's
    [constant] = env.prior(intensity=3)
    torch.testing.assert_close(constant.prior.inverted, prior.prior.inverted, atol=0, rtol=0)
    assert not torch.equal(env.sample(frames=6, steps=2, prior=constant)["samples"], with_schedule)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda env, inputs: inputs.update(reference={"samples": inputs["reference"]["samples"].repeat(2, 1, 1, 1)}),
         "the photo input holds 1 image but the reference 2 latents; connect VAEEncode of these same photos"),
        (lambda env, inputs: inputs.update(photo=inputs["photo"].repeat(3, 1, 1, 1)),
         "the photo input holds 3 images but the reference 1 latent"),
        (lambda env, inputs: inputs.update(photo=env.photo(68)),
         "68x68 pixels; LivePhoto needs sides that are multiples of 8: scale it to 64x64 with ImageScale"),
        (lambda env, inputs: inputs.update(photo=env.photo(72)),
         "photo is 72x72 pixels but the reference latent is for 64x64: encode this same photo"),
        (lambda env, inputs: inputs.update(reference={"samples": torch.zeros(1, 4, 4, 4)}),
         "latent is for a 32x32 image; .*ImageScale before VAEEncode"),
        (lambda env, inputs: inputs.update(reference={"samples": torch.zeros(1, 4, 2, 8, 8)}),
         "shape \\(1, 4, 2, 8, 8\\); LivePhoto needs one SD-1.5 image latent"),
        (lambda env, inputs: inputs.update(reference={"samples": torch.zeros(1, 16, 8, 8)}),
         "16 channels; .*VAE of the SD-1.5 checkpoint"),
    ],
)
def test_bad_photos_and_latents_are_refused_naming_the_fix(env, change, message):
    photo = env.photo()
    inputs = dict(photo=photo, reference=env.encode(photo))
    change(env, inputs)
    with pytest.raises(env.errors.InvalidInputError, match=message):
        env.sample(**inputs)


def test_a_300_token_prompt_is_refused_by_text_reweight_and_by_the_sampler(env):
    prompt = " ".join(["red circle moves left"] * 75)  # 300 tokens of the tiny vocabulary
    with pytest.raises(env.errors.InvalidInputError, match="300 tokens long; .*at most 75: shorten it"):
        env.run("LivePhotoTextReweight", livephoto_model=env.handle, clip=env.clip, text=prompt)
    plain = env.text(prompt)
    assert plain[0][0].shape[1] == 4 * 77
    with pytest.raises(env.errors.InvalidInputError, match="longer than 75 tokens .*4 chunks of 77.*shorten it"):
        env.sample(positive=plain)


def test_conditioning_the_sampler_cannot_honour_is_refused(env):
    combined = env.text("red") + env.text("blue")
    with pytest.raises(env.errors.InvalidInputError, match="holds 2 entries; .*single CLIPTextEncode"):
        env.sample(positive=combined)
    [[cond, options]] = env.text("red")
    with pytest.raises(env.errors.InvalidInputError, match="carries a ControlNet"):
        env.sample(negative=[[cond, {**options, "control": object()}]])
    with pytest.raises(env.errors.InvalidInputError, match="shape \\(1, 77, 2048\\); .*CLIP of the SD-1.5 checkpoint"):
        env.sample(positive=[[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]])


def test_a_connected_prior_sets_intensity_steps_and_scheduler_and_must_match_model_and_latent(env):
    handle, photo = env.handle, env.default_photo
    reference = env.default_reference
    [prior] = env.prior(handle, intensity=7, scheduler="euler")
    # One place for each setting: the prior's intensity, steps and scheduler win over the sampler's widgets.
    with_prior = dict(photo=photo, reference=reference, prior=prior)
    expected = env.sample(handle, **with_prior, intensity=7, steps=2, scheduler="euler")["samples"]
    for widgets in (dict(intensity=3), dict(steps=9), dict(scheduler="ddim")):
        torch.testing.assert_close(env.sample(handle, **with_prior, **widgets)["samples"], expected, atol=0, rtol=0)
    assert not torch.equal(env.sample(handle, photo=photo, reference=reference, intensity=7, steps=2,
                                      scheduler="euler")["samples"], expected)  # the prior itself is used
    other = env.photo(seed=1)
    with pytest.raises(env.errors.InvalidInputError, match="from another reference latent"):
        env.sample(handle, photo=other, reference=env.encode(other), prior=prior)
    with pytest.raises(env.errors.InvalidInputError, match="another LivePhoto model"):
        env.sample(env.load(dtype="fp32", model=env.stand_in()), photo=photo, reference=reference, prior=prior)


# --- batches: photos and prompts, one video each -----------------------------------------------------


def two_photos(env):
    photos = torch.cat([env.photo(seed=0), env.photo(seed=1)])
    return photos, env.encode(photos)


def test_a_batch_of_photos_gives_a_video_each_as_each_photo_alone_would(env):
    photos, latents = two_photos(env)
    output = env.run("LivePhotoSampler", **{**env.sample_inputs(), "photo": photos, "reference": latents})
    videos, _, labels = output.args
    assert labels == ["video 1: photo 1, prompt 1", "video 2: photo 2, prompt 1"]
    assert output.ui.value == "\n".join(labels)
    for video, photo, latent in zip(videos, photos.split(1), latents["samples"].split(1)):
        alone = env.sample(photo=photo, reference={"samples": latent})["samples"]
        torch.testing.assert_close(video["samples"], alone, atol=0, rtol=0)  # the same seed, as alone
    assert not torch.allclose(videos[0]["samples"], videos[1]["samples"])


def test_prompt_lines_give_a_video_each_named_by_their_words(env):
    reweighted = env.run("LivePhotoTextReweight", livephoto_model=env.handle, clip=env.clip,
                         text="the red circle moves left\n\n  the blue square moves up  \n")
    lines, charts = reweighted.args
    assert len(lines) == len(charts) == 2  # the blank line is skipped
    summaries = [[pair.split(":")[0] for pair in line.split()] for line in reweighted.ui.value.splitlines()]
    assert summaries == [["the", "red", "circle", "moves", "left"], ["the", "blue", "square", "moves", "up"]]
    inputs = {name: [value] for name, value in env.sample_inputs().items()}
    videos, _, labels = env.run_lists("LivePhotoSampler", **{**inputs, "positive": lines}).args
    assert labels == ['video 1: photo 1, prompt 1 "the red circle moves left"',
                      'video 2: photo 1, prompt 2 "the blue square moves up"']
    for video, line in zip(videos, lines):
        torch.testing.assert_close(video["samples"], env.sample(positive=line)["samples"], atol=0, rtol=0)


def test_as_many_photos_as_prompts_pair_photo_k_with_prompt_k(env):
    photos, latents = two_photos(env)
    lines = env.reweight("the red circle moves left\nthe blue square moves up")
    inputs = {name: [value] for name, value in env.sample_inputs().items()}
    videos, _, labels = env.run_lists("LivePhotoSampler", **{**inputs, "positive": lines, "photo": [photos],
                                                             "reference": [latents]}).args
    assert [label.split('"')[0] for label in labels] == ["video 1: photo 1, prompt 1 ", "video 2: photo 2, prompt 2 "]
    second = env.sample(photo=photos[1:], reference={"samples": latents["samples"][1:]}, positive=lines[1])["samples"]
    torch.testing.assert_close(videos[1]["samples"], second, atol=0, rtol=0)


def test_photos_from_a_list_output_are_taken_in_order_as_one_batch(env):
    photos, latents = two_photos(env)
    inputs = {name: [value] for name, value in env.sample_inputs().items()}
    as_list = env.run_lists("LivePhotoSampler", **{**inputs, "photo": list(photos.split(1)),
                                                   "reference": [{"samples": s} for s in latents["samples"].split(1)]})[0]
    as_batch = env.run("LivePhotoSampler", **{**env.sample_inputs(), "photo": photos, "reference": latents})[0]
    for listed, batched in zip(as_list, as_batch, strict=True):
        torch.testing.assert_close(listed["samples"], batched["samples"], atol=0, rtol=0)


def test_photos_and_prompts_that_do_not_pair_up_are_refused_before_sampling(env):
    photos, latents = two_photos(env)
    lines = env.reweight("red\nblue\ngreen")
    inputs = {name: [value] for name, value in env.sample_inputs().items()}
    calls = []
    hook = env.handle.model.unet.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(env.errors.InvalidInputError, match="2 photos and 3 prompts do not pair up: give one photo"):
            env.run_lists("LivePhotoSampler", **{**inputs, "positive": lines, "photo": [photos], "reference": [latents]})
        with pytest.raises(env.errors.InvalidInputError, match="the sampler's negative input holds a list of 3; it takes one negative for all"):
            env.run_lists("LivePhotoSampler", **{**inputs, "negative": lines})
        with pytest.raises(env.errors.InvalidInputError, match="the sampler's seed input holds a list of 2"):
            env.run_lists("LivePhotoSampler", **{**inputs, "seed": [1, 2]})
    finally:
        hook.remove()
    assert calls == []


def test_a_batch_of_photos_gets_a_prior_each_that_must_match_its_photo(env):
    photos, latents = two_photos(env)
    priors = env.prior(photo=photos, reference=latents)
    assert len(priors) == 2 and not torch.equal(priors[0].prior.inverted, priors[1].prior.inverted)
    inputs = {name: [value] for name, value in env.sample_inputs().items()}
    videos = env.run_lists("LivePhotoSampler", **{**inputs, "photo": [photos], "reference": [latents],
                                                  "prior": priors})[0]
    second_latent = {"samples": latents["samples"][1:]}
    [alone] = env.prior(photo=photos[1:], reference=second_latent)
    second = env.sample(photo=photos[1:], reference=second_latent, prior=alone)["samples"]
    torch.testing.assert_close(videos[1]["samples"], second, atol=0, rtol=0)
    with pytest.raises(env.errors.InvalidInputError, match="the prior holds 1 inverted photo but the sampler has 2 "
                                                            "photos; connect the same photos"):
        env.run_lists("LivePhotoSampler", **{**inputs, "photo": [photos], "reference": [latents], "prior": [alone]})
    with pytest.raises(env.errors.InvalidInputError, match="inverted from another reference latent"):
        env.run_lists("LivePhotoSampler", **{**inputs, "photo": [photos], "reference": [latents],
                                             "prior": priors[::-1]})


def test_a_bad_photo_in_a_batch_is_named_by_its_place(env):
    small = env.photo(size=32)
    inputs = {name: [value] for name, value in env.sample_inputs().items()}
    with pytest.raises(env.errors.InvalidInputError, match="^photo 2 of 2: the reference latent is for a 32x32 image"):
        env.run_lists("LivePhotoSampler", **{**inputs, "photo": [env.default_photo, small],
                                             "reference": [env.default_reference, env.encode(small)]})


# --- sampler: output, progress, cancel ---------------------------------------------------------------


def test_the_sampler_gives_raw_latents_with_frames_in_the_batch_axis_and_the_playback_rate(env):
    [latent], fps, videos = env.run("LivePhotoSampler", **{**env.sample_inputs(), "frames": 4}).args
    assert fps == float(env.handle.model.config.fps) and isinstance(fps, float)
    assert videos == ["video 1: photo 1, prompt 1"]  # a plain CLIPTextEncode prompt carries no words
    assert set(latent) == {"samples"}
    assert latent["samples"].shape == (4, 4, 8, 8) and latent["samples"].dtype == torch.float32
    frames = env.vae.decode(latent["samples"])
    assert frames.shape == (4, 64, 64, 3) and 0 <= frames.min() and frames.max() <= 1


def test_plain_clip_text_encode_conditioning_gives_the_same_frames_as_text_reweight(env):
    handle = env.handle
    [reweighted] = env.reweight("the red circle moves left", handle)
    torch.testing.assert_close(env.sample(handle, positive=reweighted)["samples"], env.sample(handle)["samples"])


def test_a_reweighted_conditioning_from_another_model_is_refused(env):
    other = env.load(dtype="fp32", model=env.stand_in())
    [reweighted] = env.reweight("red", other)
    with pytest.raises(env.errors.InvalidInputError, match="reweighted by another LivePhoto model"):
        env.sample(env.handle, positive=reweighted)


def test_ping_pong_plays_the_frames_forward_then_back_without_repeating_the_ends(env):
    frames = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 8, 8, 3)
    (looped,) = env.run("LivePhotoPingPong", frames=frames).args
    assert looped[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 2, 1]
    (two,) = env.run("LivePhotoPingPong", frames=frames[:2]).args
    assert torch.equal(two, frames[:2])  # nothing to come back through


def test_progress_advances_every_step_of_inversion_and_sampling(env):
    handle, photo = env.handle, env.photo()
    env.run(
        "LivePhotoPriorInversion", livephoto_model=handle, clip=env.clip, reference=env.encode(photo), photo=photo,
        intensity=5, steps=3, scheduler="ddim", start=0.033, end=0.016,
    )
    assert ProgressBar.updates == [(1, 3), (2, 3), (3, 3)]
    ProgressBar.updates.clear()
    assert ProgressBar.previews == []  # inversion has no video to show
    env.sample(handle, steps=4)
    assert ProgressBar.updates == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_sampling_previews_the_middle_frame_each_step_unless_previews_are_off(env, monkeypatch):
    latent = env.sample(env.handle, steps=3, frames=4, scheduler="ddim")["samples"]
    assert [fmt for fmt, _ in ProgressBar.previews] == ["JPEG"] * 3
    assert all(x0.shape == (1, 4, 8, 8) for _, x0 in ProgressBar.previews)
    # The last preview is DDIM's clean prediction of the middle frame, in ComfyUI's scaled latent space.
    final = ProgressBar.previews[-1][1][0] / env.handle.latent_scale
    assert (final - latent[2]).abs().mean() < 0.5 * latent[2].abs().mean()
    ProgressBar.previews.clear()
    monkeypatch.setattr(env.stubs.pack.nodes.handle.latent_preview.get_previewer, "method", "none")
    env.sample(env.handle, steps=3)
    assert ProgressBar.previews == []


def test_cancel_stops_within_one_step_and_the_model_stays_usable(env, monkeypatch):
    management = env.stubs.model_management
    handle = env.handle
    expected = env.sample(handle, steps=4)["samples"]

    def press_cancel_after_the_first_step(self, value, total=None, preview=None):
        ProgressBar.updates.append((value, total))
        management.interrupt_current_processing(True)

    ProgressBar.updates.clear()
    with monkeypatch.context() as patch:
        patch.setattr(ProgressBar, "update_absolute", press_cancel_after_the_first_step)
        with pytest.raises(management.InterruptProcessingException):
            env.sample(handle, steps=4)
    assert ProgressBar.updates == [(1, 4)]
    assert not management.processing_interrupted()
    torch.testing.assert_close(env.sample(handle, steps=4)["samples"], expected)


# --- TextReweight and EstimateIntensity --------------------------------------------------------------


def bar_heights(chart: torch.Tensor, count: int) -> list[float]:
    """Read the bars back from a chart image: the blue runs of columns, their height over the plot height."""
    chart_module = importlib.import_module(f"{PACK_NAME}.nodes.chart")
    pixels = (chart.numpy() * 255).round()
    blue = np.all(np.abs(pixels - np.array(chart_module.BAR)) < 2, axis=-1)
    columns = blue.any(axis=0)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], columns.astype(int), [0]])))
    runs = list(zip(edges[::2], edges[1::2]))
    assert len(runs) == count
    plot_height = chart.shape[0] - chart_module.TOP - chart_module.BOTTOM
    return [blue[:, (start + stop) // 2].sum() / plot_height for start, stop in runs]


def test_text_reweight_scales_each_token_and_keeps_the_clip_options(env):
    handle = env.handle
    prompt = "the red circle moves left"
    output = env.run("LivePhotoTextReweight", livephoto_model=handle, clip=env.clip, text=prompt)
    [[[reweighted, options]]], [chart] = output[0], output[1]
    [[plain, plain_options]] = env.text(prompt)
    weights = options["livephoto_token_weights"]
    assert weights.shape == (1, 77) and bool(((weights > 0) & (weights < 1)).all())
    torch.testing.assert_close(reweighted, plain * weights.unsqueeze(-1))  # the paper's re-weighting: e * w
    assert torch.equal(options["pooled_output"], plain_options["pooled_output"])
    assert "livephoto_token_weights" not in plain_options
    labels = output.ui.value.split()
    assert [label.split(":")[0] for label in labels] == prompt.split()
    assert chart.shape[0] == 1 and chart.shape[-1] == 3 and chart.dtype == torch.float32
    np.testing.assert_allclose(bar_heights(chart[0], len(labels)), weights[0, 1:6].numpy(), atol=0.01)


def test_text_reweight_tokenizes_the_prompt_once(env, monkeypatch):
    tokenized = []
    tokenize = env.clip.tokenize
    monkeypatch.setattr(env.clip, "tokenize", lambda *args, **kwargs: tokenized.append(args) or tokenize(*args, **kwargs))
    env.run("LivePhotoTextReweight", livephoto_model=env.handle, clip=env.clip, text="the red circle moves left")
    assert tokenized == [("the red circle moves left",)]


def test_estimate_intensity_matches_skimage_ssim_and_the_models_thresholds(env):
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    generator = np.random.default_rng(0)
    still = generator.random((1, 48, 48, 3))
    frames = np.concatenate([np.clip(still + 0.03 * k * generator.standard_normal(still.shape), 0, 1) for k in range(4)])
    output = env.run("LivePhotoEstimateIntensity", frames=torch.from_numpy(frames).float())
    gray = [rgb2gray(frame) for frame in torch.from_numpy(frames).float().numpy()]
    reference = np.mean([structural_similarity(a, b, data_range=1.0) for a, b in zip(gray, gray[1:])])
    level, mean_ssim = output[0], output[1]
    assert mean_ssim == pytest.approx(reference, abs=1e-5)
    thresholds = env.handle.model.config.intensity_thresholds
    assert level == 10 - sum(t <= reference for t in thresholds)
    assert f"intensity {level} of 10" in output.ui.value
    one_frame = torch.rand(1, 48, 48, 3)
    with pytest.raises(env.errors.InvalidInputError, match="at least 2 frames"):
        env.run("LivePhotoEstimateIntensity", frames=one_frame)
