"""Input photos: conversions to 8-bit RGB, refusals, resizing to the model's size."""

import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from livephoto_core.errors import InvalidInputError
from livephoto_core.images import PreparedPhoto, load_image, prepare_photo


def rgb_array(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` but holds no pixels: decoding would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    path.write_bytes(signature + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


# --- load_image: conversions ------------------------------------------------------------------


def test_rgb_file_loads_exactly(tmp_path):
    array = rgb_array()
    Image.fromarray(array).save(tmp_path / "photo.png")
    image = load_image(tmp_path / "photo.png")
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), array)
    np.testing.assert_array_equal(np.asarray(load_image(str(tmp_path / "photo.png"))), array)


def test_rgba_is_composited_on_white(tmp_path):
    colour = np.array([200, 40, 10], np.uint8)
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[:, :10, 3] = 0
    rgba[:, 10:20, 3] = 255
    rgba[:, 20:, 3] = 128
    Image.fromarray(rgba).save(tmp_path / "cutout.png")
    result = np.asarray(load_image(tmp_path / "cutout.png")).astype(int)
    expected_half = 128 / 255 * colour + (1 - 128 / 255) * 255
    assert (result[:, :10] == 255).all()
    assert (result[:, 10:20] == colour).all()
    assert np.abs(result[:, 20:] - expected_half).max() <= 1


def test_la_and_grayscale_become_equal_channels(tmp_path):
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (40, 1))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    result = np.asarray(load_image(tmp_path / "gray.png"))
    assert (result == gray[..., None]).all()
    la = Image.merge("LA", [Image.fromarray(gray), Image.new("L", (64, 40), 255)])
    assert (np.asarray(load_image(la)) == gray[..., None]).all()


def test_palette_images_with_and_without_transparency():
    array = rgb_array(40, 40)
    palette_image = Image.fromarray(array).quantize(16)
    expected = np.asarray(palette_image.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(palette_image)), expected)
    index = palette_image.getpixel((0, 0))
    palette_image.info["transparency"] = index
    result = np.asarray(load_image(palette_image))
    transparent = np.asarray(palette_image) == index
    assert (result[transparent] == 255).all()
    np.testing.assert_array_equal(result[~transparent], expected[~transparent])


def test_bilevel_image():
    image = Image.new("1", (40, 32), 0)
    image.putpixel((3, 4), 1)
    result = np.asarray(load_image(image))
    assert result.shape == (32, 40, 3) and result[4, 3].tolist() == [255, 255, 255] and result.sum() == 3 * 255


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 40).round().astype(np.uint16).reshape(40, 64)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as opened:
        assert opened.mode == "I;16"  # the case being tested
    result = np.asarray(load_image(tmp_path / "deep.png"))
    expected = np.rint(values / 257).astype(np.uint8)
    assert (result == expected[..., None]).all()
    assert 120 <= result[20, 32, 0] <= 135  # mid-grey stays mid-grey


def test_32_bit_integer_image_is_read_as_16_bit_range():
    values = np.linspace(0, 65535, 64 * 40).round().astype(np.int32).reshape(40, 64)
    image = Image.fromarray(values)
    assert image.mode == "I"
    assert (np.asarray(load_image(image)) == np.rint(values / 257).astype(np.uint8)[..., None]).all()


def test_cmyk_and_float_images():
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red
    assert np.asarray(load_image(cmyk))[0, 0].tolist() == [255, 0, 0]
    values = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    result = np.asarray(load_image(Image.fromarray(values)))
    assert (result == np.rint(values * 255).astype(np.uint8)[..., None]).all()


def test_exif_orientation_is_applied(tmp_path):
    array = rgb_array(40, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: show rotated 90 degrees clockwise
    Image.fromarray(array).save(tmp_path / "phone.png", exif=exif)
    result = np.asarray(load_image(tmp_path / "phone.png"))
    np.testing.assert_array_equal(result, np.rot90(array, k=-1))


def write_mpo(path, images, exif=None) -> None:
    """A JPEG with more images appended (MPO), as stereo cameras and phones write them (depth, HDR gain map)."""
    first, *others = (Image.fromarray(image) for image in images)
    first.save(path, "MPO", save_all=True, append_images=others, quality=100, **({"exif": exif} if exif else {}))
    with Image.open(path) as written:  # the layout the fix is for, as Pillow reads it
        assert (written.format, written.n_frames) == ("MPO", len(images))


@pytest.mark.parametrize("count", [2, 3])
def test_a_jpeg_carrying_more_images_gives_its_first(tmp_path, count):
    photo, *others = (np.full((40, 64, 3), colour, np.uint8) for colour in ((200, 30, 30), (30, 30, 200), (9, 9, 9)))
    write_mpo(tmp_path / "camera.jpg", [photo, *others][:count])
    result = np.asarray(load_image(tmp_path / "camera.jpg"))
    assert result.shape == (40, 64, 3) and np.abs(result.astype(int) - photo).max() <= 2  # JPEG rounding


def test_the_first_image_of_an_mpo_is_turned_as_its_exif_says(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: show rotated 90 degrees clockwise
    write_mpo(tmp_path / "phone.jpg", [np.zeros((40, 64, 3), np.uint8), np.zeros((40, 64, 3), np.uint8)], exif)
    assert load_image(tmp_path / "phone.jpg").size == (40, 64)


def test_an_animation_is_still_refused_as_several_frames(tmp_path):
    frames = [Image.fromarray(np.full((40, 64, 3), i * 60, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidInputError, match="clip.gif holds 3 frames; LivePhoto animates one still photo"):
        load_image(tmp_path / "clip.gif")


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_float_arrays_and_tensors(kind, batched):
    values = np.random.default_rng(1).random((40, 48, 3)).astype(np.float32)
    values[0, 0] = [1.01, -0.01, 0.5]  # ComfyUI images can stray slightly outside 0..1
    source = values[None] if batched else values
    if kind == "torch":
        source = torch.from_numpy(source)
    expected = np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(source)), expected)


def test_uint8_array_and_half_precision_tensor():
    array = rgb_array()
    np.testing.assert_array_equal(np.asarray(load_image(array)), array)
    tensor = torch.from_numpy(array).to(torch.float16) / 255
    np.testing.assert_array_equal(np.asarray(load_image(tensor)), array)


# --- load_image: refusals ---------------------------------------------------------------------


def test_text_file_named_png_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(InvalidInputError, match="notes.png is not an image file"):
        load_image(path)


def test_truncated_file_is_refused(tmp_path):
    Image.fromarray(rgb_array(200, 200)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match="cut.png is damaged or truncated"):
        load_image(tmp_path / "cut.png")


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InvalidInputError, match="is a folder; pass an image file"):
        load_image(tmp_path)


def test_batch_is_refused():
    with pytest.raises(InvalidInputError) as caught:
        load_image(torch.rand(3, 40, 40, 3))
    assert str(caught.value) == "expected one photo, got a batch of 3 images; pick one (e.g. ImageFromBatch)"


@pytest.mark.parametrize("shape", [(40, 40), (40, 40, 4), (3, 40, 40), (1, 1, 40, 40, 3)])
def test_other_array_shapes_are_refused(shape):
    with pytest.raises(InvalidInputError, match=r"\[H, W, 3\] or \[1, H, W, 3\]"):
        load_image(np.zeros(shape, np.float32))


def test_bad_array_values_are_refused():
    with pytest.raises(InvalidInputError, match="NaN"):
        load_image(np.full((40, 40, 3), np.nan, np.float32))
    with pytest.raises(InvalidInputError, match="float in 0..1 or uint8"):
        load_image(np.zeros((40, 40, 3), np.int64))
    with pytest.raises(InvalidInputError, match="file path, a PIL image"):
        load_image(12)


def test_side_length_limits(tmp_path):
    assert load_image(np.zeros((32, 32, 3), np.uint8)).size == (32, 32)
    with pytest.raises(InvalidInputError, match="31x64; photos must be at least 32 px"):
        load_image(np.zeros((64, 31, 3), np.uint8))
    Image.new("RGB", (8193, 32)).save(tmp_path / "wide.png")
    with pytest.raises(InvalidInputError) as caught:
        load_image(tmp_path / "wide.png")
    assert str(caught.value) == f"{tmp_path / 'wide.png'} is 8193x32; photos may be at most 8192 px on a side"


def test_size_is_checked_from_the_header_before_decoding(tmp_path):
    # Headers without pixels: had the file been decoded first, the error would say "damaged".
    png_header_only(tmp_path / "big.png", 10000, 10000)  # over our limit, under Pillow's bomb error
    with pytest.raises(InvalidInputError) as caught:
        load_image(tmp_path / "big.png")
    assert str(caught.value) == f"{tmp_path / 'big.png'} is 10000x10000; photos may be at most 8192 px on a side"
    png_header_only(tmp_path / "tiny.png", 20, 20)
    with pytest.raises(InvalidInputError) as caught:
        load_image(tmp_path / "tiny.png")
    assert str(caught.value) == f"{tmp_path / 'tiny.png'} is 20x20; photos must be at least 32 px on each side"


def test_decompression_bomb_becomes_our_error(tmp_path):
    png_header_only(tmp_path / "bomb.png", 40000, 40000)  # Pillow itself refuses this at open
    with pytest.raises(InvalidInputError, match="bomb.png is too large to open safely; .* at most 8192"):
        load_image(tmp_path / "bomb.png")


# --- prepare_photo ----------------------------------------------------------------------------


def reference_fit(image: Image.Image, height: int, width: int) -> np.ndarray:
    """Centre crop to the target aspect, then one Lanczos resize of that box."""
    scale = max(width / image.width, height / image.height)
    box_width, box_height = width / scale, height / scale
    left, top = (image.width - box_width) / 2, (image.height - box_height) / 2
    box = (left, top, left + box_width, top + box_height)
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS, box=box))


@pytest.mark.parametrize(
    "photo_size, target",
    [((768, 1024), (256, 256)), ((1024, 768), (256, 256)), ((300, 500), (256, 384)), ((100, 90), (256, 256))],
)
def test_prepare_photo_fills_the_target_exactly(photo_size, target):
    image = Image.fromarray(rgb_array(*photo_size))
    prepared = prepare_photo(image, target)
    assert isinstance(prepared, PreparedPhoto)
    assert prepared.pixels.shape == (3, *target) and prepared.pixels.dtype == torch.float32
    assert 0 <= prepared.pixels.min() and prepared.pixels.max() <= 1
    assert prepared.original_size == photo_size and prepared.resized
    as_uint8 = (prepared.pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(as_uint8, reference_fit(image, *target))


def test_prepare_photo_keeps_the_centre():
    photo = np.zeros((256, 768, 3), np.uint8)
    photo[:, 256:512] = [0, 255, 0]  # the middle third is green, the sides black
    pixels = prepare_photo(photo, (128, 128)).pixels[:, :, 2:-2]  # Lanczos reaches 2 px past the crop
    assert (pixels[1] > 0.99).all() and (pixels[[0, 2]] < 0.01).all()


def test_prepare_photo_notes():
    assert prepare_photo(np.zeros((768, 1024, 3), np.uint8), (256, 256)).note == (
        "photo 1024x768 was resized and centre-cropped to 256x256"
    )
    assert prepare_photo(np.zeros((512, 512, 3), np.uint8), (256, 256)).note == "photo 512x512 was resized to 256x256"
    assert prepare_photo(np.zeros((64, 64, 3), np.uint8), (256, 256)).note == "photo 64x64 was upscaled to 256x256"
    assert prepare_photo(np.zeros((300, 256, 3), np.uint8), (256, 256)).note == (
        "photo 256x300 was centre-cropped to 256x256"
    )


def test_prepare_photo_leaves_a_photo_of_the_right_size_alone():
    array = rgb_array(64, 96)
    prepared = prepare_photo(array, (64, 96))
    assert not prepared.resized and prepared.note == "" and prepared.original_size == (64, 96)
    np.testing.assert_array_equal(prepared.pixels.permute(1, 2, 0).numpy(), array / np.float32(255))


@pytest.mark.parametrize(
    "size, nearest",
    [((250, 256), "(248, 256) or (256, 256)"), ((256, 260), "(256, 256) or (256, 264)"), ((0, 256), "(8, 256)")],
)
def test_prepare_photo_refuses_sizes_that_are_not_multiples_of_8(size, nearest):
    with pytest.raises(InvalidInputError, match=re.escape(f"multiples of 8; nearest valid: {nearest}")):
        prepare_photo(np.zeros((64, 64, 3), np.uint8), size)


def test_prepare_photo_refuses_malformed_sizes():
    with pytest.raises(InvalidInputError, match=r"size must be \(height, width\)"):
        prepare_photo(np.zeros((64, 64, 3), np.uint8), (256,))
