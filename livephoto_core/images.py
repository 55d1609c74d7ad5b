"""Input photos: load anything photo-like as 8-bit RGB, then fit it to the model's size.

Transparent photos are composited on white: the colour hidden under transparent pixels is
arbitrary (often black or leftovers from editing), white is what viewers show. 16-bit images are
scaled to 8 bits (value / 257), not clipped. EXIF orientation is applied, as viewers do.
"""

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidInputError
from .fileio import check_input_path

MIN_SIDE = 32
MAX_SIDE = 8192
SIZE_MULTIPLE = 8  # the VAE downsamples by 8

_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


@dataclass(frozen=True, eq=False)
class PreparedPhoto:
    """A photo at the model's size.

    ``pixels``: float32 ``[3, H, W]`` in 0..1 at exactly the requested (height, width);
    ``original_size``: (height, width) of the loaded photo; ``resized``: whether the size changed
    (scaled and/or cropped); ``note``: one line saying what was done, empty when nothing was.
    """

    pixels: torch.Tensor
    original_size: tuple[int, int]
    resized: bool
    note: str


def load_image(source) -> Image.Image:
    """An 8-bit RGB PIL image from a path, a PIL image, or an array/tensor ``[H, W, 3]`` / ``[1, H, W, 3]``.

    Arrays and tensors are float in 0..1 (ComfyUI IMAGE; values outside are clipped) or uint8.
    A JPEG that carries more images (MPO) gives its first. Refuses files that are not images, batches
    of several images (animations, multi-page TIFFs), and images under 32 or over 8192 pixels on a
    side (the size is read from the file header, before decoding).
    """
    if isinstance(source, (str, os.PathLike)):
        return _load_file(Path(source))
    if isinstance(source, Image.Image):
        _check_side_lengths(source.size, "the photo")
        return _to_rgb(ImageOps.exif_transpose(source))
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return _from_array(source)
    raise InvalidInputError(
        f"a photo must be a file path, a PIL image, or an array/tensor [H, W, 3]; got {type(source).__name__}"
    )


def prepare_photo(image, size: tuple[int, int]) -> PreparedPhoto:
    """Scale ``image`` (anything ``load_image`` takes) to cover ``size`` = (height, width), then centre-crop.

    Cropping to the target aspect first and scaling that region to exactly ``size`` with Lanczos
    (Pillow's resampling is antialiased when shrinking) gives the exact size without rounding drift.
    """
    height, width = _checked_size(size)
    photo = load_image(image)
    original_width, original_height = photo.size
    if (original_height, original_width) == (height, width):
        return PreparedPhoto(_to_tensor(photo), (original_height, original_width), resized=False, note="")

    fitted = ImageOps.fit(photo, (width, height), method=Image.Resampling.LANCZOS)
    cropped = original_width * height != original_height * width
    scale = max(width / original_width, height / original_height)
    action = "upscaled" if scale > 1 else "resized" if scale < 1 else ""
    if cropped:
        action = f"{action} and centre-cropped" if action else "centre-cropped"
    note = f"photo {original_width}x{original_height} was {action} to {width}x{height}"
    return PreparedPhoto(_to_tensor(fitted), (original_height, original_width), resized=True, note=note)


def _load_file(path: Path) -> Image.Image:
    check_input_path(path, "an image file (PNG, JPEG, WebP, ...)")
    try:
        with warnings.catch_warnings():
            # Our own side limit (checked below, from the header) is stricter than Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_side_lengths(image.size, str(path))
                # MPO: a JPEG with more images after the photo (the other view of a stereo pair, a depth or HDR
                # gain map), as many cameras and phones write; the first image is the photo, and Pillow opens at it.
                if getattr(image, "n_frames", 1) > 1 and image.format != "MPO":  # animated GIF/WebP/PNG, TIFF pages
                    raise InvalidInputError(
                        f"{path} holds {image.n_frames} frames; LivePhoto animates one still photo: save the frame "
                        f"you want as a PNG or JPEG and pass that"
                    )
                return _to_rgb(ImageOps.exif_transpose(image))
    except InvalidInputError:  # our own size verdict: a ValueError, but not a damaged file
        raise
    except UnidentifiedImageError:
        raise InvalidInputError(f"{path} is not an image file Pillow can read") from None
    except Image.DecompressionBombError:
        raise InvalidInputError(
            f"{path} is too large to open safely; photos may be at most {MAX_SIDE} px on a side"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's errors for damaged files
        raise InvalidInputError(f"{path} is damaged or truncated: {error}") from None


def _from_array(source) -> Image.Image:
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu()
        array = (source.float() if source.is_floating_point() else source).numpy()
    else:
        array = np.asarray(source)
    if array.ndim == 4 and array.shape[-1] == 3:
        if array.shape[0] != 1:
            raise InvalidInputError(
                f"expected one photo, got a batch of {array.shape[0]} images; pick one (e.g. ImageFromBatch)"
            )
        array = array[0]
    if array.ndim != 3 or array.shape[-1] != 3:
        raise InvalidInputError(f"a photo array must be [H, W, 3] or [1, H, W, 3] RGB; got shape {array.shape}")
    _check_side_lengths((array.shape[1], array.shape[0]), "the photo")
    if array.dtype == np.uint8:
        return Image.fromarray(array)  # uint8 [H, W, 3]: RGB (passing the mode is deprecated)
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInputError(f"a photo array must be float in 0..1 or uint8; got {array.dtype}")
    if not np.isfinite(array).all():
        raise InvalidInputError("the photo contains NaN or infinite values")
    return Image.fromarray(np.rint(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8))


def _check_side_lengths(width_height: tuple[int, int], name: str) -> None:
    width, height = width_height
    if min(width, height) < MIN_SIDE:
        raise InvalidInputError(f"{name} is {width}x{height}; photos must be at least {MIN_SIDE} px on each side")
    if max(width, height) > MAX_SIDE:
        raise InvalidInputError(f"{name} is {width}x{height}; photos may be at most {MAX_SIDE} px on a side")


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        # 16-bit data (Pillow opens 16-bit PNG/TIFF as I;16 or I): 0..65535 -> 0..255.
        values = np.asarray(image, dtype=np.float64)
        gray = np.rint(np.clip(values / 257, 0, 255)).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")  # uint8 [H, W]: L
    if image.mode == "F":  # 32-bit float images hold 0..1
        values = np.asarray(image, dtype=np.float64)
        gray = np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")  # uint8 [H, W]: L
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        background = Image.new("RGBA", image.size, _WHITE)
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _checked_size(size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
        exact = all(float(v) == int(v) for v in size)
    except (TypeError, ValueError):
        raise InvalidInputError(f"size must be (height, width); got {size!r}") from None
    if exact and height > 0 and width > 0 and height % SIZE_MULTIPLE == 0 and width % SIZE_MULTIPLE == 0:
        return height, width

    def below(v: int) -> int:
        return max(SIZE_MULTIPLE, v // SIZE_MULTIPLE * SIZE_MULTIPLE)

    def above(v: int) -> int:
        return max(SIZE_MULTIPLE, -(-v // SIZE_MULTIPLE) * SIZE_MULTIPLE)

    smaller, larger = (below(height), below(width)), (above(height), above(width))
    options = f"{smaller}" if smaller == larger else f"{smaller} or {larger}"
    raise InvalidInputError(
        f"size (height, width) = {tuple(size)} must be positive multiples of {SIZE_MULTIPLE}; nearest valid: {options}"
    )


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255)
