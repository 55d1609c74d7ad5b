"""Context windows: videos longer than the motion modules' window, and closed loops.

The motion modules attend over at most one window of frames (16 for the SD-1.5 config, 8 for the
demo model). A longer video is denoised as overlapping windows at every step, in the manner of
AnimateDiff-Evolved's context options: each window's frames go through the guided UNet call on
their own, the predictions are blended where windows overlap (a pyramid: a frame counts most in the
windows where it sits near the middle), and one scheduler step moves the whole video. Every window
keeps the photo as its reference latent and the same text, content and per-frame intensity.

Schedules (where the windows lie at each step):

- ``static``: the same windows every step, starting every ``length - overlap`` frames, the last one
  pulled back to end on the last frame (AnimateDiff-Evolved's "standard static");
- ``uniform``: the same grid shifted at each step by a fraction of the stride that runs through
  0, 1/2, 1/4, 3/4, ... (AnimateDiff-Evolved's ``ordered_halving``), so no seam stays in one place
  (its "standard uniform", stride 1).

A loop (``loop=True``) closes the windows over the end of the video: the window after the last
frame continues with the first, so the motion modules see frame F-1 followed by frame 0 and
denoise the two as neighbours.

The frame-embedding channel says how far a frame is from the photo, n / (F - 1) in a clip of F
frames (paper §3.3). Across windows it is the frame's distance in the video, counted in the
window's frames and held at 1 from the window's last position on (``clamped``): the first window
sees exactly what a one-window render sees, and later frames are "as far from the photo as
training went". The alternatives (``window``: each window its own 0..1 ramp, every window starting
at the photo; ``video``: the whole video's ramp sliced) are kept for the measurements in
benchmarks/long_video.py, whose figures (docs/long-videos.md) chose ``clamped``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_window_length, check_window_overlap
from .defaults import DEFAULT_WINDOW_SCHEDULE, WINDOW_SCHEDULES
from .errors import InvalidInputError

FRAME_EMBEDDINGS = ("clamped", "window", "video")


@dataclass(frozen=True)
class ContextWindows:
    """How a video is cut into the windows the motion modules see."""

    length: int  # frames in one window: at most the motion modules' longest clip
    overlap: int  # frames two neighbouring windows share, 0 .. length - 1
    schedule: str = DEFAULT_WINDOW_SCHEDULE  # a name in WINDOW_SCHEDULES
    loop: bool = False  # the last frame flows into the first
    frame_embedding: str = "clamped"  # a name in FRAME_EMBEDDINGS (see the module's docstring)

    def __post_init__(self):
        if self.schedule not in WINDOW_SCHEDULES:
            raise InvalidInputError(
                f"unknown window schedule {self.schedule!r}; choose one of: {', '.join(WINDOW_SCHEDULES)}"
            )
        if not isinstance(self.loop, bool):
            raise InvalidInputError(f"loop must be True or False; got {self.loop!r}")
        if self.frame_embedding not in FRAME_EMBEDDINGS:
            raise InvalidInputError(
                f"unknown frame embedding {self.frame_embedding!r}; choose one of: {', '.join(FRAME_EMBEDDINGS)}"
            )

    def check(self, num_frames: int, max_window: int) -> ContextWindows:
        """These windows for a video of `num_frames` on motion modules that handle `max_window` frames."""
        check_window_length(self.length, max_window)
        check_window_overlap(self.overlap, self.length)
        if self.loop and num_frames <= self.length:
            raise InvalidInputError(
                f"a loop needs at least two windows, so that one holds the last frame and the first: ask for more "
                f"than {self.length} frames (the window length) or a shorter window; got {num_frames} frames"
            )
        return self

    @property
    def stride(self) -> int:
        return self.length - self.overlap

    def is_single(self, num_frames: int) -> bool:
        """Whether the whole video is one window: sampled exactly as before windows existed."""
        return num_frames <= self.length and not self.loop

    def windows(self, num_frames: int, step: int) -> list[list[int]]:
        """The frame indices of each window at sampling step `step` (0-based)."""
        if self.is_single(num_frames):
            return [list(range(num_frames))]
        offset = int(ordered_halving(step) * self.stride) if self.schedule == "uniform" else 0
        if self.loop:
            starts = [(offset + start) % num_frames for start in range(0, num_frames, self.stride)]
            return [[(start + i) % num_frames for i in range(self.length)] for start in starts]
        last = num_frames - self.length
        grid = range(offset - self.stride, last + self.stride, self.stride)  # reaches past both ends
        starts = sorted({min(max(start, 0), last) for start in grid})
        return [list(range(start, start + self.length)) for start in starts]

    def frame_positions(self, num_frames: int) -> torch.Tensor:
        """Each frame's distance from the photo in the video, 0..1, [F]: the frame embedding of a
        one-window render, held at 1 beyond the window; the prior's weights follow it too."""
        span = min(num_frames, self.length) - 1
        if span == 0:
            return torch.zeros(num_frames)
        return (torch.arange(num_frames, dtype=torch.float32) / span).clamp(max=1)

    def window_embedding(self, frames: list[int], num_frames: int) -> torch.Tensor:
        """The frame-embedding channel's values for one window's frames, [len(frames)]."""
        if self.frame_embedding == "window":
            return self.frame_positions(len(frames))
        if self.frame_embedding == "video":
            return torch.tensor(frames, dtype=torch.float32) / (num_frames - 1)
        return self.frame_positions(num_frames)[frames]


def ordered_halving(step: int) -> float:
    """0, 1/2, 1/4, 3/4, 1/8, ...: the bits of `step` reversed behind the binary point (AnimateDiff-Evolved)."""
    return int(f"{step:064b}"[::-1], 2) / 2**64


def blend_weights(length: int) -> torch.Tensor:
    """A window's weight for each of its positions, a pyramid 1, 2, ..., 2, 1: overlapping windows
    cross-fade instead of cutting at a seam."""
    position = torch.arange(length)
    return torch.minimum(position + 1, length - position).float()


def context_windows(
    num_frames: int, max_window: int, trained_frames: int, length=None, overlap=None,
    schedule: str = DEFAULT_WINDOW_SCHEDULE, loop: bool = False,
) -> ContextWindows:
    """The front ends' windows: `length` defaults to the clip length the model was trained on
    (`trained_frames`), at most the motion modules' longest (`max_window`); `overlap` to half the
    window. Checked against the video and the motion modules before any model runs."""
    length = check_window_length(min(trained_frames, max_window) if length is None else length, max_window)
    overlap = check_window_overlap(length // 2 if overlap is None else overlap, length)
    return ContextWindows(length, overlap, schedule, loop).check(num_frames, max_window)
