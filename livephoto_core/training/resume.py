"""Training checkpoints: written atomically, kept last-K, read back for an exact resume.

A checkpoint is a folder ``<output_dir>/checkpoints/step-NNNNNN/``:

- ``trainable.safetensors``: every trained parameter, by name (``ema.safetensors``: their EMA);
- ``optimizer.pt``: the optimizer state (``torch.load(weights_only=True)`` reads it);
- ``state.json``: step, LR scheduler, intensity thresholds, the config, the python / numpy /
  torch RNG states of every process, and the strategy that wrote it (``ddp`` or ``fsdp``).

A sharded (FSDP) run writes instead of the first three files what every process holds of them:

- ``accelerate/``: ``Accelerator.save_state`` (model and optimizer as sharded
  ``torch.distributed.checkpoint`` folders, and accelerate's own per-process RNG files);
- ``ema/``: the EMA's shards (``torch.distributed.checkpoint``).

The folder is written under a temporary name and renamed into place only when every file is on
disk, so a crash or a full disk leaves the previous checkpoints as they were and no half-written
``step-*`` folder; an existing checkpoint folder is never replaced. In a sharded checkpoint every
process writes into the main process's temporary folder, which is renamed once all are done.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import InvalidInputError, OutputExistsError
from ..fileio import fsync_directory, fsync_file

CHECKPOINT_PATTERN = re.compile(r"step-(\d+)")
SHARDED_STATE = "accelerate"  # the folder of Accelerator.save_state in a sharded checkpoint
SHARDED_EMA = "ema"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


@contextmanager
def atomic_directory(final: Path):
    """Yield a temporary folder beside `final`; it becomes `final` only if the block succeeds.

    `final` is reserved first with mkdir (which fails if the name is taken, so nothing is ever
    replaced), then the finished folder is renamed over the empty reservation in one step. On any
    exception the temporary folder and the reservation are removed.
    """
    final = Path(final)
    if final.exists():
        raise OutputExistsError(f"{final} already exists; it is never overwritten")
    temporary = final.with_name(f".{final.name}.tmp-{secrets.token_hex(4)}")
    temporary.mkdir(parents=True)
    reserved = False
    try:
        yield temporary
        for file in temporary.rglob("*"):
            if file.is_file():
                fsync_file(file)
        try:
            final.mkdir()
        except FileExistsError:
            raise OutputExistsError(f"{final} already exists; it is never overwritten") from None
        reserved = True
        os.replace(temporary, final)
        fsync_directory(final.parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        if reserved and final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        raise


@contextmanager
def shared_atomic_directory(final: Path, accelerator):
    """atomic_directory for a folder that every process writes into: the main process reserves it and
    names its temporary folder to the others, and renames it once every process has left the block.
    Every process must enter; each yields the same temporary folder (a shared filesystem)."""
    from accelerate.utils import broadcast_object_list

    final = Path(final)
    if not accelerator.is_main_process:
        [temporary] = broadcast_object_list([None])
        if temporary is None:  # the main process found `final` taken and raises the same
            raise OutputExistsError(f"{final} already exists; it is never overwritten")
        yield Path(temporary)
        accelerator.wait_for_everyone()
        return
    if final.exists():
        broadcast_object_list([None])
        raise OutputExistsError(f"{final} already exists; it is never overwritten")
    with atomic_directory(final) as temporary:
        broadcast_object_list([str(temporary)])
        yield temporary
        accelerator.wait_for_everyone()  # every process's shards are on disk before the rename


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.fullmatch(p.name))]
    return sorted(found)


def resolve_resume(folder: Path, resume: str | None) -> Path | None:
    """`resume` = None (start fresh), "latest" (the newest checkpoint, None if there is none) or a path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(folder)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise InvalidInputError(f"{resume} is not a training checkpoint folder (no state.json); pass latest or a step-* folder")
    return path


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and temporary folders that a crash left behind."""
    for _, path in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(path)
    for leftover in folder.glob(".step-*.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


# --- RNG states as JSON --------------------------------------------------------------------------


def rng_state() -> dict:
    """This process's python, numpy and torch (CPU and CUDA) RNG states, JSON-serialisable."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": numpy_state,
        "torch": _bytes(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {**numpy_state["state"], "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(numpy_state)
    torch.set_rng_state(_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])


def _bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode("ascii")


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


# --- checkpoints ---------------------------------------------------------------------------------


@dataclass
class TrainingCheckpoint:
    step: int
    trainable: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict | None
    state: dict  # the rest of state.json: lr_scheduler, thresholds, config, rng (one per process)
    path: Path | None = None

    @property
    def strategy(self) -> str:
        return self.state.get("strategy", "ddp")  # checkpoints from before FSDP are DDP's


def save_checkpoint(
    folder: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None,
    optimizer: dict,
    state: dict,
) -> Path:
    """Write checkpoint `step` into `folder` atomically (see the module docstring)."""
    final = folder / checkpoint_name(step)
    with atomic_directory(final) as temporary:
        save_file(_cpu(trainable), str(temporary / "trainable.safetensors"))
        if ema is not None:
            save_file(_cpu(ema), str(temporary / "ema.safetensors"))
        torch.save(optimizer, temporary / "optimizer.pt")
        (temporary / "state.json").write_text(json.dumps({"step": step, **state}), encoding="utf-8")
    return final


def save_sharded_checkpoint(folder: Path, step: int, accelerator, ema: dict | None, state: dict) -> Path:
    """Write checkpoint `step` of a sharded run into `folder` atomically; every process calls this and
    writes its own shards (see the module docstring)."""
    import torch.distributed.checkpoint as dcp

    final = folder / checkpoint_name(step)
    with shared_atomic_directory(final, accelerator) as temporary:
        accelerator.save_state(str(temporary / SHARDED_STATE))
        if ema is not None:
            dcp.save(ema, checkpoint_id=str(temporary / SHARDED_EMA))
        if accelerator.is_main_process:
            (temporary / "state.json").write_text(json.dumps({"step": step, **state}), encoding="utf-8")
    return final


def load_checkpoint(path: Path, map_location="cpu") -> TrainingCheckpoint:
    """A checkpoint's state.json and, for a DDP checkpoint, its tensors (a sharded one's are read by
    Accelerator.load_state once the model is sharded)."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        if state.get("strategy") == "fsdp":
            return TrainingCheckpoint(state.pop("step"), {}, None, None, state, path)
        trainable = load_file(str(path / "trainable.safetensors"), device=str(map_location))
        ema_file = path / "ema.safetensors"
        ema = load_file(str(ema_file), device=str(map_location)) if ema_file.is_file() else None
        optimizer = torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever json, safetensors or torch raise for a damaged file
        raise InvalidInputError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); "
                                f"resume from an older one (pass its folder to --resume)") from None
    return TrainingCheckpoint(state.pop("step"), trainable, ema, optimizer, state, path)


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
