"""Context Windows: how the LivePhoto Sampler samples more frames than one window, and loops."""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from ..livephoto_core.defaults import DEFAULT_WINDOW_SCHEDULE, WINDOW_SCHEDULES
from .handle import LIVEPHOTO_WINDOWS

MAX_WINDOW = 32  # AnimateDiff's motion modules' longest clip; the sampler checks the model's own


@dataclass(frozen=True)
class NodeWindows:
    """What flows along a LIVEPHOTO_WINDOWS link; None: the sampler's default for that model."""

    length: int | None
    overlap: int | None
    schedule: str
    loop: bool


class ContextWindows(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LivePhotoContextWindows",
            display_name="LivePhoto Context Windows",
            category="LivePhoto",
            description="Sets how the LivePhoto Sampler renders more frames than its motion modules see at once "
            "(overlapping windows, blended at every step) and whether the video loops seamlessly. Without this "
            "node the sampler uses the defaults: the model's clip length, half of it overlapping, static, no loop.",
            inputs=[
                io.Int.Input(
                    "window_length", default=0, min=0, max=MAX_WINDOW,
                    tooltip="Frames the motion modules see at once; 0: the clip length the model was trained with "
                    "(16 for SD-1.5 checkpoints, 8 for the demo model). At most what its motion modules handle.",
                ),
                io.Int.Input(
                    "window_overlap", default=-1, min=-1, max=MAX_WINDOW - 1,
                    tooltip="Frames neighbouring windows share, blended; -1: half the window. Less than the window "
                    "length; more overlap means smoother seams and more windows to run.",
                ),
                io.Combo.Input(
                    "schedule", options=list(WINDOW_SCHEDULES), default=DEFAULT_WINDOW_SCHEDULE,
                    tooltip="static: the same windows at every step; uniform: the windows shift at each step so no "
                    "seam stays in one place.",
                ),
                io.Boolean.Input(
                    "loop", default=False,
                    tooltip="A seamless loop: the windows close over the end, so the last frame flows into the "
                    "first. Needs more frames than one window. (Ping-Pong Loop plays forward then back instead.)",
                ),
            ],
            outputs=[
                io.Custom(LIVEPHOTO_WINDOWS).Output(
                    display_name="windows", tooltip="For the LivePhoto Sampler's windows input."
                ),
            ],
        )

    @classmethod
    def execute(cls, window_length: int, window_overlap: int, schedule: str, loop: bool) -> io.NodeOutput:
        return io.NodeOutput(NodeWindows(
            length=window_length or None, overlap=None if window_overlap < 0 else window_overlap,
            schedule=schedule, loop=loop,
        ))
