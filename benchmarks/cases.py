"""The benchmark cases. Each runs in its own process (see run.py) and returns a dict of figures."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from livephoto_core.defaults import DEFAULT_STEPS
from livephoto_core.offload import choose_low_memory

from .measure import ForwardTimer, PeakMemory, median, rss_gb, timed_function
from .models import NEGATIVE_PROMPT, PROMPT, build_components, diffusers_pipeline, livephoto_pipeline

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sample_photo(height: int, width: int, seed: int = 0) -> Image.Image:
    """A smooth gradient with noise: structure for the VAE and DINOv2, the same in every process."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([x, y, 1 - x * y], axis=-1) * 200 + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="livephoto-bench-"))


# --- 1. loop overhead -------------------------------------------------------------------------------


def overhead(size: str = "tiny", steps: int = 2, frames: int = 4, repeats: int = 3) -> dict:
    """Our pipeline's wall time against the time inside its UNet calls, phase by phase."""
    from livephoto_core import pipeline, render

    scratch = scratch_dir()
    try:
        pipe = livephoto_pipeline(build_components(size, scratch / "tokenizer"))
        config = pipe.config
        photo = sample_photo(config.height, config.width)
        settings = {"num_frames": frames, "num_inference_steps": steps, "guidance_scale": 7.5, "seed": 0}
        pipe(photo, PROMPT, **settings)  # warm-up: first calls build kernels and caches
        runs = []
        for _ in range(repeats):
            totals: dict[str, float] = {}
            timers = {
                "unet": ForwardTimer(pipe.model.unet),
                "text_encoder": ForwardTimer(pipe.text_encoder),
                "reweighter": ForwardTimer(pipe.model.text_reweighter),
                "content_encoder": ForwardTimer(pipe.model.content_encoder),
                "vae_encoder": ForwardTimer(pipe.vae.encoder),
                "vae_decoder": ForwardTimer(pipe.vae.decoder),
            }
            with ExitStack() as stack:
                for module, name in ((render, "sample_video"), (render, "ddim_invert"), (pipeline, "measure_intensity")):
                    stack.enter_context(timed_function(module, name, totals))
                for timer in timers.values():
                    stack.enter_context(timer)
                started = time.perf_counter()
                pipe(photo, PROMPT, **settings)
                wall = time.perf_counter() - started
            loop = totals["sample_video"] + totals["ddim_invert"]
            runs.append({
                "wall_s": wall,
                "unet_s": timers["unet"].seconds,
                "unet_calls": timers["unet"].calls,
                "loop_s": loop,
                "loop_overhead": 1 - timers["unet"].seconds / loop,
                "pipeline_overhead": 1 - timers["unet"].seconds / wall,
                **{f"{name}_s": timer.seconds for name, timer in timers.items() if name != "unet"},
                "intensity_s": totals["measure_intensity"],
            })
        result = {key: median([run[key] for run in runs]) for key in runs[0]}
        result["rest_s"] = result["wall_s"] - sum(
            result[key] for key in ("unet_s", "text_encoder_s", "reweighter_s", "content_encoder_s",
                                    "vae_encoder_s", "vae_decoder_s", "intensity_s"))
        return {"size": size, "steps": steps, "frames": frames, "repeats": repeats, **result,
                "runs": runs}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- 2, 3. one full run of ours or of diffusers' AnimateDiffPipeline -------------------------------------


