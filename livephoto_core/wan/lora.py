"""Merge the authors' ``lora.safetensors`` into the original-key DiT weights: W += alpha * (B @ A).

The rule and the key names are the authors' loader's (``GeneralLoRAFromPeft`` in
LivePhoto-Wan2.1/PusaV1/diffsynth/models/lora.py): PEFT keys ``<param>.lora_B[.default].weight`` with
their ``lora_A`` partner and an optional ``diffusion_model.`` prefix, else ``<param>.lora_up/lora_down.weight``.
There is no rank or alpha normalisation. Their loader skips a LoRA silently when any target is not a
parameter; here that is an error naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import ModelFileError
from ..loading.files import load_state_dict, read_safetensors_header


def lora_targets(keys) -> dict[str, tuple[str, str]]:
    """{target parameter name: (up/B key, down/A key)} from a LoRA's key names, as the authors' loader pairs them."""
    targets = {}
    for key in keys:
        if ".lora_B." in key:
            parts = key.split(".")
            at = parts.index("lora_B")
            if len(parts) > at + 2:  # lora_B.default.weight: the PEFT adapter name goes too
                parts.pop(at + 1)
            parts.pop(at)
            if parts[0] == "diffusion_model":
                parts.pop(0)
            targets[".".join(parts)] = (key, key.replace(".lora_B.", ".lora_A."))
    if targets:
        return targets
    for key in keys:
        if key.endswith(".lora_up.weight"):
            targets[key.replace(".lora_up.weight", ".weight")] = (key, key.replace(".lora_up.", ".lora_down."))
    return targets


def check_lora_shapes(
    name: str, lora_shapes: Mapping[str, tuple[int, ...]], base_shapes: Mapping[str, tuple[int, ...]],
    role: str = "--wan-lora",
) -> dict[str, tuple[str, str]]:
    """The LoRA's {target: (B key, A key)}, each target checked to be a 2-D parameter of the base it is merged
    into and each pair to make that parameter's shape (shapes only: a header is enough)."""
    targets = lora_targets(lora_shapes)
    if not targets:
        raise ModelFileError(f"{name} holds no LoRA weights (no lora_A/lora_B or lora_up/lora_down keys); {role} needs "
                             f"the LivePhoto-Wan2.1 lora.safetensors")
    for target, (up_key, down_key) in sorted(targets.items()):
        if target not in base_shapes:
            raise ModelFileError(f"{name}: the LoRA key {up_key} names {target}, which the Wan DiT does not have; "
                                 f"{role} needs the LoRA made for this base (LivePhoto-Wan2.1's lora.safetensors)")
        if down_key not in lora_shapes:
            raise ModelFileError(f"{name}: {up_key} has no partner {down_key}; the file is damaged: download it again")
        up, down, shape = tuple(lora_shapes[up_key]), tuple(lora_shapes[down_key]), tuple(base_shapes[target])
        if len(up) != 2 or len(down) != 2 or up[1] != down[0] or (up[0], down[1]) != shape:
            raise ModelFileError(f"{name}: the LoRA for {target} is {list(up)} x {list(down)}, which does not make "
                                 f"the parameter's {list(shape)}; {role} needs the LoRA made for this base")
    return targets


def check_lora_file(path: str | os.PathLike, base_shapes: Mapping[str, tuple[int, ...]],
                    role: str = "--wan-lora") -> None:
    """``check_lora_shapes`` from the file's header alone (before anything is loaded)."""
    check_lora_shapes(Path(path).name, read_safetensors_header(path)[0], base_shapes, role)


def read_lora(
    path: str | os.PathLike, base_shapes: Mapping[str, tuple[int, ...]], role: str = "--wan-lora"
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{target: (B, A)} from ``path``, checked by ``check_lora_shapes``."""
    tensors, _ = load_state_dict(path)
    shapes = {key: tuple(value.shape) for key, value in tensors.items()}
    targets = check_lora_shapes(Path(path).name, shapes, base_shapes, role)
    return {target: (tensors[up], tensors[down]) for target, (up, down) in targets.items()}


def merge_lora(state_dict: dict[str, torch.Tensor], pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
               alpha: float) -> None:
    """W += alpha * (B @ A) in place, in float32: one rounding to the model's dtype later instead of one per step."""
    for target, (up, down) in pairs.items():
        state_dict[target] = state_dict[target].float() + alpha * (up.float() @ down.float())
