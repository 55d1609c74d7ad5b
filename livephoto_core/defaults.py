"""The defaults and fixed sizes that more than one front end uses, each in one place.

The CLI's flags, the Python API's keyword arguments, the node widgets and LivePhotoConfig's fields
take their defaults from here. Kept free of imports, so the CLI reads it before torch loads.
"""

CONTENT_SCALE = 1.0  # the content attention's weight in training; 0 turns the photo's tokens off
