"""Low-memory mode: when to choose it, and its offloading: the parts a render uses once wait off the
UNet's device while idle.

With the UNet on an accelerator they wait in CPU memory. With the UNet on the CPU their weights
wait in a temporary file, the tensors freed (left on the meta device) and their pages handed back
to the system, and are read back for each use.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

OFFLOAD_DEVICE = torch.device("cpu")
MEMINFO = Path("/proc/meminfo")

# What a default-mode render adds to the resident weights at its peak, per frame pixel and byte of the UNet's
# dtype: full-size SD-1.5 in fp32 at 16 x 256 x 256 added 2.61 GB in a run that kept its freed memory, about
# 1 GB more than renders now add (docs/performance.md, section 3): the choice errs towards low-memory mode.
RENDER_BYTES_PER_FRAME_PIXEL_BYTE = 2.61e9 / (16 * 256 * 256 * 4)


def render_bytes(num_frames: int, height: int, width: int, dtype: torch.dtype) -> int:
    """About what a default-mode render of this size adds to the resident weights at its peak."""
    return round(RENDER_BYTES_PER_FRAME_PIXEL_BYTE * num_frames * height * width * dtype.itemsize)


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a render can still take on `device`: the kernel's MemAvailable for the CPU on Linux, the
    driver's free memory on CUDA; None where it cannot be known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu" and MEMINFO.exists():
        found = re.search(r"^MemAvailable:\s+(\d+) kB", MEMINFO.read_text(), re.MULTILINE)
        return int(found.group(1)) * 1024 if found else None
    return None


def choose_low_memory(device: torch.device, num_frames: int, height: int, width: int,
                      dtype: torch.dtype) -> str | None:
    """Why low-memory mode is needed on `device` now, with the model loaded, for renders of this size (the
    model's own), or None when a default-mode render fits in the memory free (or that is unknown)."""
    free, need = free_memory_bytes(device), render_bytes(num_frames, height, width, dtype)
    if free is None or free >= need:
        return None
    return (f"low-memory mode chosen: {free / 1e9:.1f} GB free on {device.type}, where a default-mode render of "
            f"{num_frames} x {height} x {width} adds about {need / 1e9:.1f} GB")


class IdleOffload:
    """Keeps `modules` off `device` except while in use: ``with offload.visiting(module): ...``.

    Modules it was not given pass through ``visiting`` untouched, so callers need not ask which
    mode they are in. Renders in several threads may visit a module together: it comes to the device
    for the first and leaves after the last.
    """

    def __init__(self, modules: Iterable[torch.nn.Module], device: torch.device):
        modules = tuple(modules)
        self.device = device
        self.files: dict[int, Path] = {}  # id(module) -> its weights, when idle parts wait in files
        self.idle = {id(module) for module in modules}
        self.visitors: dict[int, int] = {}  # id(module) -> how many visits to it are under way
        self.lock = threading.Lock()  # one thread at a time moves a module and counts its visitors
        if not self.idle:
            return
        if device == OFFLOAD_DEVICE:
            folder = Path(tempfile.mkdtemp(prefix="livephoto-offload-"))
            weakref.finalize(self, shutil.rmtree, folder, True)
            for index, module in enumerate(modules):
                self.files[id(module)] = offload_to_file(module, folder / f"{index}.safetensors")
        else:
            for module in modules:
                module.to(OFFLOAD_DEVICE)

    @contextmanager
    def visiting(self, module: torch.nn.Module) -> Iterator[None]:
        """Bring `module`'s weights to the device for the duration of its use (nested visits: once)."""
        key = id(module)
        if key not in self.idle:
            yield
            return
        path = self.files.get(key)
        with self.lock:
            if not self.visitors.get(key):
                # Weights brought here must stay ordinary tensors, usable outside inference mode.
                with torch.inference_mode(False):
                    restore_from_file(module, path, self.device) if path else module.to(self.device)
            self.visitors[key] = self.visitors.get(key, 0) + 1
        try:
            yield
        finally:
            with self.lock:
                self.visitors[key] -= 1
                if not self.visitors[key]:
                    with torch.inference_mode(False):
                        leave_for_file(module) if path else module.to(OFFLOAD_DEVICE)


def offload_to_file(module: torch.nn.Module, path: Path) -> Path:
    """Write `module`'s parameters to `path` and free them (left on the meta device) -> path."""
    from safetensors.torch import save_file

    save_file({name: param.detach().contiguous() for name, param in module.named_parameters()}, str(path))
    leave_for_file(module)
    return path


def leave_for_file(module: torch.nn.Module) -> None:
    for name, param in list(module.named_parameters()):
        set_parameter(module, name, torch.empty_like(param, device="meta"), param.requires_grad)
    return_freed_memory()


def return_freed_memory() -> None:
    """Hand the C heap's free pages back to the system. glibc keeps what freed tensors below its mmap
    threshold leave behind, so weights moved to a file would otherwise still count as resident."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc; other C libraries have no malloc_trim
    except (OSError, AttributeError):
        pass


def restore_from_file(module: torch.nn.Module, path: Path, device: torch.device) -> None:
    from safetensors.torch import load_file

    flags = {name: param.requires_grad for name, param in module.named_parameters()}
    for name, value in load_file(str(path), device=str(device)).items():
        set_parameter(module, name, value, flags[name])


def set_parameter(module: torch.nn.Module, name: str, value: torch.Tensor, requires_grad: bool) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner), leaf, torch.nn.Parameter(value, requires_grad=requires_grad))
