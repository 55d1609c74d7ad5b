"""LivePhoto-Wan2.1's peak memory and time per step on this machine: full model size, random weights, the CLI's path.

    python benchmarks/wan_memory.py --threads 2 --json benchmarks/results_wan_cpu.json   # full size (see below)
    python benchmarks/wan_memory.py --size tiny --json /tmp/wan_tiny.json                # a quick check of the script

It writes the files the CLI takes (``--wan-dit base.safetensors --wan-lora lora.safetensors --wan-base FOLDER``)
with random weights in the released layouts: the Wan2.1-T2V-1.3B DiT with the LivePhoto modules, a Pusa-style
LoRA, umT5-XXL (5.7B parameters, sharded as the hub's text_encoder/ is) and the Wan VAE's default config; about
15 GB at full size, in a temporary folder deleted at the end. Then ``livephoto animate`` renders in a fresh
process, one at a time, after waiting for the memory to be free, and reports the kernel's peak RSS (VmHWM) for
the whole run and for each phase, the seconds per sampling step (three DiT passes a step) and the wall time.
See docs/wan.md#memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.measure import high_water_mark_gb, load, machine, now, reset_high_water_mark, rss_gb  # noqa: E402
from benchmarks.run import wait_for_memory  # noqa: E402

RESULT_MARK = "WAN_RESULT "
# Wan2.1-T2V-1.3B (12 heads of 128) and the diffusers copy of umT5-XXL and the Wan VAE, as released.
SIZES = {
    "full": {
        "dit": dict(dim=1536, num_layers=30, ffn_dim=8960, text_dim=4096, freq_dim=256),
        "umt5": dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64),
        "vae": {},
        "lora_rank": 512,
    },
    # Heads stay 128 wide (the loader's rule), so the tiny DiT loads without patching it; the vocabulary
    # covers the word tokenizer's 567 ids.
    "tiny": {
        "dit": dict(dim=256, num_layers=1, ffn_dim=64, text_dim=32, freq_dim=32),
        "umt5": dict(vocab_size=1024, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4),
        "vae": dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                    temperal_downsample=[False, True, True]),
        "lora_rank": 4,
    },
}
# Pusa's LoRA targets (its training script's lora_target_modules "q,k,v,o,ffn.0,ffn.2") in every block; the
# released file's rank is not known here, 512 is Pusa V1's.
LORA_TARGETS = tuple(f"{attn}.{p}" for attn in ("self_attn", "cross_attn") for p in "qkvo") + ("ffn.0", "ffn.2")
PATTERN_LENGTH = 1_000_003  # prime, so that rows of a tiled weight do not repeat in step with their width
SHARD_BYTES = 2 * 10**9  # umT5 is written in shards, so the builder never holds its 11 GB at once
# A render stops itself when the machine gets this short of memory: others share it, and swapping or the OOM
# killer would hit them too.
MIN_AVAILABLE_GB = 1.5


# --- random weights in the released layouts ------------------------------------------------------------------


class Filler:
    """Cheap deterministic weights: one seeded random pattern, tiled over each tensor and scaled by 1/sqrt(fan_in)
    (norm scales 1), so activations stay in range through 30 DiT blocks and 24 umT5 layers. Drawing 7B random
    numbers would take minutes; tiling takes seconds."""

    def __init__(self, seed: int = 0, scale: float = 1.0, bias_scale: float = 0.02):
        self.pattern = torch.randn(PATTERN_LENGTH, generator=torch.Generator().manual_seed(seed))
        self.scale, self.bias_scale = scale, bias_scale

    def make(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        tensor = torch.empty(shape, dtype=dtype)
        if len(shape) == 1 and name.endswith("weight") and ("norm" in name or ".ln" in name):
            return tensor.fill_(1.0)
        factor = self.scale / math.sqrt(math.prod(shape[1:])) if len(shape) >= 2 else self.bias_scale
        pattern = (self.pattern * factor).to(dtype)
        flat = tensor.view(-1)
        for start in range(0, flat.numel(), PATTERN_LENGTH):
            end = min(start + PATTERN_LENGTH, flat.numel())
            flat[start:end] = pattern[:end - start]
        return tensor


def original_dit_name(name: str) -> str:
    """A LivePhotoWan parameter's name in the released base.safetensors (keys.diffusers_name, inverted)."""
    from livephoto_core.wan.keys import _BLOCK, _BLOCK_RENAMES, _TOP_RENAMES

    if not name.startswith("transformer."):
        return name  # the LivePhoto modules keep their own names
    name = name[len("transformer."):]
    match = _BLOCK.fullmatch(name)
    renames = _BLOCK_RENAMES if match else _TOP_RENAMES
    prefix, rest = (f"blocks.{match.group(1)}.", match.group(2)) if match else ("", name)
    for old, new in renames.items():
        if rest.startswith(new):
            return prefix + old + rest[len(new):]
    raise ValueError(f"no original name for {name}")


