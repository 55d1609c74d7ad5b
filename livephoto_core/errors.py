"""The errors a user can act on.

Every message names the thing that is wrong and what to do instead. Front ends (CLI, nodes) print
``str(error)`` as one line; anything that is not a ``LivePhotoError`` is a bug.
"""


class LivePhotoError(Exception):
    """Base class: a problem with the user's input or files, explained in one line."""


class InvalidInputError(LivePhotoError, ValueError):
    """A parameter, image, prompt or video the pipeline cannot use."""


class ModelFileError(LivePhotoError, ValueError):
    """A weights file that is missing, corrupt, unsafe, or of the wrong kind."""


class OutputExistsError(LivePhotoError, FileExistsError):
    """An output path that already holds a file and overwriting was not asked for."""


class Cancelled(LivePhotoError):
    """Raised from a progress callback to stop inversion or sampling after the current step."""
