"""PingPong: an IMAGE batch played forward then back, for a video that loops with no jump."""

from __future__ import annotations

from comfy_api.latest import io

from ..livephoto_core.video import ping_pong


class PingPong(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LivePhotoPingPong",
            display_name="Ping-Pong Loop",
            category="LivePhoto",
            description="Plays the frames forward, then back without repeating either end (0 1 2 3 -> 0 1 2 3 2 1): "
            "saved as a looping WebP or GIF, the clip has no jump from its last frame to its first.",
            inputs=[io.Image.Input("frames", tooltip="The clip as an IMAGE batch, e.g. from VAE Decode.")],
            outputs=[io.Image.Output(display_name="frames", tooltip="2F - 2 frames: forward, then back.")],
        )

    @classmethod
    def execute(cls, frames) -> io.NodeOutput:
        return io.NodeOutput(ping_pong(frames))
