"""The pack's model folders in ComfyUI's folder_paths, and the choices the loader node offers.

``models/livephoto`` holds LivePhoto checkpoints (and may hold the DINOv2 they use); motion modules
live where AnimateDiff-Evolved keeps them, ``models/animatediff_models``; a DINOv2 may also sit in
``models/clip_vision``. Users add more folders with ``livephoto:`` / ``animatediff_models:`` lines
in extra_model_paths.yaml.
"""

from __future__ import annotations

import os

import folder_paths

from ..livephoto_core.errors import InvalidInputError

LIVEPHOTO_FOLDER = "livephoto"
MOTION_MODULE_FOLDER = "animatediff_models"
DINOV2_FOLDERS = (LIVEPHOTO_FOLDER, "clip_vision")
NONE = "none"


def register_model_folders() -> None:
    """Add models/livephoto and models/animatediff_models with the weight-file extensions set.

    A name first seen by ``add_model_folder_path`` (e.g. from extra_model_paths.yaml) gets an empty
    extension set, which lets every file through; so the extensions are always added here.
    """
    for name in (LIVEPHOTO_FOLDER, MOTION_MODULE_FOLDER):
        default = os.path.join(folder_paths.models_dir, name)
        paths, extensions = folder_paths.folder_names_and_paths.get(name, ([], set()))
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[name] = (paths, set(extensions) | set(folder_paths.supported_pt_extensions))


def livephoto_choices() -> list[str]:
    return folder_paths.get_filename_list(LIVEPHOTO_FOLDER)


def dinov2_choices() -> list[str]:
    """'none' (use the clip_vision input), then "<folder>/<file>" for every file of the DINOv2 folders."""
    return [NONE] + [f"{folder}/{name}" for folder in DINOV2_FOLDERS for name in folder_paths.get_filename_list(folder)]


def motion_module_choices() -> list[str]:
    return [NONE] + folder_paths.get_filename_list(MOTION_MODULE_FOLDER)


def full_path(folder: str, name: str) -> str:
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise InvalidInputError(
            f"{name} is not in models/{folder} (or a '{folder}' folder of extra_model_paths.yaml); "
            f"put it there and press R to refresh the lists"
        )
    return path


def dinov2_path(choice: str) -> str:
    folder, _, name = choice.partition("/")
    if folder not in DINOV2_FOLDERS or not name:
        raise InvalidInputError(f"dinov2 {choice!r} is not one of the listed files; pick one from the list")
    return full_path(folder, name)
