"""Save for Phone: the frames as an Android Motion Photo or an Apple Live Photo in ComfyUI's output folder."""

from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..livephoto_core.checks import MAX_FPS, MIN_FPS
from ..livephoto_core.phone import LIVE_PHOTO, LIVE_PHOTO_SUFFIX, MOTION_PHOTO, NAMES
from ..livephoto_core.video import DEFAULT_FPS, write_video

# What the user picks -> the name ending that selects the format (phone.py).
FORMATS = {
    "Android Motion Photo (.MP.jpg)": ".MP.jpg",
    "Apple Live Photo (.jpg + .mov)": LIVE_PHOTO_SUFFIX,
}


def output_path(filename_prefix: str, ending: str, width: int, height: int) -> tuple[Path, str]:
    """The next free name in the output folder, numbered as Save Image numbers its files; -> (path, subfolder)."""
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, folder_paths.get_output_directory(), width, height
    )
    return Path(folder) / f"{name}_{counter:05}_{ending}", subfolder


def workflow_metadata(hidden) -> dict:
    """The prompt and workflow, as ComfyUI's own savers embed them: the settings behind the frames."""
    found = {"prompt": hidden.prompt, "workflow": (hidden.extra_pnginfo or {}).get("workflow")}
    return {key: value for key, value in found.items() if value is not None}


class SaveForPhone(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LivePhotoSaveForPhone",
            display_name="Save Live Photo for Phone",
            category="LivePhoto",
            description="Saves the frames as a phone's live photo: an Android Motion Photo (one .MP.jpg, the video "
            "inside) or an Apple Live Photo (a .jpg and a .mov sharing an identifier; import both). The settings go "
            "into the files and a .json beside them.",
            inputs=[
                io.Image.Input("frames", tooltip="The animation, one IMAGE per frame (VAE Decode of the sampler's "
                               "latent); at least 2 frames."),
                io.String.Input("filename_prefix", default="LivePhoto",
                                tooltip="Name of the files in the output folder (a subfolder/ may lead it); a number "
                                "follows, as Save Image numbers its files, so nothing is overwritten."),
                io.Combo.Input("format", options=list(FORMATS), tooltip=f"{NAMES[MOTION_PHOTO]}: opens in Google "
                               f"Photos and Android galleries. {NAMES[LIVE_PHOTO]}: import both files into Photos "
                               f"on an iPhone or Mac."),
                io.Float.Input("fps", default=DEFAULT_FPS, min=MIN_FPS, max=MAX_FPS, step=0.5,
                               tooltip="Frames per second of the video (the sampler's frames are meant for 8)."),
                io.Image.Input("photo", optional=True,
                               tooltip="The photo that was animated (Load Image): the still the phone shows, at its "
                               "own resolution. Without it, the first frame."),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, frames, filename_prefix: str, format: str, fps: float, photo=None) -> io.NodeOutput:
        height, width = frames.shape[1:3]
        path, subfolder = output_path(filename_prefix, FORMATS[format], width, height)
        metadata = {"fps": fps, **workflow_metadata(cls.hidden)}
        still = None if photo is None else photo[..., :3]
        jpeg = write_video(frames[..., :3], path, fps=fps, metadata=metadata, still=still)
        # The JPEG is the preview: ComfyUI shows it as it shows Save Image's files.
        return io.NodeOutput(ui={"images": [{"filename": jpeg.name, "subfolder": subfolder, "type": "output"}]})
