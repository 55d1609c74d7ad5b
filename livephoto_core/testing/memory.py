"""Peak memory of a piece of code, measured in a fresh Python process (the tests' own peak only grows)."""

import json
import os
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]


def peak_rss_mib(code: str, timeout: float = 120) -> tuple[float, dict]:
    """Run `code` in a new interpreter (the repository importable, one thread) -> (its peak resident memory in MiB,
    ru_maxrss, and the JSON object it printed last, or {})."""
    script = (
        f"{code}\n"
        "import resource\n"
        "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                            env=environment, cwd=_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"the measured code failed: {result.stderr[-2000:]}")
    lines = result.stdout.splitlines()
    printed = [line for line in lines if line.startswith("{")]
    return int(lines[-1].split()[1]) / 1024, json.loads(printed[-1]) if printed else {}
