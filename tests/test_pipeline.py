"""LivePhotoPipeline end to end on a tiny random model."""

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from livephoto_core.testing.tiny import tiny_config, tiny_pipeline

from livephoto_core import offload, render
from livephoto_core.errors import InvalidInputError
from livephoto_core.pipeline import LivePhotoPipeline
from livephoto_core.video import read_metadata, read_video, write_video

PROMPT = "the red circle moves left"


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8))


def run(pipeline, photo, **kwargs):
    settings = dict(prompt=PROMPT, num_frames=4, num_inference_steps=3, seed=7)
    settings.update(kwargs)
    return pipeline(photo, **settings)


def test_same_seed_same_frames_other_seed_other_frames(pipeline, photo):
    first, again, other = run(pipeline, photo), run(pipeline, photo), run(pipeline, photo, seed=8)
    assert first.frames.shape == (4, 64, 64, 3)
    assert first.frames.min() >= 0 and first.frames.max() <= 1
    torch.testing.assert_close(first.frames, again.frames, rtol=0, atol=0)
    assert not torch.allclose(first.frames, other.frames)


def test_output_carries_every_setting_and_what_was_changed(pipeline, photo):
    result = run(pipeline, photo, intensity=8, guidance_scale=4.0, negative_prompt="blurry")
    settings = result.settings
    assert settings["seed"] == 7 and settings["intensity"] == 8 and settings["guidance_scale"] == 4.0
    assert settings["negative_prompt"] == "blurry" and settings["prompt"] == PROMPT
    assert settings["height"] == 64 and settings["num_frames"] == 4 and settings["prior_inversion"] is True
    assert settings["model_hashes"] == {"model": "tiny-random"} and settings["livephoto_version"]
    assert [token for token, _ in result.token_weights] == PROMPT.split()
    assert all(0 <= weight <= 1 for _, weight in result.token_weights)
    assert 1 <= result.intensity.level <= 10 and -1 <= result.intensity.mean_ssim <= 1
    assert result.notes and "96x80" in result.notes[0]  # the 96x80 photo was resized and cropped


def test_settings_change_the_video(pipeline, photo):
    base = run(pipeline, photo)
    for change in (dict(intensity=9), dict(prior_inversion=False), dict(content_scale=0.0), dict(scheduler="euler")):
        assert not torch.allclose(base.frames, run(pipeline, photo, **change).frames), change


def test_a_run_at_another_content_scale_leaves_the_next_run_unchanged(pipeline, photo):
    first = run(pipeline, photo)
    assert not torch.equal(run(pipeline, photo, content_scale=0.0).frames, first.frames)
    # The prior inversion of the next run works at the trained scale, not the one left behind.
    torch.testing.assert_close(run(pipeline, photo).frames, first.frames, rtol=0, atol=0)


