"""The benchmarks' machinery at tiny size (so the scripts cannot rot), and the numerics of the speed work."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from livephoto_core.testing.tiny import TINY_UNET, randomize_, tiny_model

from benchmarks import cases, gpu, run
from benchmarks.measure import ForwardTimer, PeakMemory, load
from benchmarks.models import build_components, livephoto_pipeline
from livephoto_core.errors import InvalidInputError
from livephoto_core.modules.unet import conditioning_channels
from livephoto_core.sampling import build_conditioning


def test_peak_memory_sees_a_short_lived_allocation():
    with PeakMemory() as peak:
        block = torch.ones(50_000_000)  # 200 MB, touched
        del block
    assert peak.peak_gb - peak.start_gb > 0.18


def test_forward_timer_counts_outermost_calls_only():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(4, 4)

        def forward(self, x, again=True):
            return self(self.inner(x), again=False) if again else self.inner(x)

    module = Twice()
    with ForwardTimer(module) as timer:
        for _ in range(3):
            module(torch.ones(1, 4))
    assert timer.calls == 3 and timer.seconds > 0
    assert len(timer.call_seconds) == 3 and sum(timer.call_seconds) == pytest.approx(timer.seconds)
    module(torch.ones(1, 4))  # hooks removed on exit
    assert timer.calls == 3


def test_random_components_are_the_same_in_every_build(tmp_path):
    first, again = build_components("tiny", tmp_path / "a"), build_components("tiny", tmp_path / "b")
    for name in ("unet", "adapter", "vae", "text_encoder", "dinov2"):
        left, right = getattr(first, name).state_dict(), getattr(again, name).state_dict()
        assert left.keys() == right.keys()
        assert all(torch.equal(left[key], right[key]) for key in left), name
    assert first.unet.conv_in.weight.std() > 0  # materialised, not left empty


def test_ours_and_diffusers_make_the_same_unet_calls():
    """Like for like: both batch [uncond, cond] x frames into one UNet call per step."""
    settings = {"size": "tiny", "frames": 2, "resolution": 64, "steps": 2, "inversion": False}
    ours = cases.video(impl="ours", **settings)
    theirs = cases.video(impl="diffusers", **settings)
    assert ours["unet_calls"] == theirs["unet_calls"] == 2
    assert len(ours["unet_call_s"]) == len(theirs["unet_call_s"]) == 2  # each call timed on its own
    assert ours["finite"] and theirs["finite"]
    assert ours["peak_gb"] >= ours["resident_before_gb"] * 0.9
    inverted = cases.video(impl="ours", **{**settings, "inversion": True})
    assert inverted["unet_calls"] == len(inverted["unet_call_s"]) == 4


def test_overhead_case_accounts_for_the_unet_calls():
    result = cases.overhead("tiny", steps=2, frames=2, repeats=1)
    assert result["unet_calls"] == 4  # 2 inversion steps + 2 guided sampling steps
    assert 0 < result["unet_s"] <= result["loop_s"] <= result["wall_s"]
    assert result["vae_decoder_s"] > 0 and result["content_encoder_s"] > 0


def test_runner_prints_a_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "figures.json"
    assert run.main(["overhead", "--repeats", "1", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["results"]["overhead"]["tiny"]["unet_calls"] == 4
    assert report["machine"]["cores"] >= 1 and report["date"]
    assert "loop overhead" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run.main(["nonsense"])


def in_process(case: str, need_gb: float = 0.0, threads: int | None = None, **kwargs) -> dict:
    """run.run_case without the subprocess: the same figures, for the runner's bookkeeping."""
    return {**cases.CASES[case](**kwargs), "load_before": load()}


def test_runner_ratios_are_the_medians_of_ours_over_diffusers(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "run_case", in_process)
    path = tmp_path / "figures.json"
    run.main(["diffusers", "memory", "--size", "tiny", "--frames", "2", "--resolution", "64", "--dtypes", "float32",
              "--repeats", "2", "--json", str(path)])
    results = json.loads(path.read_text())["results"]
    runs = results["diffusers"]["runs"]
    assert set(runs) == {"diffusers float32", "ours float32", "ours+inversion float32"}
    assert all(len(videos) == 2 for videos in runs.values())
    for key in ("ours float32", "ours+inversion float32"):
        ratios = results["diffusers"]["ratios"][key]
        walls = [np.median([r["wall_s"] for r in runs[name]]) for name in (key, "diffusers float32")]
        peaks = [np.median([r["peak_gb"] for r in runs[name]]) for name in (key, "diffusers float32")]
        assert ratios["time_ratio"] == pytest.approx(walls[0] / walls[1])
        assert ratios["peak_ratio"] == pytest.approx(peaks[0] / peaks[1])
    assert results["memory"]["low-memory mode"]["low_memory"] and not results["memory"]["default"]["low_memory"]
    table = capsys.readouterr().out
    assert "time ratio" in table and "low-memory mode: peak RSS" in table


