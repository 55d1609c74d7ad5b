"""Exponential moving average of the trained weights, for validation and export when it is on."""

from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    """Shadow copies (float32) of named parameters.

    After optimizer step t (1-based) each shadow moves towards its parameter with
    ``decay_t = min(decay, (1 + t) / (10 + t))``: diffusers' EMA warm-up, so that the early
    average is not dominated by the random initial weights.
    """

    def __init__(self, parameters: dict[str, torch.nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in parameters.items()}

    @torch.no_grad()
    def update(self, parameters: dict[str, torch.nn.Parameter], step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, param in parameters.items():
            self.shadow[name].lerp_(param.detach().float(), 1 - decay)

    def load_state_dict(self, shadow: dict[str, torch.Tensor]) -> None:
        if set(shadow) != set(self.shadow):
            raise ValueError("the EMA weights in the checkpoint do not match the trained parameters")
        for name, value in shadow.items():
            self.shadow[name].copy_(value)

    @contextmanager
    def applied(self, parameters: dict[str, torch.nn.Parameter]):
        """Put the EMA weights into the parameters for the block; the trained ones come back after."""
        saved = {name: p.detach().clone() for name, p in parameters.items()}
        _copy_into(parameters, self.shadow)
        try:
            yield
        finally:
            _copy_into(parameters, saved)


@torch.no_grad()
def _copy_into(parameters: dict[str, torch.nn.Parameter], values: dict[str, torch.Tensor]) -> None:
    for name, param in parameters.items():
        param.copy_(values[name])
