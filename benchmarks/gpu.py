"""GPU benchmark: seconds per video, peak memory, FLOPs and the fraction of the chip's peak.

One prepared command (under 8 minutes on an H100, model building included):

    python benchmarks/gpu.py --json benchmarks/gpu.json

Full-size SD-1.5 + motion modules + DINOv2-L with random weights, 16 frames at 256x256, 25 DDIM steps,
CFG 7.5, prior inversion (25 steps) and VAE decode: the whole pipeline call, timed with the device
synchronised. Configurations: fp16 and bf16, each with torch.compile off and on (SDPA attention and
channels_last throughout), fp16 without channels_last, and fp16 in low-memory mode. The test suite
runs the same script on the CPU at tiny size (``--device cpu --size tiny ...``) so that it cannot rot.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.cases import DTYPES, sample_photo  # noqa: E402
from benchmarks.measure import machine, median, now  # noqa: E402
from benchmarks.models import NEGATIVE_PROMPT, PROMPT, build_components, livephoto_pipeline  # noqa: E402

DEFAULT_CONFIGS = (
    "float16", "float16+compile", "bfloat16", "bfloat16+compile", "float16+contiguous", "float16+low_memory",
)
# Dense fp16/bf16 tensor-core peaks (FLOP/s) by device-name fragment, most specific first.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 125e12), ("RTX 4090", 165e12),
)


def parse_config(name: str) -> dict:
    """"float16+compile+low_memory" -> dtype and flags; flags: compile, contiguous (no channels_last), low_memory."""
    dtype, *flags = name.split("+")
    unknown = set(flags) - {"compile", "contiguous", "low_memory"}
    if dtype not in DTYPES or unknown:
        raise ValueError(
            f"bad configuration {name!r}: dtype one of {list(DTYPES)}, flags compile/contiguous/low_memory"
        )
    return {"name": name, "dtype": dtype, "compile": "compile" in flags, "channels_last": "contiguous" not in flags,
            "low_memory": "low_memory" in flags}


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return str(device), None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for fragment, peak in PEAK_FLOPS if fragment in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_pipeline(size: str, config: dict, device: torch.device, scratch: Path):
    """Our pipeline on `device` with the configuration's dtype, memory layout, compilation and memory mode."""
    from livephoto_core.pipeline import LivePhotoPipeline

    pipe = livephoto_pipeline(build_components(size, scratch / "tokenizer"), DTYPES[config["dtype"]])
    for module in (pipe.model, pipe.vae, pipe.text_encoder):
        module.to(device)
    if config["low_memory"]:  # the pipeline's own mode sends the occasional parts back to the CPU
        pipe = LivePhotoPipeline(pipe.model, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler_config,
                                 pipe.model_hashes, low_memory=True)
    unet = pipe.model.unet.motion_unet
    if config["channels_last"]:
        unet.to(memory_format=torch.channels_last)
    if config["compile"]:
        unet.compile(dynamic=False)  # one graph for the sampling batch, one for the inversion's single frame
    return pipe