@pytest.mark.parametrize("low_memory", [False, True])
def test_two_threads_sharing_one_pipeline_get_the_frames_they_get_one_after_the_other(tmp_path, photo, low_memory):
    pipeline = low_memory_twin(tiny_pipeline(tmp_path / "tokenizer"), low_memory)
    settings = [dict(content_scale=0.0, seed=3), dict(content_scale=1.5, seed=3)]
    serial = [run(pipeline, photo, **kwargs).frames for kwargs in settings]
    together = [None, None]
    start = threading.Barrier(2)

    def render(index):
        start.wait()
        together[index] = run(pipeline, photo, **settings[index]).frames

    threads = [threading.Thread(target=render, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not torch.equal(serial[0], serial[1])
    for alone, shared in zip(serial, together):
        torch.testing.assert_close(shared, alone, rtol=0, atol=0)


@pytest.mark.parametrize("settings", [
    dict(),  # guided, with prior inversion
    dict(num_frames=10, window_length=4, content_scale=0.6),  # windows (3 calls a step), another scale
], ids=["guided+inversion", "windows"])
def test_content_projected_once_a_loop_gives_the_frames_of_projecting_it_every_call(pipeline, photo, monkeypatch,
                                                                                  settings):
    processors = pipeline.model.unet.content_processors()
    projections, unet_calls = [], []
    hooks = [processor.to_k.register_forward_hook(lambda module, args, out: projections.append(args[0].shape[0]))
             for processor in processors]
    hooks.append(pipeline.model.unet.register_forward_hook(lambda module, args, out: unet_calls.append(1)))
    try:
        once = run(pipeline, photo, **settings).frames
        per_loop = list(projections)
        projections.clear()
        unet_calls.clear()
        plain_conditioning = render.build_conditioning
        monkeypatch.setattr(render, "build_conditioning",
                            lambda *args, **kwargs: replace(plain_conditioning(*args, **kwargs), content_kv=None))
        every_call = run(pipeline, photo, **settings).frames
    finally:
        for hook in hooks:
            hook.remove()
    # One row projected per layer in each of the two loops (inversion, sampling), where without the store every
    # layer projects every row of every UNet call.
    assert per_loop == [1] * 2 * len(processors)
    assert len(projections) == len(unet_calls) * len(processors) and 2 in projections
    torch.testing.assert_close(once, every_call, rtol=1e-5, atol=1e-5)


def low_memory_twin(pipeline, low_memory):
    """A pipeline on `pipeline`'s parts (which it takes over) with low-memory mode set or left to choose (None)."""
    return LivePhotoPipeline(pipeline.model, pipeline.vae, pipeline.text_encoder, pipeline.tokenizer,
                             pipeline.scheduler_config, pipeline.model_hashes, low_memory=low_memory)


def test_low_memory_mode_is_chosen_when_a_render_would_not_fit_and_the_output_says_so(tmp_path, photo,
                                                                                      monkeypatch):
    config = tiny_config()
    need = offload.render_bytes(config.num_frames, config.height, config.width, torch.float32)
    monkeypatch.setattr(offload, "free_memory_bytes", lambda device: need)
    roomy = tiny_pipeline(tmp_path / "tokenizer")
    assert not roomy.low_memory and roomy.memory_note is None
    plain = run(roomy, photo)
    assert plain.settings["low_memory"] is False and not any("low-memory" in note for note in plain.notes)

    monkeypatch.setattr(offload, "free_memory_bytes", lambda device: need - 1)
    tight = tiny_pipeline(tmp_path / "tokenizer")  # which leaves the choice to the pipeline
    assert tight.low_memory and all(p.is_meta for p in tight.vae.parameters())  # the VAE waits in a file
    frugal = run(tight, photo)
    assert frugal.settings["low_memory"] is True
    assert [note for note in frugal.notes if "low-memory" in note] == [
        f"low-memory mode chosen: {(need - 1) / 1e9:.1f} GB free on cpu, where a default-mode render of "
        f"{config.num_frames} x {config.height} x {config.width} adds about {need / 1e9:.1f} GB"]
    torch.testing.assert_close(frugal.frames, plain.frames, rtol=0, atol=1e-5)
    # The caller's choice stands whatever the memory.
    assert not low_memory_twin(tiny_pipeline(tmp_path / "tokenizer"), False).low_memory


def test_free_memory_is_read_from_the_kernel_on_the_cpu():
    free = offload.free_memory_bytes(torch.device("cpu"))
    assert free is None or 0 < free <= psutil_total()
    assert offload.free_memory_bytes(torch.device("meta")) is None


def psutil_total() -> int:
    import psutil

    return psutil.virtual_memory().total


def test_without_an_intensity_the_checkpoints_default_is_used(tmp_path, photo):
    pipeline = tiny_pipeline(tmp_path / "tokenizer", tiny_config(default_intensity=8))
    assert run(pipeline, photo, num_inference_steps=1).settings["intensity"] == 8


def test_unguided_run_skips_the_negative_branch(pipeline, photo):
    calls = []
    hook = pipeline.model.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        run(pipeline, photo, guidance_scale=1.0, prior_inversion=False)
    finally:
        hook.remove()
    assert calls == [1, 1, 1]


@pytest.mark.parametrize("suffix", [".webp", ".gif", ".mp4"])
def test_frames_written_and_read_back(pipeline, photo, tmp_path, suffix):
    result = run(pipeline, photo)
    path = write_video(result.frames, tmp_path / f"out{suffix}", fps=8, metadata=result.settings)
    clip = read_video(path)
    assert clip.frames.shape == (4, 64, 64, 3)
    assert read_metadata(path)["seed"] == 7


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(intensity=0), "intensity must be a whole number from 1"),
        (dict(intensity=11), "intensity must be a whole number from 1"),
        (dict(intensity=float("nan")), "intensity"),
        (dict(num_frames=0), "frames must be from 2 to 512"),
        (dict(num_frames=1), "frames must be from 2 to 512"),
        (dict(num_frames=10000), "frames must be from 2 to 512"),
        (dict(num_inference_steps=0), "steps must be from 1"),
        (dict(guidance_scale=-1), "guidance scale must be from 0 to 100"),
        (dict(height=100), "height must be a multiple of 8"),
        (dict(width=63), "width must be a multiple of 8"),
        (dict(content_scale=float("inf")), "content scale must be a finite number"),
        (dict(inversion_start=1.5), "inversion start must be from 0 to 1"),
        (dict(seed=-1), "seed must be from 0"),
        (dict(scheduler="nope"), "unknown scheduler"),
        # Numbers that pass a type check but cannot work:
        (dict(guidance_scale=101), "guidance scale must be from 0 to 100"),
        (dict(guidance_scale=float("inf")), "guidance scale must be a finite number"),
        (dict(guidance_scale=10**400), "guidance scale must be from 0 to 100"),
        (dict(height=0), "height must be a multiple of 8 from 64"),  # not "the model's height"
        (dict(width=0), "width must be a multiple of 8 from 64"),
        (dict(seed=True), "seed must be a number; got True"),
        (dict(num_frames=np.bool_(True)), "frames must be a number"),
        (dict(inversion_end=float("nan")), "inversion end must be a finite number"),
        (dict(decode_chunk_size=2.5), "decode chunk size must be a whole number"),
        # Text that is not UTF-8:
        (dict(prompt="cam\udce9ra zooms in"), "the prompt holds the byte 0xe9.*pass UTF-8 text"),
        (dict(negative_prompt="blur\ud800"), "the negative prompt holds a lone surrogate U\\+D800"),
    ],
)
def test_bad_settings_are_refused_before_any_model_runs(pipeline, photo, kwargs, message):
    calls = []
    hook = pipeline.model.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InvalidInputError, match=message):
            run(pipeline, photo, **kwargs)
    finally:
        hook.remove()
    assert calls == []


