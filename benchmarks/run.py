"""Run the LivePhoto benchmarks, print a table and write the figures as JSON.

    python benchmarks/run.py                            # overhead (tiny), training, startup
    python benchmarks/run.py overhead --sizes tiny full  # loop overhead, also on full-size SD-1.5
    python benchmarks/run.py diffusers memory profile    # vs AnimateDiffPipeline; peak RSS; one UNet call
    python benchmarks/run.py diffusers --size tiny --frames 4 --resolution 64   # a quick check
    python benchmarks/run.py diffusers --dtypes float32 --variants ours diffusers --repeats 3   # interleaved pairs

The GPU benchmark is its own script, benchmarks/gpu.py.

Every measurement runs in a fresh subprocess (peak memory is per process; nothing is shared), one at a
time. Full-size cases wait until the machine has the memory free (--need-gb). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import load, machine, median, now  # noqa: E402

BENCHMARKS = ("overhead", "diffusers", "memory", "profile", "training", "startup")
DEFAULT_BENCHMARKS = ("overhead", "training", "startup")
RESULT_MARK = "BENCH_RESULT "
GOALS = {"loop_overhead": 0.05, "time_ratio": 0.9, "peak_ratio": 1.0, "peak_gb": 8.0, "help_s": 1.0}


def run_case(case: str, need_gb: float = 0.0, wait_s: float = 1800, threads: int | None = None, **kwargs) -> dict:
    """Run one case of benchmarks/cases.py in a fresh Python process and return its figures."""
    wait_for_memory(need_gb, wait_s)
    before = load()
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", case, "--kwargs", json.dumps(kwargs)]
    if threads:
        command += ["--threads", str(threads)]
    print(f"  [{now()}] {case} {kwargs} (load {before['load_1m']})", file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"benchmark case {case} {kwargs} failed (exit {done.returncode}):\n{tail}")
    result = json.loads(lines[-1][len(RESULT_MARK):])
    result["load_before"], result["load_after"], result["date"] = before, load(), now()
    return result


def wait_for_memory(need_gb: float, wait_s: float) -> None:
    """Full-size runs need ~8-10 GB; on a shared machine, wait for it rather than push others into swap."""
    if need_gb <= 0:
        return
    deadline = time.monotonic() + wait_s
    while (available := load()["available_gb"]) < need_gb:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {available} GB available after waiting {wait_s:.0f} s; {need_gb} GB needed")
        print(f"  waiting for memory: {available} GB available, {need_gb} GB needed", file=sys.stderr, flush=True)
        time.sleep(30)


# --- the benchmarks: each returns (figures for the JSON, rows for the table) ---------------------------------


def bench_overhead(args) -> tuple[dict, list]:
    figures, rows = {}, []
    for size in args.sizes:
        need = args.need_gb if size == "full" else 0
        repeats = args.repeats or (2 if size == "full" else 10)
        result = run_case("overhead", need, threads=args.threads, size=size, steps=args.steps,
                          frames=args.overhead_frames, repeats=repeats)
        figures[size] = result
        rows += [
            (f"overhead {size}", "pipeline wall", f"{result['wall_s']:.3f} s", ""),
            (f"overhead {size}", f"UNet ({result['unet_calls']:.0f} calls)", f"{result['unet_s']:.3f} s", ""),
            (f"overhead {size}", "loop overhead (loop wall vs its UNet calls)",
             f"{100 * result['loop_overhead']:.2f} %",
             goal(result["loop_overhead"] <= GOALS["loop_overhead"], "<= 5 %")),
            (f"overhead {size}", "pipeline time outside the UNet", f"{100 * result['pipeline_overhead']:.1f} %", ""),
            (f"overhead {size}", "  of which VAE decode / encode",
             f"{result['vae_decoder_s']:.3f} / {result['vae_encoder_s']:.3f} s", ""),
            (f"overhead {size}", "  text encoder / reweighter / DINOv2",
             f"{result['text_encoder_s']:.3f} / {result['reweighter_s']:.3f} / {result['content_encoder_s']:.3f} s",
             ""),
            (f"overhead {size}", "  intensity measure / rest",
             f"{result['intensity_s']:.3f} / {result['rest_s']:.3f} s", ""),
        ]
    return figures, rows


def video_settings(args) -> dict:
    return {"size": args.size, "frames": args.frames, "resolution": args.resolution, "steps": args.steps}


VARIANTS = ("diffusers", "ours", "ours+inversion")


def bench_diffusers(args) -> tuple[dict, list]:
    """ours (inversion off: like for like; on: the full method) against AnimateDiffPipeline, interleaved:
    each repeat runs every variant once, in the order of --variants, so that each side sees the same
    drift in load, and repeat i of ours pairs with repeat i of diffusers."""
    from benchmarks.measure import cpu_has_bf16

    dtypes = [d for d in args.dtypes if d != "bfloat16" or cpu_has_bf16()]
    need = args.need_gb if args.size == "full" else 0
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats or 1):
        for dtype in dtypes:
            for variant in args.variants:
                impl, _, inversion = variant.partition("+")
                runs.setdefault(f"{variant} {dtype}", []).append(
                    run_case("video", need, threads=args.threads, impl=impl, dtype=dtype, inversion=bool(inversion),
                             **video_settings(args)))
    figures, rows = {"runs": runs, "ratios": {}, "pairs": {}}, []
    for dtype in dtypes:
        base = runs[f"diffusers {dtype}"]
        base_wall = median([r["wall_s"] for r in base])
        base_unet = median([r["unet_s"] for r in base])
        base_peak = median([r["peak_gb"] for r in base])
        rows.append((f"vs diffusers {dtype}", "AnimateDiffPipeline wall / UNet / peak",
                     f"{base_wall:.1f} s / {base_unet:.1f} s / {base_peak:.2f} GB", ""))
        for variant in [v for v in args.variants if v != "diffusers"]:
            key = f"{variant} {dtype}"
            wall = median([r["wall_s"] for r in runs[key]])
            unet = median([r["unet_s"] for r in runs[key]])
            peak = median([r["peak_gb"] for r in runs[key]])
            ratios = {"time_ratio": wall / base_wall, "unet_ratio": unet / base_unet, "peak_ratio": peak / base_peak}
            figures["ratios"][key] = ratios
            # Each repeat's ours over the diffusers run beside it: the spread says how much the load moved them.
            pairs = [pair_ratios(ours, theirs) for ours, theirs in zip(runs[key], base)]
            figures["pairs"][key] = pairs
            label = "ours, inversion off (like for like)" if variant == "ours" else "ours, full method (inversion on)"
            rows += [
                (f"vs diffusers {dtype}", f"{label} wall / UNet / peak",
                 f"{wall:.1f} s / {unet:.1f} s / {peak:.2f} GB", ""),
                (f"vs diffusers {dtype}", "  time ratio (wall)", f"{ratios['time_ratio']:.3f}",
                 goal(ratios["time_ratio"] <= GOALS["time_ratio"], f"<= {GOALS['time_ratio']}")),
                (f"vs diffusers {dtype}", "  UNet time ratio", f"{ratios['unet_ratio']:.3f}", ""),
                (f"vs diffusers {dtype}", "  peak memory ratio", f"{ratios['peak_ratio']:.3f}",
                 goal(ratios["peak_ratio"] <= GOALS["peak_ratio"], "<= 1.0")),
            ]
            rows += [(f"vs diffusers {dtype}", f"  pair {index}: wall / CPU / UNet / peak ratio (load)",
                      f"{pair['time_ratio']:.3f} / {pair['cpu_ratio']:.3f} / {pair['unet_ratio']:.3f} / "
                      f"{pair['peak_ratio']:.3f} ({pair['load']})", "")
                     for index, pair in enumerate(pairs, start=1)]
    return figures, rows


def pair_ratios(ours: dict, theirs: dict) -> dict:
    """One run of ours over the diffusers run of the same repeat, with the 1-minute load before each."""
    return {"time_ratio": ours["wall_s"] / theirs["wall_s"], "cpu_ratio": ours["cpu_s"] / theirs["cpu_s"],
            "unet_ratio": ours["unet_s"] / theirs["unet_s"], "peak_ratio": ours["peak_gb"] / theirs["peak_gb"],
            "load": f"{ours['load_before']['load_1m']} / {theirs['load_before']['load_1m']}"}


def bench_memory(args) -> tuple[dict, list]:
    need = args.need_gb if args.size == "full" else 0
    figures, rows = {}, []
    for low_memory in (False, True):
        result = run_case("video", need, threads=args.threads, impl="ours", dtype="float32", inversion=True,
                          low_memory=low_memory, **video_settings(args))
        name = "low-memory mode" if low_memory else "default"
        figures[name] = result
        rows += [
            ("memory fp32", f"{name}: peak RSS during the call", f"{result['peak_gb']:.2f} GB",
             goal(result["peak_gb"] <= GOALS["peak_gb"], "<= 8 GB") if args.size == "full" else ""),
            ("memory fp32", f"{name}: resident before the call (weights)",
             f"{result['resident_before_gb']:.2f} GB", ""),
            ("memory fp32", f"{name}: wall", f"{result['wall_s']:.1f} s", ""),
            ("memory fp32", f"{name}: what low_memory=None would choose here",
             result["auto_low_memory_note"] or "the default mode", ""),
        ]
    return figures, rows


def bench_profile(args) -> tuple[dict, list]:
    need = args.need_gb if args.size == "full" else 0
    result = run_case("profile", need, threads=args.threads, size=args.size, frames=args.frames,
                      resolution=args.resolution, rounds=args.repeats or 2)
    seconds = result["seconds"]
    shipped = seconds["per-video context"]
    label = f"profile {args.size} UNet call"
    rows = [
        (label, f"guided call, {args.frames} frames (per-video context)", f"{shipped:.2f} s", ""),
        (label, "  per-frame context (before) / per-video", f"{seconds['per-frame context'] / shipped:.3f}", ""),
        (label, "  content branch share of the call", f"{1 - seconds['content branch off'] / shipped:.3f}", ""),
    ]
    rows += [(label, f"  {name}", f"{100 * share:.1f} % of op time", "") for name, share in result["op_share"].items()]
    return result, rows


def bench_training(args) -> tuple[dict, list]:
    result = run_case("training", threads=args.threads)
    setting = (f"{result['config']} (batch {result['batch_size']}, {result['frames']} frames, {result['size']} px, "
               f"{result['torch_threads']} thread)")
    rate = f"{result['clips_per_s']:.2f} clips/s ({result['s_per_step']:.2f} s/step)"
    return result, [("training", setting, rate, "")]


def bench_startup(args) -> tuple[dict, list]:
    result = run_case("startup", threads=args.threads)
    rows = []
    for name in ("livephoto --help", "python -m livephoto_core.cli --help"):
        if name in result:
            rows.append(("startup", name, f"{result[name]['median_s']:.3f} s",
                         goal(result[name]["median_s"] <= GOALS["help_s"], "<= 1 s")))
    rows.append(("startup", "python -c pass / import torch",
                 f"{result['python -c pass']['median_s']:.3f} / {result['import torch']['median_s']:.3f} s", ""))
    demo = result["demo"]
    rows.append(("startup", f"livephoto animate, {demo['steps']} steps, {demo['model']}",
                 f"{demo['wall_s']:.1f} s" if "wall_s" in demo else f"failed: {demo['error']}", ""))
    return result, rows


def goal(met: bool, text: str) -> str:
    return f"{'met' if met else 'MISSED'} ({text})"


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def worker(case: str, kwargs: dict, threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from benchmarks.cases import CASES
    from benchmarks.measure import machine as machine_facts

    result = CASES[case](**kwargs)
    result["machine"] = machine_facts()
    print(RESULT_MARK + json.dumps(result), flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmarks", nargs="*",
                        help=f"any of {', '.join(BENCHMARKS)}; default: {' '.join(DEFAULT_BENCHMARKS)}")
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=("tiny", "full"), help="overhead: model sizes")
    parser.add_argument("--size", default="full", choices=("tiny", "full"), help="diffusers, memory: model size")
    parser.add_argument("--frames", type=int, default=16, help="diffusers, memory: frames (default 16)")
    parser.add_argument("--resolution", type=int, default=256, help="diffusers, memory: pixels (default 256)")
    parser.add_argument("--overhead-frames", type=int, default=4, help="overhead: frames (default 4)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (default 2)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="diffusers: dtypes")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="diffusers: the pipelines each repeat runs, in this order (default: all three)")
    parser.add_argument("--repeats", type=int,
                        help="runs per configuration, the median reported (default: overhead 10 tiny / 2 full, else 1)")
    parser.add_argument("--threads", type=int, help="torch threads in each case (default: torch's)")
    parser.add_argument("--need-gb", type=float, default=10.0, help="free memory to wait for before a full-size case")
    parser.add_argument("--json", default="benchmarks/results.json", help="where to write the figures")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if "diffusers" not in args.variants:
        parser.error("--variants must include diffusers: the ratios are over it")
    unknown = sorted(set(args.benchmarks) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, json.loads(args.kwargs), args.threads)
        return 0
    selected = args.benchmarks or list(DEFAULT_BENCHMARKS)
    functions = {"overhead": bench_overhead, "diffusers": bench_diffusers, "memory": bench_memory,
                 "profile": bench_profile, "training": bench_training, "startup": bench_startup}
    report = {"date": now(), "machine": machine(), "load_at_start": load(), "command": " ".join(sys.argv),
              "results": {}}
    rows = [("benchmark", "figure", "value", "goal")]
    for name in selected:
        figures, new_rows = functions[name](args)
        report["results"][name] = figures
        rows += new_rows
    report["load_at_end"] = load()
    print(f"{report['machine']['cpu']}, {report['machine']['cores']} cores, torch {report['machine']['torch']}, "
          f"{report['date']}, load {report['load_at_start']['load_1m']} -> {report['load_at_end']['load_1m']}")
    print_table(rows)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
