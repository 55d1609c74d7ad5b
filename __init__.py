"""ComfyUI entry point of the LivePhoto node pack (ComfyUI imports this folder as a package).

A missing dependency must not break ComfyUI's start: it becomes one line in the log and the pack
registers no nodes. Imported anywhere else (pytest imports a repository's top-level __init__.py
while collecting), it registers nothing and says nothing.
"""

import logging
import os
import sys

try:
    import folder_paths  # noqa: F401 - a ComfyUI module: only importable inside ComfyUI
except ImportError:
    NODE_CLASS_MAPPINGS = {}
else:
    try:
        from .nodes import comfy_entrypoint
    except ImportError as error:
        if (error.name or "").split(".")[0] in ("comfy", "comfy_api"):
            # ComfyUI's own modules: no pip install brings them, an update of ComfyUI does.
            logging.error(
                "LivePhoto nodes are not loaded: %s. This ComfyUI is older than the pack needs (0.33.0 or "
                "newer, with the comfy_api.latest node API): update ComfyUI",
                error,
            )
        else:
            _requirements = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")
            logging.error(
                "LivePhoto nodes are not loaded: %s. Install the pack's requirements into ComfyUI's Python: "
                "%s -m pip install -r %s",
                error, sys.executable, _requirements,
            )
        NODE_CLASS_MAPPINGS = {}  # a valid, empty V1 pack: ComfyUI logs nothing more about it
