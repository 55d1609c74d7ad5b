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
from ..loading.files import load_state_dict

MIN_ALPHA, MAX_ALPHA = 0.0, 4.0  # the authors use 1.2 (README) to 1.4 (script default)


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


def read_lora(
    path: str | os.PathLike, base_shapes: Mapping[str, tuple[int, ...]], role: str = "--wan-lora"
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{target: (B, A)} from ``path``, each target checked to be a 2-D parameter of the base it is merged into."""
    name = Path(path).name
    tensors, _ = load_state_dict(path)
    targets = lora_targets(tensors)
    if not targets:
        raise ModelFileError(f"{name} holds no LoRA weights (no lora_A/lora_B or lora_up/lora_down keys); {role} needs "
                             f"the LivePhoto-Wan2.1 lora.safetensors")
    pairs = {}
    for target, (up_key, down_key) in sorted(targets.items()):
        if target not in base_shapes:
            raise ModelFileError(f"{name}: the LoRA key {up_key} names {target}, which the Wan DiT does not have; "
                                 f"{role} needs the LoRA made for this base (LivePhoto-Wan2.1's lora.safetensors)")
        if down_key not in tensors:
            raise ModelFileError(f"{name}: {up_key} has no partner {down_key}; the file is damaged: download it again")
        up, down = tensors[up_key], tensors[down_key]
        shape = tuple(base_shapes[target])
        if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0] or (up.shape[0], down.shape[1]) != shape:
            raise ModelFileError(f"{name}: the LoRA for {target} is {list(up.shape)} x {list(down.shape)}, which does "
                                 f"not make the parameter's {list(shape)}; {role} needs the LoRA made for this base")
        pairs[target] = (up, down)
    return pairs


def merge_lora(state_dict: dict[str, torch.Tensor], pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
               alpha: float) -> None:
    """W += alpha * (B @ A) in place, in float32: one rounding to the model's dtype later instead of one per step."""
    for target, (up, down) in pairs.items():
        state_dict[target] = state_dict[target].float() + alpha * (up.float() @ down.float())