def video(impl: str = "ours", size: str = "full", dtype: str = "float32", frames: int = 16, resolution: int = 256,
          steps: int = 2, guidance: float = 7.5, inversion: bool = True, low_memory: bool = False,
          decode_chunk_size: int | None = None, repeats: int = 1) -> dict:
    """Build one pipeline, then time `repeats` videos and take the peak resident memory of the calls.

    The peak is the process's high-water mark reset after the models are built, so it holds the
    weights plus everything the call allocates; building (which may hold copies) is not in it.
    """
    torch_dtype = DTYPES[dtype]
    scratch = scratch_dir()
    try:
        started = time.perf_counter()
        components = build_components(size, scratch / "tokenizer", with_dinov2=impl == "ours", dtype=torch_dtype)
        if impl == "ours":
            pipe = livephoto_pipeline(components, torch_dtype, low_memory=low_memory)
            unet = pipe.model.unet
        elif impl == "diffusers":
            pipe = diffusers_pipeline(components, torch_dtype)
            unet = pipe.unet
        else:
            raise ValueError(f"impl must be ours or diffusers, not {impl!r}")
        del components
        build_s = time.perf_counter() - started
        modules = {"unet": unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}
        if impl == "ours":
            modules.update(dinov2=pipe.model.content_encoder.dinov2, livephoto_parts=pipe.model)
        weights = {name: parameter_bytes(module) / 1e9 for name, module in modules.items()}
        if impl == "ours":  # the model holds the UNet and DINOv2 too: count its own parts only
            weights["livephoto_parts"] -= weights["unet"] + weights["dinov2"]
        photo = sample_photo(resolution, resolution)
        release_freed_memory()  # building leaves freed heap pages mapped; start both sides from the same state
        resident_gb = rss_gb()
        # What a pipeline left to choose (low_memory=None) would choose here now: its note, or None for the default.
        auto_choice = choose_low_memory(unet.device, frames, resolution, resolution, torch_dtype) if impl == "ours" \
            else None

        def call():
            if impl == "ours":
                return pipe(photo, PROMPT, negative_prompt=NEGATIVE_PROMPT, num_frames=frames,
                            num_inference_steps=steps, guidance_scale=guidance, seed=0, height=resolution,
                            width=resolution, prior_inversion=inversion, decode_chunk_size=decode_chunk_size).frames
            kwargs = {} if decode_chunk_size is None else {"decode_chunk_size": decode_chunk_size}
            return pipe(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, num_frames=frames, height=resolution,
                        width=resolution, num_inference_steps=steps, guidance_scale=guidance,
                        generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).frames

        walls, cpu_times, unet_times, decode_times = [], [], [], []
        with PeakMemory() as peak:
            for _ in range(repeats):
                with ForwardTimer(unet) as timer, ForwardTimer(pipe.vae.decoder) as decoder:
                    started, cpu_started = time.perf_counter(), process_cpu_s()
                    frames_out = call()
                    walls.append(time.perf_counter() - started)
                    cpu_times.append(process_cpu_s() - cpu_started)
                unet_times.append(timer.seconds)
                decode_times.append(decoder.seconds)
        return {
            "impl": impl, "size": size, "dtype": dtype, "frames": frames, "resolution": resolution,
            "steps": steps, "guidance": guidance, "inversion": inversion if impl == "ours" else None,
            "low_memory": low_memory, "auto_low_memory_note": auto_choice, "decode_chunk_size": decode_chunk_size,
            "wall_s": median(walls), "walls_s": walls, "cpu_s": median(cpu_times), "unet_s": median(unet_times),
            "unet_calls": timer.calls,
            "unet_call_s": timer.call_seconds,  # the last video's calls: inversion (1 frame) first, then guided
            "vae_decode_s": median(decode_times), "decoder_calls": decoder.calls,
            "peak_gb": peak.peak_gb, "peak_exact": peak.exact, "resident_before_gb": resident_gb,
            "parameters_gb": weights,
            "process_max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "build_s": build_s, "finite": bool(torch.isfinite(torch.as_tensor(frames_out)).all()),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- where the UNet's time goes ------------------------------------------------------------------------


OP_GROUPS = {  # aten op name fragments -> what they are
    "linear (projections, feed-forward)": ("addmm", "aten::mm", "aten::bmm", "aten::linear"),
    "convolution": ("convolution",),
    "attention (SDPA)": ("scaled_dot_product",),
    "normalisation": ("group_norm", "layer_norm"),
    "copies and layout": ("copy_", "contiguous", "cat", "clone"),
}


def profile(size: str = "full", frames: int = 16, resolution: int = 256, rounds: int = 2) -> dict:
    """One guided UNet call (batch [uncond, cond] x frames), three ways, interleaved so that load drift
    hits each alike: the shipped per-video context, the per-frame context (what the loop passed
    before), and the content branch off (scale 0, the cost of LivePhoto's content attention).
    Then torch.profiler's self time of one call, grouped by kind of op."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from livephoto_core.modules.unet import conditioning_channels
    from livephoto_core.sampling import build_conditioning

    scratch = scratch_dir()
    try:
        pipe = livephoto_pipeline(build_components(size, scratch / "tokenizer"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    unet, config = pipe.model.unet, pipe.config
    generator = torch.Generator().manual_seed(0)
    latent = resolution // 8
    width = config.cross_attention_dim
    text, uncond = torch.randn(1, 77, width, generator=generator), torch.randn(1, 77, width, generator=generator)
    content = torch.randn(1, config.num_content_tokens, width, generator=generator)
    channels = conditioning_channels(torch.randn(1, 4, latent, latent, generator=generator), frames,
                                     torch.tensor([5.0]))
    cond = build_conditioning(text, uncond, content, channels)
    noisy = torch.randn(2, frames, 4, latent, latent, generator=generator)
    timestep = torch.tensor(500)
    variants = {
        "per-video context": (cond.video_context, 1.0),
        "per-frame context": (cond.context, 1.0),
        "content branch off": (cond.video_context, 0.0),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        unet(noisy, timestep, cond.video_context, cond.channels)  # warm-up
        for _ in range(rounds):
            for name, (context, scale) in variants.items():
                started = time.perf_counter()
                unet(noisy, timestep, context, cond.channels, content_scale=scale)
                seconds[name].append(time.perf_counter() - started)
        with torch_profile(activities=[ProfilerActivity.CPU]) as trace:
            unet(noisy, timestep, cond.video_context, cond.channels)
    events = trace.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    groups = {name: 0.0 for name in OP_GROUPS}
    for event in events:
        group = next((g for g, fragments in OP_GROUPS.items() if any(f in event.key for f in fragments)), None)
        groups[group or "other"] = groups.get(group or "other", 0.0) + event.self_cpu_time_total
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {
        "size": size, "frames": frames, "resolution": resolution, "rounds": rounds,
        "seconds": {name: median(times) for name, times in seconds.items()}, "all_seconds": seconds,
        "op_share": {name: value / total for name, value in groups.items()},
        "top_ops": [(e.key, e.self_cpu_time_total / total, e.count) for e in top],
        "profiled_call_s": total / 1e6,
    }


def process_cpu_s() -> float:
    """CPU seconds this process has used (user + system, all its threads). On a loaded machine a 1-thread
    run's wall time counts the time it waited for a core too; its CPU time does not."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def release_freed_memory() -> None:
    """Give freed heap memory back to the system (glibc malloc_trim), where there is such a call."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# --- 5. training throughput -------------------------------------------------------------------------------

TRAIN_CONFIG = ROOT / "configs" / "train" / "demo.json"


def training(steps: int = 12, clips: int = 64, warmup_steps: int = 2) -> dict:
    """Clips per second of the tiny CPU training config (configs/train/demo.json) on toy-world clips.

    The rate is the trainer's own per-step figure (log.jsonl), median over the steps after
    `warmup_steps`; the from-scratch VAE stage is cut to 2 steps and validation is off, so what is
    timed is the LivePhoto training step (data, forward, backward, optimizer, EMA).
    """
    from livephoto_core.training import toyworld
    from livephoto_core.training.recipe import load_train_config
    from livephoto_core.training.engine import train

    scratch = scratch_dir()
    try:
        demo = json.loads(TRAIN_CONFIG.read_text())
        size, frames = demo["data"]["size"], demo["data"]["num_frames"]
        index = toyworld.write_dataset(scratch / "train", num_clips=clips, seed=0, size=size, frames=frames)
        heldout = toyworld.write_dataset(scratch / "heldout", num_clips=2, seed=0, size=size, frames=frames,
                                         split="heldout")
        overrides = [f"output_dir={scratch / 'run'}", f"steps={steps}", f"data.index={index}",
                     f"data.validation_index={heldout}", "vae.steps=2", "validation.every=0",
                     f"checkpoint_every={steps}", f"log_every={steps}", "warmup_steps=0"]
        config = load_train_config(TRAIN_CONFIG, overrides)
        started = time.perf_counter()
        train(config)
        wall = time.perf_counter() - started
        records = [json.loads(line) for line in (scratch / "run" / "log.jsonl").read_text().splitlines()]
        timed = [r for r in records if r.get("event") == "step"][warmup_steps:]
        return {"config": str(TRAIN_CONFIG.relative_to(ROOT)), "batch_size": demo["batch_size"], "frames": frames,
                "size": size, "torch_threads": demo.get("torch_threads"), "steps_timed": len(timed),
                "clips_per_s": median([r["clips_per_s"] for r in timed]),
                "s_per_step": median([r["s_per_step"] for r in timed]), "wall_s": wall}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- 6. start-up ----------------------------------------------------------------------------------------


def startup(repeats: int = 7) -> dict:
    """`livephoto --help` (the console script and ``python -m``), and an animate command's wall time."""
    commands = {"python -m livephoto_core.cli --help": [sys.executable, "-m", "livephoto_core.cli", "--help"],
                "python -c pass": [sys.executable, "-c", "pass"]}
    script = shutil.which("livephoto")
    if script:
        commands["livephoto --help"] = [script, "--help"]
    results = {name: command_times(command, repeats) for name, command in commands.items()}
    results["import torch"] = command_times([sys.executable, "-c", "import torch"], 3)
    results["demo"] = demo_command()
    return results


def command_times(command: list[str], repeats: int) -> dict:
    """Median, fastest and slowest wall time of `repeats` runs of `command`, with this checkout importable
    (the console script then runs this checkout's CLI, whichever copy the installed package points at)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return {"median_s": median(times), "min_s": min(times), "max_s": max(times)}


def demo_command(steps: int = DEFAULT_STEPS) -> dict:
    """`livephoto animate` end to end. Runs the bundled demo model when it exists, else the tiny test
    model files as a stand-in (said in the result)."""
    from livephoto_core.loading.assemble import CHECKPOINT_NAME, DEMO_MODEL_DIR

    scratch = scratch_dir()
    try:
        photo = scratch / "photo.png"
        sample_photo(64, 64).save(photo)
        output = scratch / "out.webp"
        command = [sys.executable, "-m", "livephoto_core.cli", "animate", str(photo), PROMPT, "--seed", "0",
                   "--steps", str(steps), "-o", str(output)]
        if (DEMO_MODEL_DIR / CHECKPOINT_NAME).is_file():
            model = "bundled demo model"
        else:
            model = "tiny stand-in (tests' model files; the demo model is not there yet)"
            command += write_tiny_model_files(scratch / "model")
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        result = {"model": model, "steps": steps, "command": " ".join(command[1:])}
        if done.returncode:
            return {**result, "error": done.stderr.strip().splitlines()[-1:]}
        return {**result, "wall_s": wall}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_tiny_model_files(folder: Path) -> list[str]:
    """The tests' tiny SD-1.5-layout base, DINOv2, tokenizer and LivePhoto checkpoint -> CLI options."""
    from livephoto_core.testing.ldm_layout import write_tiny_sd15_file
    from livephoto_core.testing.tiny import WORDS, tiny_config, tiny_dinov2, tiny_sd15_models, train_livephoto_parts_

    from livephoto_core.loading.checkpoint import save_livephoto_checkpoint
    from livephoto_core.model import LivePhotoModel
    from livephoto_core.training.word_tokenizer import write_word_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_sd15_file(folder / "base.safetensors", seed=0)
    tiny_dinov2().save_pretrained(folder / "dinov2")
    write_word_tokenizer(folder / "tokenizer", WORDS)
    model = train_livephoto_parts_(LivePhotoModel.from_base(tiny_config(), tiny_sd15_models(0).unet, tiny_dinov2()))
    save_livephoto_checkpoint(model, folder / "livephoto.safetensors")
    return ["--livephoto", str(folder / "livephoto.safetensors"), "--base", str(folder / "base.safetensors"),
            "--dinov2", str(folder / "dinov2"), "--tokenizer", str(folder / "tokenizer")]


CASES = {"overhead": overhead, "video": video, "profile": profile, "training": training, "startup": startup}