def dit_shapes(dit: dict) -> dict[str, tuple[int, ...]]:
    """{original key: shape} of a LivePhoto-Wan DiT of these sizes, from the model built on the meta device."""
    from accelerate import init_empty_weights

    from livephoto_core.wan.keys import WAN_HEAD_DIM
    from livephoto_core.wan.model import LivePhotoWan, transformer_config

    config = transformer_config(num_heads=dit["dim"] // WAN_HEAD_DIM, in_channels=16, out_channels=16,
                                patch_size=(1, 2, 2), **dit)
    with init_empty_weights():
        model = LivePhotoWan(config)
    return {original_dit_name(name): tuple(p.shape) for name, p in model.named_parameters()}


def write_dit_and_lora(folder: Path, dit: dict, rank: int, filler: Filler) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    shapes = dit_shapes(dit)
    base, lora = folder / "base.safetensors", folder / "lora.safetensors"
    save_file({name: filler.make(name, shape, torch.bfloat16) for name, shape in shapes.items()}, base)
    pairs = {}
    for name, (out_features, in_features) in ((n, s) for n, s in shapes.items()
                                              if n.startswith("blocks.") and n.split(".", 2)[2][:-7] in LORA_TARGETS):
        target = name[:-len(".weight")]
        pairs[f"{target}.lora_A.default.weight"] = filler.make("lora_A", (rank, in_features), torch.bfloat16)
        pairs[f"{target}.lora_B.default.weight"] = filler.make("lora_B", (out_features, rank), torch.bfloat16)
    save_file(pairs, lora)
    return base, lora


def write_umt5(folder: Path, sizes: dict, filler: Filler) -> None:
    """umT5's config and bf16 weights in shards with an index, as the hub's text_encoder/ holds them."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, **sizes)
    with init_empty_weights():
        model = UMT5EncoderModel(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}  # the tied embedding once
    shards, current, current_bytes = [], [], 0
    for name, shape in shapes.items():
        nbytes = 2 * math.prod(shape)
        if current and current_bytes + nbytes > SHARD_BYTES:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(name)
        current_bytes += nbytes
    shards.append(current)
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    weight_map = {}
    for index, names in enumerate(shards, 1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file({name: filler.make(name, shapes[name], torch.bfloat16) for name in names}, folder / file,
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    total = sum(2 * math.prod(shape) for shape in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def write_files(folder: Path, size: str, scale: float) -> dict:
    """The CLI's three Wan arguments under ``folder``, and the parameter counts and file sizes written."""
    from diffusers import AutoencoderKLWan

    from livephoto_core.testing.tiny import tiny_tokenizer

    sizes, filler = SIZES[size], Filler(scale=scale)
    base, lora = write_dit_and_lora(folder, sizes["dit"], sizes["lora_rank"], filler)
    wan_base = folder / "Wan2.1-T2V-1.3B-Diffusers"
    write_umt5(wan_base / "text_encoder", sizes["umt5"], filler)
    # The tokenizer's vocabulary does not change the encoder's cost: prompts are padded to 512 tokens.
    tiny_tokenizer(folder / "words").save_pretrained(wan_base / "tokenizer")
    torch.manual_seed(0)
    AutoencoderKLWan(**sizes["vae"]).save_pretrained(wan_base / "vae")  # 127M parameters: torch's init is quick
    file_gb = {part: round(sum(f.stat().st_size for f in [path, *path.rglob("*")] if f.is_file()) / 1e9, 3)
               for part, path in (("base.safetensors", base), ("lora.safetensors", lora),
                                  ("text_encoder", wan_base / "text_encoder"), ("vae", wan_base / "vae"))}
    return {"dit": str(base), "lora": str(lora), "wan_base": str(wan_base), "file_gb": file_gb}