def test_runner_interleaves_the_variants_asked_for_and_pairs_each_repeat(tmp_path, monkeypatch, capsys):
    order = []

    def recorded(case, need_gb=0.0, threads=None, **kwargs):
        order.append(kwargs["impl"] + ("+inversion" if kwargs["inversion"] else ""))
        return {**in_process(case, **kwargs), "load_before": {"load_1m": len(order)}}

    monkeypatch.setattr(run, "run_case", recorded)
    path = tmp_path / "figures.json"
    run.main(["diffusers", "--size", "tiny", "--frames", "2", "--resolution", "64", "--dtypes", "float32",
              "--variants", "ours", "diffusers", "--repeats", "3", "--json", str(path)])
    assert order == ["ours", "diffusers"] * 3
    results = json.loads(path.read_text())["results"]["diffusers"]
    runs, pairs = results["runs"], results["pairs"]["ours float32"]
    assert len(pairs) == 3
    for index, pair in enumerate(pairs):
        ours, theirs = runs["ours float32"][index], runs["diffusers float32"][index]
        assert pair["time_ratio"] == pytest.approx(ours["wall_s"] / theirs["wall_s"])
        assert pair["cpu_ratio"] == pytest.approx(ours["cpu_s"] / theirs["cpu_s"])
        assert pair["load"] == f"{2 * index + 1} / {2 * index + 2}"
    assert "pair 3: wall / CPU / UNet / peak ratio" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run.main(["diffusers", "--variants", "ours"])


@pytest.mark.slow
def test_runner_measures_training_and_startup(tmp_path, capsys):
    path = tmp_path / "figures.json"
    run.main(["training", "startup", "--threads", "1", "--json", str(path)])
    results = json.loads(path.read_text())["results"]
    training = results["training"]
    assert training["clips_per_s"] == pytest.approx(training["batch_size"] / training["s_per_step"], rel=0.5)
    assert results["startup"]["python -m livephoto_core.cli --help"]["median_s"] > 0
    assert "wall_s" in results["startup"]["demo"], results["startup"]["demo"]
    assert "livephoto animate" in capsys.readouterr().out


def test_profile_case_times_each_variant_and_shares_sum_to_one():
    result = cases.profile("tiny", frames=2, resolution=64, rounds=1)
    assert set(result["seconds"]) == {"per-video context", "per-frame context", "content branch off"}
    assert all(seconds > 0 for seconds in result["seconds"].values())
    assert sum(result["op_share"].values()) == pytest.approx(1)
    assert result["op_share"]["convolution"] > 0 and result["op_share"]["attention (SDPA)"] > 0


def test_gpu_script_runs_on_the_cpu_at_tiny_size(tmp_path):
    report = gpu.main(["--device", "cpu", "--size", "tiny", "--frames", "2", "--resolution", "64", "--steps", "2",
                       "--repeats", "1", "--configs", "float32+contiguous", "float32+contiguous+low_memory",
                       "--json", str(tmp_path / "gpu.json")])
    first, second = report["results"]
    assert first["finite"] and second["finite"] and first["seconds_per_video"] > 0
    assert second["low_memory"] and not second["channels_last"] and "video_flops" in second
    # A video runs the guided UNet call once per step, plus inversion, VAE and DINOv2.
    assert first["video_flops"] > 2 * first["unet_call_flops"] > 0
    assert json.loads((tmp_path / "gpu.json").read_text())["results"][0]["name"] == "float32+contiguous"
    with pytest.raises(ValueError, match="bad configuration"):
        gpu.parse_config("float16+turbo")


@pytest.mark.slow
def test_gpu_script_compiles_on_the_cpu(tmp_path):
    report = gpu.main(["--device", "cpu", "--size", "tiny", "--frames", "2", "--resolution", "64", "--steps", "1",
                       "--repeats", "1", "--configs", "float32+contiguous+compile",
                       "--json", str(tmp_path / "gpu.json")])
    assert report["results"][0]["finite"]