def count_flops(function) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def run_config(args, config: dict, device: torch.device) -> dict:
    """Build the pipeline for one configuration, warm it up, then time `args.repeats` videos."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="livephoto-gpu-") as scratch:
        pipe = build_pipeline(args.size, config, device, Path(scratch))
    build_s = time.perf_counter() - started
    photo = sample_photo(args.resolution, args.resolution)

    def video():
        return pipe(photo, PROMPT, negative_prompt=NEGATIVE_PROMPT, num_frames=args.frames,
                    num_inference_steps=args.steps, guidance_scale=7.5, seed=0, height=args.resolution,
                    width=args.resolution, prior_inversion=True).frames

    started = time.perf_counter()
    video()  # warm-up: kernels, cuDNN autotuning, and the compilation when compile is on
    synchronize(device)
    warmup_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(args.repeats):
        synchronize(device)
        started = time.perf_counter()
        frames = video()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    result = {
        **config, "build_s": build_s, "warmup_s": warmup_s, "seconds_per_video": median(seconds),
        "seconds": seconds, "finite": bool(torch.isfinite(frames).all()),
        "peak_vram_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "reserved_vram_gb": torch.cuda.max_memory_reserved(device) / 1e9 if device.type == "cuda" else None,
    }
    if not config["compile"]:  # the model's FLOPs, whatever runs them: counted on the uncompiled model
        result["video_flops"] = count_flops(video)
        result["unet_call_flops"] = unet_call_flops(pipe, args)
        if device.type == "cuda":
            result["syncs_in_sampling_loop"] = count_syncs(video)
    return result


def count_syncs(video) -> list[str]:
    """Host-device synchronisations inside the sampling and inversion loops (CUDA's sync debug mode)."""
    from livephoto_core import render

    found = []

    def watched(function):
        def wrapper(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    return function(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                found.extend(f"{function.__name__}: {w.message}".splitlines()[0][:200] for w in caught)
        return wrapper

    originals = {name: getattr(render, name) for name in ("sample_video", "ddim_invert")}
    for name, function in originals.items():
        setattr(render, name, watched(function))
    try:
        video()
    finally:
        for name, function in originals.items():
            setattr(render, name, function)
    return found


def unet_call_flops(pipe, args) -> int:
    """FLOPs of one guided sampling call: batch [uncond, cond] x frames, text + content context."""
    unet = pipe.model.unet
    latent = args.resolution // 8
    dtype, device = unet.dtype, unet.device
    noisy = torch.randn(2, args.frames, 4, latent, latent, device=device, dtype=dtype)
    channels = torch.randn(2, args.frames, 6, latent, latent, device=device, dtype=dtype)
    context = torch.randn(2, 77 + pipe.config.num_content_tokens, pipe.config.cross_attention_dim, device=device,
                          dtype=dtype)
    with torch.inference_mode():
        return count_flops(lambda: unet(noisy, torch.tensor(500, device=device), context, channels))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="full", choices=("tiny", "full"))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3, help="timed videos per configuration (median)")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        help="dtype[+compile][+contiguous][+low_memory]; default: %(default)s")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense fp16/bf16 peak, if not in the table")
    parser.add_argument("--json", default="benchmarks/gpu.json")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    configs = [parse_config(name) for name in args.configs]
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    device_name, peak = peak_flops(device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak
    report = {"date": now(), "device": device_name, "peak_flops": peak, "machine": machine(),
              "command": " ".join(sys.argv), "settings": {k: getattr(args, k) for k in
                                                          ("size", "frames", "resolution", "steps", "repeats")},
              "results": []}
    video_flops = {}
    for config in configs:
        result = run_config(args, config, device)
        gc.collect()  # the configuration's pipeline, before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        report["results"].append(result)
        video_flops.setdefault(config["dtype"], result.get("video_flops"))
        flops = video_flops[config["dtype"]]
        if flops and peak:
            result["fraction_of_peak"] = flops / result["seconds_per_video"] / peak
        vram = f"{result['peak_vram_gb']:.2f} GB" if result["peak_vram_gb"] is not None else "n/a"
        share = f", {100 * result['fraction_of_peak']:.1f} % of peak" if "fraction_of_peak" in result else ""
        syncs = result.get("syncs_in_sampling_loop")
        syncs = f", {len(syncs)} host-device syncs in the loops" if syncs is not None else ""
        print(f"{config['name']:<24} {result['seconds_per_video']:.3f} s/video, peak VRAM {vram}, warm-up "
              f"{result['warmup_s']:.1f} s{share}{syncs}", flush=True)
    counted = next((r for r in report["results"] if "unet_call_flops" in r), None)
    if counted:
        print(f"one guided UNet call: {counted['unet_call_flops'] / 1e12:.3f} TFLOP; one video: "
              f"{counted['video_flops'] / 1e12:.2f} TFLOP")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
