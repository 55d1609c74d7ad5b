"""EstimateIntensity: a clip's motion intensity level (1 still .. 10 most motion), shown on the node."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..livephoto_core.intensity import DEFAULT_THRESHOLDS, LEVELS, measure_intensity
from .handle import LIVEPHOTO_MODEL, LivePhotoModelHandle


class EstimateIntensity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LivePhotoEstimateIntensity",
            display_name="Estimate Motion Intensity",
            category="LivePhoto",
            description="Measures how much a clip moves: the mean SSIM of adjacent frames, binned into LivePhoto's "
            "intensity levels 1 (still) to 10 (most motion).",
            inputs=[
                io.Image.Input("frames", tooltip="The clip as an IMAGE batch, one frame per entry (at least 2)."),
                io.Custom(LIVEPHOTO_MODEL).Input(
                    "livephoto_model",
                    optional=True,
                    tooltip="Use this model's level thresholds (fitted on its training set); without it, built-in ones.",
                ),
            ],
            outputs=[
                io.Int.Output(display_name="level", tooltip=f"The intensity level, 1 (still) to {LEVELS} (most motion)."),
                io.Float.Output(display_name="mean_ssim", tooltip="Mean SSIM of adjacent grayscale frames (1 = no change)."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, frames, livephoto_model: LivePhotoModelHandle | None = None) -> io.NodeOutput:
        if livephoto_model is None:
            thresholds, source = DEFAULT_THRESHOLDS, "built-in thresholds"
        else:
            thresholds, source = livephoto_model.model.config.intensity_thresholds, f"{livephoto_model.name} thresholds"
        measured = measure_intensity(frames[..., :3], thresholds)
        summary = (
            f"intensity {measured.level} of {LEVELS} (mean adjacent SSIM {measured.mean_ssim:.4f}, "
            f"{frames.shape[0]} frames, {source})"
        )
        return io.NodeOutput(measured.level, measured.mean_ssim, ui=ui.PreviewText(summary))
