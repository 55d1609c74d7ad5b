"""`--dtype auto`: the precision a render runs in when the user leaves the choice to us.

On the CPU, bf16 pays only where the processor multiplies bf16 in hardware (AMX or AVX512-BF16): oneDNN
then runs the convolutions and matmuls in bf16 directly, and elsewhere it emulates them, slower than
fp32. Its frames stay at least 40 dB PSNR from fp32's, the bound measured (benchmarks/dtype_difference.py)
and documented in docs/performance.md, section 8.
"""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions and matmuls in hardware through oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return False
    # Private probes (torch.cpu's own); a torch without one says no rather than fail.
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(probe is not None and probe() for probe in probes)


def auto_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA (SD-1.5's and AnimateDiff's own), bf16 on a CPU with native bf16, fp32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """A --dtype choice ("auto", "float32", "float16" or "bfloat16") -> the torch dtype for `device`."""
    return auto_dtype(device) if name == "auto" else getattr(torch, name)