# --- the speed work keeps the numerics ---------------------------------------------------------------------


def test_a_context_row_per_video_equals_one_per_frame():
    model = tiny_model()
    for processor in model.unet.content_processors():
        randomize_(processor.to_out, 2)
    frames, width = 3, TINY_UNET["cross_attention_dim"]
    text, uncond = torch.randn(1, 77, width), torch.randn(1, 77, width)
    content = torch.randn(1, model.config.num_content_tokens, width)
    channels = conditioning_channels(torch.randn(1, 4, 8, 8), frames, torch.tensor([4.0]))
    cond = build_conditioning(text, uncond, content, channels)
    noisy = torch.randn(2, frames, 4, 8, 8)
    with torch.no_grad():
        per_video = model.unet(noisy, torch.tensor(300), cond.video_context, cond.channels)
        per_frame = model.unet(noisy, torch.tensor(300), cond.context, cond.channels)
    assert cond.video_context.shape[0] == 2 and cond.context.shape[0] == 2 * frames
    torch.testing.assert_close(per_video, per_frame, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    return livephoto_pipeline(build_components("tiny", tmp_path_factory.mktemp("tokenizer")))


def photo():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def test_low_memory_mode_gives_the_same_frames(tiny_pipeline, tmp_path):
    from diffusers.models.attention import BasicTransformerBlock

    pipe = tiny_pipeline
    settings = {"num_frames": 3, "num_inference_steps": 2, "seed": 3}
    decoded, feed_forward = [], []
    block = next(m for m in pipe.model.unet.modules() if isinstance(m, BasicTransformerBlock))
    hooks = [pipe.vae.decoder.register_forward_hook(lambda module, args, out: decoded.append(args[0].shape[0])),
             block.ff.register_forward_hook(lambda module, args, out: feed_forward.append(args[0].shape[0]))]
    try:
        default = pipe(photo(), "the red circle moves left", **settings).frames
        assert decoded == [2, 1]  # DECODE_CHUNK_SIZE frames at a time
        assert max(feed_forward) == 2 * 3  # guidance batch x frames at once (and 1 frame when inverting)
    finally:
        for hook in hooks:
            hook.remove()
    # The same weights again (the components are seeded), for a pipeline that takes them over.
    low = livephoto_pipeline(build_components("tiny", tmp_path / "tokenizer"), low_memory=True)
    idle = [low.text_encoder, low.vae, low.model.content_encoder.dinov2]
    assert all(p.is_meta for module in idle for p in module.parameters())  # their weights wait in a file
    decoded.clear(), feed_forward.clear()
    block = next(m for m in low.model.unet.modules() if isinstance(m, BasicTransformerBlock))
    hooks = [low.vae.decoder.register_forward_hook(lambda module, args, out: decoded.append(args[0].shape[0])),
             block.ff.register_forward_hook(lambda module, args, out: feed_forward.append(args[0].shape[0]))]
    try:
        frugal = low(photo(), "the red circle moves left", **settings).frames
    finally:
        for hook in hooks:
            hook.remove()
    assert decoded == [1, 1, 1]  # one frame at a time
    assert set(feed_forward) == {1}  # one frame (or frame position) at a time
    assert all(p.is_meta for module in idle for p in module.parameters())  # and back to the file after use
    torch.testing.assert_close(frugal, default, rtol=0, atol=1e-5)
    assert low(photo(), "the red circle moves left", **settings).frames.equal(frugal)  # reusable


def test_each_distinct_prompt_is_encoded_once(tiny_pipeline):
    encoded = []
    hook = tiny_pipeline.text_encoder.register_forward_hook(lambda module, args, out: encoded.append(1))
    try:
        tiny_pipeline(photo(), "left", num_frames=2, num_inference_steps=1, seed=0)  # negative "" = inversion's ""
        assert len(encoded) == 2
        encoded.clear()
        tiny_pipeline(photo(), "left", negative_prompt="blurry", num_frames=2, num_inference_steps=1, seed=0)
        assert len(encoded) == 3
        encoded.clear()
        tiny_pipeline(photo(), "left", num_frames=2, num_inference_steps=1, guidance_scale=1, prior_inversion=False)
        assert len(encoded) == 1
    finally:
        hook.remove()


def test_decode_chunk_size_is_checked_before_any_model_runs(tiny_pipeline):
    calls = []
    hook = tiny_pipeline.model.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InvalidInputError, match="decode chunk size"):
            tiny_pipeline(photo(), "left", num_frames=2, num_inference_steps=1, decode_chunk_size=0)
    finally:
        hook.remove()
    assert calls == []


