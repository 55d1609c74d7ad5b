"""livephoto_core: LivePhoto (arXiv 2312.02928) on SD-1.5, as a standalone library.

``load_pipeline(...)`` builds a ``LivePhotoPipeline`` from local files (the bundled demo model with no
arguments); ``check_output(path)`` refuses an output ``video.write_video`` could not write, before any
of that work; the ComfyUI nodes use the same core through ``render``. docs/architecture.md maps the
modules. Imports are lazy so that ``livephoto --help`` starts without loading torch.
"""

__version__ = "0.1.0"

_LAZY = {
    "load_pipeline": "loading.assemble",
    "LivePhotoPipeline": "pipeline",
    "LivePhotoOutput": "pipeline",
    "check_output": "video",
    "auto_dtype": "precision",
    "LivePhotoConfig": "config",
    "LivePhotoError": "errors",
    "InvalidInputError": "errors",
    "ModelFileError": "errors",
    "OutputExistsError": "errors",
    "Cancelled": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