# --- the render, in its own process ----------------------------------------------------------------------------


class Phases:
    """Peak RSS and wall time of each named phase, by resetting the kernel's high-water mark (VmHWM) at each
    phase's start and end; the time between phases is its own segment, so the overall peak is the largest."""

    def __init__(self):
        self.figures: dict[str, dict] = {}
        self.between_gb = 0.0
        self.exact = reset_high_water_mark()

    def wrap(self, namespace, attribute: str, phase: str, inner=None):
        original = getattr(namespace, attribute)

        def wrapper(*args, **kwargs):
            self.between_gb = max(self.between_gb, high_water_mark_gb() or 0.0)
            reset_high_water_mark()
            started = time.perf_counter()
            result = original(*args, **kwargs) if inner is None else inner(original, *args, **kwargs)
            seconds = time.perf_counter() - started
            peak = high_water_mark_gb() or 0.0
            reset_high_water_mark()
            previous = self.figures.get(phase, {"peak_gb": 0.0, "seconds": 0.0})
            self.figures[phase] = {"peak_gb": round(max(previous["peak_gb"], peak), 3),
                                   "seconds": round(previous["seconds"] + seconds, 2),
                                   "rss_after_gb": round(rss_gb(), 3)}
            # Said as it happens, so that a run stopped for memory or time still shows where it got to.
            print(f"{phase}: {self.figures[phase]}", file=sys.stderr, flush=True)
            return result

        setattr(namespace, attribute, wrapper)

    def overall_gb(self) -> float:
        return round(max([self.between_gb, high_water_mark_gb() or 0.0]
                         + [figure["peak_gb"] for figure in self.figures.values()]), 3)


def stop_when_memory_runs_short() -> None:
    import psutil

    def watch():
        while psutil.virtual_memory().available / 1e9 > MIN_AVAILABLE_GB:
            time.sleep(0.2)
        print(f"stopped: under {MIN_AVAILABLE_GB} GB of memory left on the machine", file=sys.stderr, flush=True)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def worker(settings: dict) -> dict:
    """Render with ``livephoto animate`` in this process and return the figures."""
    import numpy as np
    from PIL import Image

    from livephoto_core import cli
    from livephoto_core.wan import keys, pipeline, sampling

    stop_when_memory_runs_short()
    phases = Phases()
    passes: list[float] = []
    finite: list[bool] = []

    def timed_model(sample, model, latents, *args, **kwargs):
        def model_pass(*inputs):
            started = time.perf_counter()
            out = model(*inputs)
            passes.append(time.perf_counter() - started)
            return out

        result = sample(model_pass, latents, *args, **kwargs)
        finite.append(bool(torch.isfinite(result).all()))
        return result

    phases.wrap(pipeline, "encode_prompts", "text encoding (umT5 load + 2 prompts)")
    phases.wrap(keys, "load_livephoto_wan", "DiT load + LoRA merge")
    phases.wrap(pipeline, "encode_photo", "VAE encode (photo)")
    phases.wrap(sampling, "sample", "DiT sampling", inner=timed_model)
    phases.wrap(pipeline, "decode_frames", "VAE decode")
    folder = Path(settings["out"])
    photo = folder / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 832, 3), dtype=np.uint8)).save(photo)
    command = ["animate", str(photo), "a kitten dances", "--wan-dit", settings["dit"], "--wan-lora", settings["lora"],
               "--wan-base", settings["wan_base"], "--frames", str(settings["frames"]), "--size",
               str(settings["height"]), str(settings["width"]), "--steps", str(settings["steps"]),
               "--dtype", "bfloat16", "-o", str(folder / "out.webp")]
    started = time.perf_counter()
    code = cli.main(command)
    wall = time.perf_counter() - started
    if code:
        raise RuntimeError(f"livephoto animate exited {code}")
    steps = settings["steps"]
    return {
        "cli_command": "livephoto " + " ".join(command), "wall_s": round(wall, 1), "peak_gb": phases.overall_gb(),
        "peak_between_phases_gb": round(phases.between_gb, 3), "exact_peak": phases.exact, "phases": phases.figures,
        "dit_passes": len(passes), "dit_pass_s": [round(s, 2) for s in passes],
        "s_per_step": round(phases.figures["DiT sampling"]["seconds"] / steps, 2),
        "latents_finite": all(finite),
    }