def test_long_video_seam_ratio_sees_a_jump_at_a_window_boundary_only():
    from benchmarks.long_video import grid, seam_ratio

    generator = np.random.default_rng(0)
    first = generator.random((32, 32, 3))
    second = np.clip(first + 0.05 * generator.standard_normal(first.shape), 0, 1)
    drift = np.stack([first if k % 2 else second for k in range(16)])  # every adjacent pair alike
    windows = grid(16, 8, 4)
    assert [w[0] for w in windows] == [0, 4, 8]
    assert seam_ratio(drift, windows) == pytest.approx(1.0, abs=1e-9)
    jumped = drift.copy()
    jumped[8:] = 1 - jumped[8:]  # a cut where a window starts: the pairs after it as alike as before
    assert seam_ratio(jumped, windows) < 0.9
    inside = drift.copy()
    inside[6:] = 1 - inside[6:]  # the same cut inside the windows
    assert seam_ratio(inside, windows) > 1.0


def test_the_training_benchmark_runs_at_tiny_size_on_the_cpu(tmp_path):
    from benchmarks import train_gpu

    out = tmp_path / "train.json"
    report = train_gpu.main(["--size", "tiny", "--device", "cpu", "--precision", "no", "--batch-sizes", "1",
                             "--steps", "1", "--warmup", "0", "--out", str(out)])
    cases = {(r["gradient_checkpointing"], r["latent_cache"]) for r in report["results"]}
    assert cases == {(False, False), (False, True), (True, False), (True, True)}
    assert all(r["s_per_step"] > 0 and np.isfinite(r["loss"]) for r in report["results"])
    assert json.loads(out.read_text())["results"] == report["results"]
    table = out.with_suffix(".md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| 1 | off | off |")


def test_the_wan_memory_script_runs_at_tiny_size(tmp_path):
    from benchmarks import wan_memory

    report = wan_memory.main(["--size", "tiny", "--height", "32", "--width", "32", "--threads", "1", "--need-gb", "0",
                              "--tmp", str(tmp_path), "--json", str(tmp_path / "wan.json")])
    render = report["render"]
    assert render["dit_passes"] == 6 and render["latents_finite"]  # 2 steps of three guided passes
    assert set(render["phases"]) == {"text encoding (umT5 load + 2 prompts)", "DiT load + LoRA merge",
                                     "VAE encode (photo)", "DiT sampling", "VAE decode"}
    assert render["peak_gb"] >= max(phase["peak_gb"] for phase in render["phases"].values()) > 0
    assert render["s_per_step"] > 0
    assert set(report["file_gb"]) == {"base.safetensors", "lora.safetensors", "text_encoder", "vae"}
    assert not list(tmp_path.glob("wan_memory_*"))  # the model files are deleted
    assert json.loads((tmp_path / "wan.json").read_text())["settings"]["steps"] == 2


def test_the_dtype_difference_script_compares_bf16_with_fp32_on_the_demo_model(tmp_path, capsys):
    from benchmarks import dtype_difference

    figures = tmp_path / "dtype.json"
    assert dtype_difference.main(["--photos", "1", "--steps", "2", "--json", str(figures)]) == 0
    results = json.loads(figures.read_text())["results"]
    assert set(results) == {"toy", "photos"}
    for rows in results.values():
        assert rows["float32"]["videos"] == 4 and rows["bfloat16"]["videos"] == 4
        # bf16 rounds: not identical to fp32, but close (the demo model measured 50-59 dB)
        assert 25 < rows["bfloat16"]["video_psnr_db_mean"] < 200
        assert 0 <= rows["bfloat16"]["same_direction_as_float32"] <= 4
    assert "bfloat16" in capsys.readouterr().out


def test_psnr_of_identical_videos_is_infinite_and_falls_with_the_difference():
    from benchmarks.dtype_difference import psnr

    video = np.random.default_rng(0).random((2, 8, 8, 3))
    assert psnr(video, video) == float("inf")
    assert psnr(video, video + 0.01) > psnr(video, video + 0.1) > 0
