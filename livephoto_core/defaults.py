"""The defaults and fixed sizes that more than one part of the house uses, each in one place.

The CLI's flags, the Python API's keyword arguments, the node widgets, LivePhotoConfig's fields
and the checks' messages take their values from here. A checkpoint's own config (frames, default
intensity, inversion endpoints) then wins where a front end has it at hand. Kept free of imports,
so the CLI reads it before torch loads.
"""

CLIP_CONTEXT = 77  # CLIP's token window: the start token, up to 75 prompt tokens, the end token (padding after)

DEFAULT_INTENSITY = 5  # motion level, 1 (still) .. 10 (most motion)
DEFAULT_NUM_FRAMES = 16
# DPM-Solver++ 2M at 10 steps renders the motion benchmark's direction, zoom, intensity ranking and frame 0
# as DDIM at AnimateDiff's 25 steps do, with 0.4x the UNet calls (docs/performance.md, "Fewer steps"). 6 steps did
# too on the demo model; 10 keeps a margin for full-size models' image detail, which that benchmark cannot see
# (DPM-Solver++'s authors give 15-20 steps for high-quality guided samples).
DEFAULT_STEPS = 10
DEFAULT_GUIDANCE_SCALE = 7.5  # AnimateDiff's
DEFAULT_SCHEDULER = "dpmpp_2m"
DEFAULT_CONTENT_SCALE = 1.0  # the content attention's weight in training; 0 turns the photo's tokens off
# Prior inversion (paper eq. 3): the inverted photo's weight in the first and the last frame's starting noise.
DEFAULT_INVERSION_START = 0.033
DEFAULT_INVERSION_END = 0.016
# Videos longer than a window (livephoto_core.windows): where the windows lie at each step.
WINDOW_SCHEDULES = ("static", "uniform")
DEFAULT_WINDOW_SCHEDULE = "static"

# Videos read (livephoto_core.video): a decoded frame as numpy RGB is 3 bytes a pixel and the intensity's float64
# work on it many more, so the pixels of one frame set what a read costs. 4096x2304 holds 4K UHD and DCI 4K
# (3840x2160, 4096x2160) in either orientation, the largest video phones record but 8K: 28 MB a frame as RGB.
MAX_FRAME_PIXELS = 4096 * 2304
# Frames one read decodes, those dropped before its start and between its strides included: 10 000 are 5.5
# minutes at 30 fps. Memory does not grow with them (video.iter_frames); this bounds the time a file can take.
MAX_DECODED_FRAMES = 10_000
# What video.read_video may hold at once: 75 frames of 4K, 345 of 1080p; longer clips go through iter_frames.
MAX_CLIP_BYTES = 2 * 2**30
