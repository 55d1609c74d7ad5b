"""Low-memory mode's offloading: the parts a render uses once wait off the UNet's device while idle.

With the UNet on an accelerator they wait in CPU memory. With the UNet on the CPU their weights
wait in a temporary file, the tensors freed (left on the meta device) and their pages handed back
to the system, and are read back for each use.
"""

from __future__ import annotations

import ctypes
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

OFFLOAD_DEVICE = torch.device("cpu")


class IdleOffload:
    """Keeps `modules` off `device` except while in use: ``with offload.visiting(module): ...``.

    Modules it was not given pass through ``visiting`` untouched, so callers need not ask which
    mode they are in. One render at a time: a visit ends by sending the module away again.
    """

    def __init__(self, modules: Iterable[torch.nn.Module], device: torch.device):
        modules = tuple(modules)
        self.device = device
        self.files: dict[int, Path] = {}  # id(module) -> its weights, when idle parts wait in files
        self.idle = {id(module) for module in modules}
        self.visitors: set[int] = set()  # ids of the modules in use now
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
        if id(module) not in self.idle or id(module) in self.visitors:
            yield
            return
        path = self.files.get(id(module))
        # Weights brought here must stay ordinary tensors, usable outside inference mode.
        with torch.inference_mode(False):
            restore_from_file(module, path, self.device) if path else module.to(self.device)
        self.visitors.add(id(module))
        try:
            yield
        finally:
            self.visitors.discard(id(module))
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