def render(files: dict, args, out: Path) -> dict:
    """One render in a fresh process under ``timeout``, after the memory is free."""
    wait_for_memory(args.need_gb, args.wait_s)
    before = load()
    settings = {**files, "frames": args.frames, "height": args.height, "width": args.width, "steps": args.steps,
                "out": str(out)}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = ["timeout", str(args.timeout_s), sys.executable, str(Path(__file__).resolve()), "--worker",
               json.dumps(settings), "--threads", str(args.threads)]
    print(f"  [{now()}] rendering (load {before['load_1m']}, {before['available_gb']} GB available)",
          file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        why = ", timed out" if done.returncode == 124 else ""
        raise RuntimeError(f"the render failed (exit {done.returncode}{why}):\n{tail}")
    result = json.loads(lines[-1][len(RESULT_MARK):])
    result["load_before"], result["load_after"] = before, load()
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="full", choices=tuple(SIZES), help="model size (default full)")
    parser.add_argument("--frames", type=int, default=5, help="frames, 4k + 1 (default 5)")
    parser.add_argument("--height", type=int, default=240, help="height, a multiple of 16 (default 240)")
    parser.add_argument("--width", type=int, default=416, help="width, a multiple of 16 (default 416)")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads (default 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="random weights' scale (lower it if a run gives NaN)")
    parser.add_argument("--need-gb", type=float, default=16 * 2**30 / 1e9,
                        help="available memory to wait for before building and before rendering (default 16 GiB)")
    parser.add_argument("--wait-s", type=float, default=600, help="longest wait for that memory (default 600)")
    parser.add_argument("--timeout-s", type=int, default=2400, help="the render's time limit (default 2400)")
    parser.add_argument("--tmp", help="where the temporary model files go (default the system's temp folder)")
    parser.add_argument("--json", default="benchmarks/results_wan_cpu.json", help="where to write the figures")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        torch.set_num_threads(args.threads)
        print(RESULT_MARK + json.dumps({**worker(json.loads(args.worker)), "machine": machine()}), flush=True)
        return {}
    report = {"date": now(), "command": " ".join(["python", *sys.argv]), "load_at_start": load(), "size": args.size,
              "settings": {"frames": args.frames, "height": args.height, "width": args.width, "steps": args.steps,
                           "threads": args.threads, "dtype": "bfloat16", "scale": args.scale,
                           "lora_rank": SIZES[args.size]["lora_rank"]}}
    with tempfile.TemporaryDirectory(prefix="wan_memory_", dir=args.tmp) as folder:
        wait_for_memory(args.need_gb, args.wait_s)
        started = time.perf_counter()
        files = write_files(Path(folder), args.size, args.scale)
        report["build_s"] = round(time.perf_counter() - started, 1)
        report["file_gb"] = files.pop("file_gb")
        (Path(folder) / "render").mkdir()
        report["render"] = render(files, args, Path(folder) / "render")
    report["machine"] = report["render"].pop("machine")
    report["load_at_end"] = load()
    render_figures = report["render"]
    print(f"{report['machine']['cpu']}, {args.threads} threads, {report['date']}: peak {render_figures['peak_gb']} GB, "
          f"{render_figures['s_per_step']} s/step, wall {render_figures['wall_s']} s")
    for phase, figures in render_figures["phases"].items():
        print(f"  {phase}: peak {figures['peak_gb']} GB, {figures['seconds']} s")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"figures written to {path}")
    return report


if __name__ == "__main__":
    main()