def test_numpy_integers_are_taken_as_python_integers_are(pipeline, photo):
    """Every whole-number setting takes numpy integers (as computed from arrays) and gives the same video."""
    numbers = dict(num_frames=2, num_inference_steps=1, seed=5, intensity=6, height=64, width=64, inversion_steps=1)
    plain = run(pipeline, photo, **numbers)
    for integer_type in (np.int64, np.int32, np.uint8):
        typed = run(pipeline, photo, **{name: integer_type(value) for name, value in numbers.items()})
        torch.testing.assert_close(typed.frames, plain.frames, rtol=0, atol=0)
        assert typed.settings == plain.settings  # as Python ints: the settings still go to JSON


@pytest.mark.parametrize("prior_inversion", [True, False])
def test_latents_that_stop_being_finite_end_the_call_in_one_line(pipeline, photo, prior_inversion):
    """A NaN from the UNet (what a too-strong setting or float16 overflow makes) stops the call at that step,
    naming the settings to lower, instead of decoding a black video."""
    hook = pipeline.model.unet.register_forward_hook(lambda module, args, output: output * float("nan"))
    try:
        with pytest.raises(InvalidInputError, match="NaN or infinite at (inversion|sampling) step 1 .*guidance scale"):
            run(pipeline, photo, prior_inversion=prior_inversion)
    finally:
        hook.remove()


def test_long_prompt_is_refused_with_its_length_and_nothing_else(pipeline, photo):
    """Only our refusal: not also the tokenizer's warning that the sequence "will result in indexing errors"."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    try:
        with pytest.raises(InvalidInputError, match="300 tokens long.*at most 75"):
            pipeline(photo, " ".join(["left"] * 300), num_frames=2, num_inference_steps=1)
    finally:
        library.removeHandler(handler)
    assert not [r for r in records if "sequence length" in r.getMessage()]


def test_empty_and_non_ascii_prompts_work(pipeline, photo):
    assert run(pipeline, photo, num_inference_steps=1).frames.shape[0] == 4
    result = pipeline(photo, "", num_frames=2, num_inference_steps=1, seed=1)
    assert result.token_weights == []
    result = pipeline(photo, "cámara 動く →", num_frames=2, num_inference_steps=1, seed=1)
    assert result.frames.shape[0] == 2


def test_a_batch_of_photos_is_refused(pipeline):
    with pytest.raises(InvalidInputError, match="batch of 2"):
        pipeline(torch.rand(2, 64, 64, 3), PROMPT, num_frames=2, num_inference_steps=1)


def test_grayscale_and_rgba_photos_are_converted(pipeline, photo):
    gray = run(pipeline, photo.convert("L"), num_inference_steps=1)
    rgba = run(pipeline, photo.convert("RGBA"), num_inference_steps=1)
    assert gray.frames.shape == rgba.frames.shape == (4, 64, 64, 3)


def test_batch_pairs_photos_and_prompts_by_the_rule_of_the_cli_and_the_nodes(pipeline, photo):
    other = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    settings = dict(num_frames=2, num_inference_steps=1, seed=3)
    each_photo = pipeline.batch([photo, other], [PROMPT], **settings)
    assert [result.settings["prompt"] for result in each_photo] == [PROMPT, PROMPT]
    torch.testing.assert_close(each_photo[1].frames, pipeline(other, PROMPT, **settings).frames, atol=0, rtol=0)
    each_prompt = pipeline.batch([photo], [PROMPT, "the blue square moves up"], **settings)
    assert [result.settings["prompt"] for result in each_prompt] == [PROMPT, "the blue square moves up"]
    pairwise = pipeline.batch([photo, other], [PROMPT, "the blue square moves up"], **settings)
    torch.testing.assert_close(pairwise[1].frames, pipeline(other, "the blue square moves up", **settings).frames,
                               atol=0, rtol=0)
    with pytest.raises(InvalidInputError, match="2 photos and 3 prompts do not pair up: give one photo"):
        pipeline.batch([photo, other], ["a", "b", "c"], **settings)
    with pytest.raises(InvalidInputError, match="prompts must be a list; got str"):
        pipeline.batch([photo], PROMPT)
