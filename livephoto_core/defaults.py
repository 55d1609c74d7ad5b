"""The defaults and fixed sizes that more than one part of the house uses, each in one place.

The CLI's flags, the Python API's keyword arguments, the node widgets, LivePhotoConfig's fields
and the checks' messages take their values from here. A checkpoint's own config (frames, default
intensity, inversion endpoints) then wins where a front end has it at hand. Kept free of imports,
so the CLI reads it before torch loads.
"""

CLIP_CONTEXT = 77  # CLIP's token window: the start token, up to 75 prompt tokens, the end token (padding after)

DEFAULT_INTENSITY = 5  # motion level, 1 (still) .. 10 (most motion)
DEFAULT_NUM_FRAMES = 16
DEFAULT_STEPS = 25  # AnimateDiff's
DEFAULT_GUIDANCE_SCALE = 7.5  # AnimateDiff's
DEFAULT_SCHEDULER = "ddim"
DEFAULT_CONTENT_SCALE = 1.0  # the content attention's weight in training; 0 turns the photo's tokens off
# Prior inversion (paper eq. 3): the inverted photo's weight in the first and the last frame's starting noise.
DEFAULT_INVERSION_START = 0.033
DEFAULT_INVERSION_END = 0.016
# Videos longer than a window (livephoto_core.windows): where the windows lie at each step.
WINDOW_SCHEDULES = ("static", "uniform")
DEFAULT_WINDOW_SCHEDULE = "static"
