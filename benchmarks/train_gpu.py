"""Training step time and peak memory of the SD-1.5 recipe, on random weights built on the device.

    python -m benchmarks.train_gpu --size full --batch-sizes 1,2,4,8 --steps 10 --out benchmarks/results_train_gpu.json
    python -m benchmarks.train_gpu --size tiny --device cpu --precision no --steps 2   # what the tests run

For every batch size x gradient checkpointing (off, on) x latent cache (off, on): a fresh model
(``benchmarks.models``: SD-1.5's UNet, VAE and CLIP from the shipped configs, DINOv2 ViT-L/14, the
motion modules; ``--size tiny`` the tests' tiny models), AdamW over the trained parameters as the
trainer builds it, and steps of the trainer's own loss (``Trainer.loss``) + backward + clipping +
optimizer step, under autocast in ``--precision`` as accelerate runs it. Without the cache a step
encodes its clips with the frozen VAE, CLIP and DINOv2 on the device; with it the batch holds their
outputs (random tensors of the cached shapes) and the frozen encoders are not on the device, as in
a run with ``data.latent_cache``. Not measured here: decoding videos (the loader workers' job, which
the cache removes as well), multi-GPU communication.

Reports seconds per step (median of ``--steps`` after ``--warmup``), clips/s, and the peak device
memory (``torch.cuda.max_memory_allocated``; none on the CPU). Writes JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.measure import load, machine, median, now
from benchmarks.models import PROMPT, SIZES, build_components


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_state(components, device: torch.device, precision: str, batch: int, checkpointing: bool, cached: bool):
    """What ``Trainer.loss`` reads, built as Trainer.prepare_model builds it; and the optimizer. The
    base UNet and motion modules are copied: the LivePhoto UNet takes them over and trains some of them."""
    from livephoto_core.model import LivePhotoModel
    from livephoto_core.training.batching import FrozenEncoders
    from livephoto_core.training.engine import Trainee, make_noise_scheduler, trainee_parameters
    from livephoto_core.training.latent_cache import CachedDinov2
    from livephoto_core.training.recipe import TrainConfig

    config = TrainConfig(batch_size=batch, gradient_checkpointing=checkpointing)
    dinov2 = CachedDinov2(components.dinov2.config.to_dict()) if cached else components.dinov2
    model = LivePhotoModel.from_base(components.config, copy.deepcopy(components.unet), dinov2,
                                     copy.deepcopy(components.adapter))
    if checkpointing:
        model.unet.motion_unet.enable_gradient_checkpointing()
    trainee = Trainee(model, None).to(device).train()
    if precision == "bf16":  # as accelerate does: the trained module's forward in autocast, the encoders outside
        trainee.forward = torch.autocast(device.type, dtype=torch.bfloat16)(trainee.forward)
    named = trainee_parameters(trainee)
    optimizer = torch.optim.AdamW(list(named.values()), lr=config.lr, weight_decay=config.weight_decay)
    encoders = None
    if not cached:
        encoders = FrozenEncoders(components.vae.to(device), components.text_encoder.to(device), components.tokenizer,
                                  model.content_encoder, device, False, False)
    state = SimpleNamespace(
        config=config, device=device, encoders=encoders, model=model, livephoto_config=components.config,
        noise_scheduler=make_noise_scheduler(components.scheduler_config, components.config.prediction_type),
        base=SimpleNamespace(tokenizer=components.tokenizer),
        empty_text=torch.zeros(77, components.config.cross_attention_dim, device=device) if cached else None,
    )
    return state, trainee, named, optimizer


def make_batch(components, batch: int, cached: bool, dinov2_shape: tuple[int, int]) -> dict:
    config = components.config
    frames, size = config.num_frames, config.height
    if cached:
        latent = (frames, components.vae.config.latent_channels, size // 8, size // 8)
        return {"latents": torch.randn(batch, *latent), "text": torch.randn(batch, 77, config.cross_attention_dim),
                "content": torch.randn(batch, *dinov2_shape), "level": torch.randint(1, 11, (batch,))}
    pixels = torch.rand(batch, frames, 3, size, size) * 2 - 1
    return {"frames": pixels, "reference": pixels[:, 0].clone(), "caption": [PROMPT] * batch,
            "level": torch.randint(1, 11, (batch,))}


def run_case(components, device: torch.device, precision: str, batch: int, checkpointing: bool, cached: bool,
             steps: int, warmup: int) -> dict:
    from livephoto_core.training.batching import clip_generator
    from livephoto_core.training.engine import Trainer

    result = {"batch": batch, "gradient_checkpointing": checkpointing, "latent_cache": cached}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        state, trainee, named, optimizer = trainer_state(components, device, precision, batch, checkpointing, cached)
        config = components.config
        tokens = (config.dinov2_image_size // components.dinov2.config.patch_size) ** 2 + 1
        data = make_batch(components, batch, cached, (tokens, components.dinov2.config.hidden_size))
        times = []
        for step in range(warmup + steps):
            synchronize(device)
            started = time.perf_counter()
            generators = [clip_generator(0, 0, step * batch + b) for b in range(batch)]
            loss = Trainer.loss(state, data, generators, 0.5, trainee)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(named.values()), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - started)
        seconds = median(times)
        result.update(s_per_step=seconds, clips_per_s=batch / seconds, loss=loss.item())
    except torch.cuda.OutOfMemoryError:
        result.update(s_per_step=None, clips_per_s=None, error="out of memory")
    finally:
        state = trainee = named = optimizer = None  # free before the next case's peak is measured
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        result["peak_memory_gib"] = None
    components.vae.to("cpu")  # off the device between cases: the cached cases must not count them
    components.text_encoder.to("cpu")
    components.dinov2.to("cpu")
    return result


def markdown(report: dict) -> str:
    lines = ["| batch | checkpointing | latent cache | s/step | clips/s | peak memory (GiB) |", "|---|---|---|---|---|---|"]
    for r in report["results"]:
        seconds = f"{r['s_per_step']:.3f}" if r["s_per_step"] is not None else r.get("error", "-")
        clips = f"{r['clips_per_s']:.2f}" if r["clips_per_s"] is not None else "-"
        memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        lines.append(f"| {r['batch']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
                     f"{'on' if r['latent_cache'] else 'off'} | {seconds} | {clips} | {memory} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("bf16", "no"), default="bf16",
                        help="autocast dtype, as the recipe's mixed_precision (weights stay float32)")
    parser.add_argument("--batch-sizes", default="1,2,4", help="comma-separated clips per step")
    parser.add_argument("--checkpointing", choices=("both", "on", "off"), default="both")
    parser.add_argument("--cache", choices=("both", "on", "off"), default="both")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, kernels)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--out", help="JSON report (a markdown table is written beside it, .md)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    choices = {"both": (False, True), "on": (True,), "off": (False,)}
    with tempfile.TemporaryDirectory() as folder:
        components = build_components(args.size, folder)
    report = {"benchmark": "train_gpu", "date": now(), "command": " ".join(["python -m benchmarks.train_gpu",
                                                                            *(argv if argv is not None else sys.argv[1:])]),
              "size": args.size, "device": str(device), "precision": args.precision, "machine": machine(),
              "load": load(), "results": []}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for checkpointing in choices[args.checkpointing]:
            for cached in choices[args.cache]:
                result = run_case(components, device, args.precision, batch, checkpointing, cached, args.steps,
                                  args.warmup)
                report["results"].append(result)
                print(json.dumps(result), flush=True)
    table = markdown(report)
    print(table)
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        out.with_suffix(".md").write_text(table, encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
