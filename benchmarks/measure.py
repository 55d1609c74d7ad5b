"""Measuring tools: peak resident memory, time spent inside a module's forward, machine facts."""

from __future__ import annotations

import datetime
import os
import platform
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def rss_gb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e9


class PeakMemory:
    """Peak resident memory (GB) over a `with` block.

    On Linux the kernel's high-water mark (VmHWM) is reset at the start (``5 > /proc/self/clear_refs``)
    and read at the end: exact, whatever the block allocates and frees. Elsewhere a thread samples the
    resident size every 10 ms, which can miss a short spike.
    """

    def __init__(self):
        self.peak_gb = float("nan")
        self.start_gb = float("nan")
        self.exact = False  # True when the kernel's high-water mark gave the peak

    def __enter__(self):
        self.start_gb = rss_gb()
        self.exact = reset_high_water_mark()
        if not self.exact:
            self._stop = threading.Event()
            self._samples = [self.start_gb]
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self._samples.append(rss_gb())

    def __exit__(self, *exc):
        if self.exact:
            self.peak_gb = high_water_mark_gb()
        else:
            self._stop.set()
            self._thread.join()
            self.peak_gb = max(self._samples + [rss_gb()])


def reset_high_water_mark() -> bool:
    try:
        CLEAR_REFS.write_text("5")
        return high_water_mark_gb() is not None
    except OSError:
        return False


def high_water_mark_gb() -> float | None:
    found = re.search(r"VmHWM:\s+(\d+) kB", STATUS.read_text()) if STATUS.exists() else None
    return int(found.group(1)) * 1024 / 1e9 if found else None


class ForwardTimer:
    """Wall time inside `module`'s forward calls (outermost calls only), in total and per call, via forward hooks."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.seconds = 0.0
        self.calls = 0
        self.call_seconds: list[float] = []  # each outermost call's own time, in call order
        self._depth = 0
        self._started = 0.0

    def __enter__(self):
        self._handles = [
            self.module.register_forward_pre_hook(self._pre),
            self.module.register_forward_hook(self._post),
        ]
        return self

    def _pre(self, *args):
        if self._depth == 0:
            self._started = time.perf_counter()
        self._depth += 1

    def _post(self, *args):
        self._depth -= 1
        if self._depth == 0:
            elapsed = time.perf_counter() - self._started
            self.seconds += elapsed
            self.calls += 1
            self.call_seconds.append(elapsed)

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()


@contextmanager
def timed_function(namespace, name: str, totals: dict[str, float]):
    """Replace ``namespace.name`` for the block with a wrapper that adds its wall time to ``totals[name]``."""
    original = getattr(namespace, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - started

    setattr(namespace, name, wrapper)
    try:
        yield
    finally:
        setattr(namespace, name, original)


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    found = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return set(found.group(1).split()) if found else set()


def cpu_has_bf16() -> bool:
    """Native bf16 dot products (AVX512-BF16 or AMX), where a bf16 run is worth timing."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_model() -> str:
    try:
        found = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import psutil

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "bf16_native": cpu_has_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def load() -> dict:
    """How busy the machine is: timings taken while others run are slower and noisier."""
    import psutil

    one, five, _ = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2),
            "available_gb": round(psutil.virtual_memory().available / 1e9, 1)}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
