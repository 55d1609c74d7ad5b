"""The run's record: log.jsonl (one JSON object per event, main process only) with its console
lines, and the window of steps a progress line sums up."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


class RunLog:
    """One JSON object per line in <output_dir>/log.jsonl (main process only), and a console line."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def __call__(self, record: dict, console: str | None = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        if console:
            logger.info(console)


@dataclass
class Window:
    """Sums over the steps since the last progress line."""

    loss: float = 0.0
    seconds: float = 0.0
    count: int = 0
    data: float = 0.0
    model: float = 0.0
    replaced: int = 0

    def add(self, loss: float, seconds: float) -> None:
        self.loss += loss
        self.seconds += seconds
        self.count += 1

    def clips_per_s(self, clips_per_step: int) -> float:
        return clips_per_step * self.count / self.seconds

    def summary(self, clips_per_step: int) -> dict:
        return {"loss": self.loss / self.count, "s_per_step": self.seconds / self.count,
                "clips_per_s": self.clips_per_s(clips_per_step), "data_s_per_step": self.data / self.count,
                "model_s_per_step": self.model / self.count, "replaced_videos": self.replaced}
