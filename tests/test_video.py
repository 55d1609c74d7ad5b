"""Video files: round trips through PyAV / Pillow, metadata, atomic writes, refusals."""

import os
import threading
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from livephoto_core import fileio, video
from livephoto_core.errors import InvalidInputError, LivePhotoError, OutputExistsError
from livephoto_core.defaults import MAX_FRAME_PIXELS
from livephoto_core.fileio import atomic_write, atomic_write_all
from livephoto_core.video import (
    SUPPORTED_EXTENSIONS,
    VideoClip,
    iter_frames,
    metadata_sidecar_path,
    read_metadata,
    read_video,
    write_video,
)

METADATA = {
    "seed": 1234,
    "prompt": "waves crash — on rocks",  # non-ASCII on purpose
    "settings": {"steps": 25, "cfg": 7.5},
    "hashes": ["ab", "cd"],
}


def palette_clip(frames: int = 6, height: int = 48, width: int = 64) -> np.ndarray:
    """Moving coloured blocks with 64 distinct colours: within one GIF palette, so GIF is exact too."""
    y, x = np.mgrid[0:height, 0:width]
    clip = []
    for t in range(frames):
        index = ((x + 3 * t) // 8 + (y // 8) * 3) % 64
        clip.append(np.stack([index * 4, 255 - index * 4, (index * 37) % 256], axis=-1))
    return np.array(clip, dtype=np.uint8)


def smooth_clip(frames: int = 8, height: int = 64, width: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / 64.0
    clip = [
        np.stack([0.5 + 0.4 * np.sin(x * 3 + t / 3), 0.5 + 0.4 * np.cos(y * 2 - t / 4), 0.5 + 0.3 * np.sin(x + y)], -1)
        for t in range(frames)
    ]
    return np.array(clip, dtype=np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def pyav_frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def pil_frames(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])


def leftovers(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if ".tmp-" in name)


# --- round trips ------------------------------------------------------------------------------


def test_webp_round_trip_is_lossless(tmp_path):
    clip = palette_clip()
    path = write_video(clip, tmp_path / "out.webp", fps=8)
    read = read_video(path)
    np.testing.assert_array_equal(read.frames, clip)
    np.testing.assert_array_equal(pil_frames(path), clip)  # an independent reader agrees
    assert read.fps == pytest.approx(8.0)
    with Image.open(path) as image:
        assert image.info["loop"] == 0
        durations = []
        for frame in ImageSequence.Iterator(image):
            frame.load()
            durations.append(frame.info["duration"])
    assert durations == [125] * len(clip)


def test_gif_round_trip_is_exact_within_its_palette(tmp_path):
    clip = palette_clip()
    path = write_video(clip, tmp_path / "out.gif", fps=8)
    read = read_video(path)
    np.testing.assert_array_equal(read.frames, clip)
    np.testing.assert_array_equal(pil_frames(path), clip)
    assert read.fps == pytest.approx(100 / 12)  # 125 ms rounds to 12 centiseconds
    with Image.open(path) as image:
        assert image.info["loop"] == 0


def test_gif_of_many_colours_stays_close(tmp_path):
    clip = smooth_clip()
    path = write_video(clip, tmp_path / "out.gif")
    assert psnr(pyav_frames(path), np.rint(clip * 255)) > 30


def test_mp4_round_trip_is_close_on_smooth_content(tmp_path):
    clip = smooth_clip()
    path = write_video(torch.from_numpy(clip), tmp_path / "out.mp4", fps=12)
    read = read_video(path)
    assert read.frames.shape == (8, 64, 96, 3) and read.frames.dtype == np.uint8
    assert read.fps == pytest.approx(12.0)
    assert psnr(read.frames, np.rint(clip * 255)) > 25
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"


def test_mp4_falls_back_to_mpeg4_without_libx264(tmp_path, monkeypatch):
    monkeypatch.setattr(video.av, "codecs_available", av.codecs_available - {"libx264"})
    clip = smooth_clip()
    path = write_video(clip, tmp_path / "out.mp4")
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert psnr(read_video(path).frames, np.rint(clip * 255)) > 25


def test_mp4_pads_odd_sizes_to_even(tmp_path):
    clip = smooth_clip(height=33, width=47)
    read = read_video(write_video(clip, tmp_path / "odd.mp4"))
    assert read.frames.shape == (8, 34, 48, 3)
    assert psnr(read.frames[:, :33, :47], np.rint(clip * 255)) > 25


@pytest.mark.parametrize("extension", SUPPORTED_EXTENSIONS)
def test_identical_consecutive_frames_are_all_kept(tmp_path, extension):
    a, b = palette_clip(frames=2)
    clip = np.stack([a, a, a, b, b, a])
    path = write_video(clip, tmp_path / f"still{extension}")
    assert len(read_video(path).frames) == 6
    assert len(pyav_frames(path) if extension == ".mp4" else pil_frames(path)) == 6


@pytest.mark.parametrize("extension", SUPPORTED_EXTENSIONS)
def test_single_frame_videos(tmp_path, extension):
    clip = palette_clip(frames=1)
    assert len(read_video(write_video(clip, tmp_path / f"one{extension}")).frames) == 1


def test_float_frames_are_rounded_and_clipped(tmp_path):
    clip = np.zeros((2, 40, 40, 3), np.float32)
    clip[:, :, :20] = 1.2  # slightly out of range, as VAE output can be
    clip[:, :, 20:] = 0.5
    read = read_video(write_video(clip, tmp_path / "f.webp")).frames
    assert (read[:, :, :20] == 255).all() and (read[:, :, 20:] == 128).all()


# --- metadata ---------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", SUPPORTED_EXTENSIONS)
def test_metadata_round_trips_through_sidecar_and_file(tmp_path, extension):
    path = write_video(palette_clip(), tmp_path / f"meta{extension}", metadata=METADATA)
    sidecar = tmp_path / f"meta{extension}.json"
    assert metadata_sidecar_path(path) == sidecar and sidecar.is_file()
    assert read_metadata(path) == METADATA
    sidecar.unlink()
    assert read_metadata(path) == METADATA  # the copy inside the file


def test_embedded_metadata_is_readable_by_the_usual_tools(tmp_path):
    import json

    gif = write_video(palette_clip(), tmp_path / "m.gif", metadata=METADATA)
    with Image.open(gif) as image:
        assert json.loads(image.info["comment"]) == METADATA
    mp4 = write_video(palette_clip(), tmp_path / "m.mp4", metadata=METADATA)
    with av.open(str(mp4)) as container:
        assert json.loads(container.metadata["comment"]) == METADATA
    webp = write_video(palette_clip(), tmp_path / "m.webp", metadata=METADATA)
    with Image.open(webp) as image:
        assert b"livephoto:metadata" in image.info["xmp"]


def test_no_metadata_reads_as_empty(tmp_path):
    for extension in SUPPORTED_EXTENSIONS:
        path = write_video(palette_clip(), tmp_path / f"plain{extension}")
        assert not metadata_sidecar_path(path).exists()
        assert read_metadata(path) == {}


def test_foreign_gif_comment_reads_as_empty(tmp_path):
    frames = [Image.fromarray(frame) for frame in palette_clip()]
    path = tmp_path / "foreign.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], comment=b"made elsewhere")
    assert read_metadata(path) == {}


def test_bad_metadata_is_refused_before_writing(tmp_path):
    with pytest.raises(InvalidInputError, match="JSON-serialisable"):
        write_video(palette_clip(), tmp_path / "x.webp", metadata={"tensor": torch.zeros(1)})
    with pytest.raises(InvalidInputError, match="must be a dict"):
        write_video(palette_clip(), tmp_path / "x.webp", metadata=[1, 2])
    assert os.listdir(tmp_path) == []


def test_read_metadata_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_metadata(tmp_path / "missing.mp4")
    path = write_video(palette_clip(), tmp_path / "v.gif", metadata=METADATA)
    metadata_sidecar_path(path).write_text("{not json")
    with pytest.raises(InvalidInputError, match="v.gif.json is not valid JSON"):
        read_metadata(path)


# --- overwriting ------------------------------------------------------------------------------


def test_existing_output_is_refused_before_any_work(tmp_path, monkeypatch):
    path = tmp_path / "out.webp"
    path.write_bytes(b"precious")
    calls = []
    monkeypatch.setitem(video._ENCODERS, ".webp", lambda *args: calls.append(args))
    with pytest.raises(OutputExistsError) as caught:
        write_video(palette_clip(), path)
    assert str(caught.value) == f"{path} already exists; pass --overwrite or choose another name"
    assert calls == [] and path.read_bytes() == b"precious" and leftovers(tmp_path) == []


def test_existing_sidecar_is_refused_too(tmp_path):
    sidecar = tmp_path / "out.gif.json"
    sidecar.write_text("{}")
    with pytest.raises(OutputExistsError, match="out.gif.json already exists"):
        write_video(palette_clip(), tmp_path / "out.gif", metadata=METADATA)
    assert not (tmp_path / "out.gif").exists()


@pytest.mark.parametrize(
    "lay_out, name, overwrite, words",
    [
        (lambda d: None, "nowhere/out.webp", True, "folder {d}/nowhere does not exist; create it first"),
        (lambda d: (d / "file").write_text("x"), "file/out.gif", True, "{d}/file is a file, not a folder"),
        (lambda d: (d / "out.mp4").symlink_to(d / "gone.mp4"), "out.mp4", True,
         "{d}/out.mp4 is a symbolic link to {d}/gone.mp4, which does not exist; remove the link"),
        (lambda d: (d / "out.webp").mkdir(), "out.webp", True, "{d}/out.webp is a folder; give a file name"),
        (lambda d: (d / "out.webp.json").symlink_to(d / "gone"), "out.webp", True, "out.webp.json (the settings "
         "sidecar of out.webp) is a symbolic link"),
        (lambda d: (d / "out.gif.json").write_text("{}"), "out.gif", False, "{d}/out.gif.json already exists (the "
         "settings sidecar of out.gif); pass --overwrite"),
        (lambda d: (d / "clip.mov").write_text("x"), "clip.livephoto", False, "{d}/clip.mov already exists (the "
         "video of the Live Photo clip.livephoto)"),
        (lambda d: (d / "clip.MP.jpg").mkdir(), "clip.MP.jpg", True, "{d}/clip.MP.jpg is a folder"),
    ],
    ids=["missing folder", "folder is a file", "dangling symlink", "a folder", "sidecar a dangling symlink",
         "existing sidecar", "existing Live Photo video", "Motion Photo a folder"],
)
def test_every_output_file_is_checked_before_any_work(tmp_path, monkeypatch, lay_out, name, overwrite, words):
    """check_output, which the CLI runs before loading the model, and write_video before encoding: the same
    check for every file written (video, phone files, sidecar), whether or not metadata is given."""
    lay_out(tmp_path)
    before = sorted(os.listdir(tmp_path))
    calls = []
    monkeypatch.setattr(video, "frames_to_uint8", lambda frames: calls.append(frames))  # the first step of the work
    for check in (lambda: video.check_output(tmp_path / name, overwrite),
                  lambda: write_video(palette_clip(), tmp_path / name, overwrite=overwrite),
                  lambda: write_video(palette_clip(), tmp_path / name, metadata=METADATA, overwrite=overwrite)):
        with pytest.raises(LivePhotoError) as caught:
            check()
        assert words.format(d=tmp_path) in str(caught.value)
    assert calls == [] and sorted(os.listdir(tmp_path)) == before


def test_the_output_check_is_part_of_the_api():
    import livephoto_core

    assert livephoto_core.check_output is video.check_output


def test_overwrite_replaces_file_and_sidecar(tmp_path):
    path = write_video(palette_clip(), tmp_path / "out.webp", metadata={"run": 1})
    clip = palette_clip()[::-1].copy()
    write_video(clip, path, metadata={"run": 2}, overwrite=True)
    np.testing.assert_array_equal(read_video(path).frames, clip)
    assert read_metadata(path) == {"run": 2}
    write_video(clip, path, overwrite=True)  # no metadata now: the old sidecar must not linger
    assert not metadata_sidecar_path(path).exists() and read_metadata(path) == {}
    assert leftovers(tmp_path) == []


def test_failing_encoder_leaves_no_file_and_no_temporary(tmp_path, monkeypatch):
    def broken_encoder(pixels, path, fps, metadata_json):
        path.write_bytes(b"half a video")
        raise RuntimeError("encoder crashed")

    monkeypatch.setitem(video._ENCODERS, ".webp", broken_encoder)
    with pytest.raises(RuntimeError):
        write_video(palette_clip(), tmp_path / "out.webp", metadata=METADATA)
    assert os.listdir(tmp_path) == []


def test_existing_file_survives_a_failed_overwrite(tmp_path, monkeypatch):
    path = write_video(palette_clip(), tmp_path / "out.webp", metadata={"run": 1})
    before = path.read_bytes()

    def interrupted_encoder(pixels, path, fps, metadata_json):
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setitem(video._ENCODERS, ".webp", interrupted_encoder)
    with pytest.raises(KeyboardInterrupt):
        write_video(palette_clip(), path, metadata={"run": 2}, overwrite=True)
    assert path.read_bytes() == before and read_metadata(path) == {"run": 1}
    assert leftovers(tmp_path) == []


def test_encoder_errors_become_one_line_messages(tmp_path, monkeypatch):
    def full_disk(pixels, path, fps, metadata_json):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(video._ENCODERS, ".mp4", full_disk)
    with pytest.raises(InvalidInputError, match="could not write .*out.mp4: .*No space left"):
        write_video(palette_clip(), tmp_path / "out.mp4")
    assert os.listdir(tmp_path) == []


# --- atomic_write -----------------------------------------------------------------------------


def test_atomic_write_uses_a_hidden_temporary_with_the_same_extension(tmp_path):
    final = tmp_path / "model.safetensors"
    with atomic_write(final) as temporary:
        assert temporary.parent == tmp_path and temporary.exists()
        assert temporary.name.startswith(".model.safetensors.tmp-") and temporary.suffix == ".safetensors"
        assert not final.exists()
        temporary.write_bytes(b"weights")
    assert final.read_bytes() == b"weights" and os.listdir(tmp_path) == ["model.safetensors"]


def test_atomic_write_cleans_up_on_keyboard_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "a.bin") as temporary:
            temporary.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_atomic_write_refuses_a_name_taken_during_the_write(tmp_path):
    final = tmp_path / "a.bin"
    with pytest.raises(OutputExistsError):
        with atomic_write(final) as temporary:
            temporary.write_bytes(b"mine")
            final.write_bytes(b"theirs")  # another process got there first
    assert final.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["a.bin"]


def race(tmp_path, writers: int = 4):
    """Writers that all pass the existence check, then all try to publish the same name."""
    final = tmp_path / "race.bin"
    barrier = threading.Barrier(writers)
    outcomes = [None] * writers

    def write(index):
        try:
            with atomic_write(final) as temporary:
                temporary.write_bytes(f"writer {index}".encode())
                barrier.wait()
            outcomes[index] = "won"
        except OutputExistsError:
            outcomes[index] = "refused"

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return final, outcomes


def test_racing_writers_exactly_one_wins(tmp_path):
    final, outcomes = race(tmp_path)
    assert outcomes.count("won") == 1 and outcomes.count("refused") == len(outcomes) - 1
    assert final.read_bytes() == f"writer {outcomes.index('won')}".encode()
    assert os.listdir(tmp_path) == ["race.bin"]


def test_racing_writers_exactly_one_wins_without_hard_links(tmp_path, monkeypatch):
    def no_links(source, destination):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(fileio.os, "link", no_links)
    final, outcomes = race(tmp_path)
    assert outcomes.count("won") == 1
    assert final.read_bytes() == f"writer {outcomes.index('won')}".encode()
    assert os.listdir(tmp_path) == ["race.bin"]


def test_atomic_write_all_unpublishes_the_files_published_before_a_name_taken_during_the_write(tmp_path):
    first, second = tmp_path / "pair.jpg", tmp_path / "pair.mov"
    with pytest.raises(OutputExistsError, match="pair.mov already exists"):
        with atomic_write_all([first, second]) as (jpeg, movie):
            jpeg.write_bytes(b"photo")
            movie.write_bytes(b"video")
            second.write_bytes(b"another writer's")  # taken after the early check, before publishing
    assert not first.exists() and second.read_bytes() == b"another writer's" and leftovers(tmp_path) == []


def test_every_input_path_gets_the_one_check(tmp_path):
    from livephoto_core.errors import ModelFileError
    from livephoto_core.images import load_image
    from livephoto_core.loading.detect import detect_path
    from livephoto_core.loading.files import load_state_dict

    readers = [(load_image, InvalidInputError), (read_video, InvalidInputError), (load_state_dict, ModelFileError),
               (detect_path, ModelFileError)]
    for read, error in readers:
        with pytest.raises(error, match=r"missing.bin does not exist; check the path$"):
            read(tmp_path / "missing.bin")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # would block a reader that opened it
    for read, error in readers:
        with pytest.raises(error, match="pipe is not a file; pass an? .* instead"):
            read(fifo)


def test_atomic_write_refusals(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        with atomic_write(tmp_path / "no" / "such" / "folder.bin"):
            pass
    with pytest.raises(InvalidInputError, match="is a folder"):
        with atomic_write(tmp_path, overwrite=True):
            pass


# --- reading ----------------------------------------------------------------------------------


def test_read_video_start_stride_and_max_frames(tmp_path):
    clip = palette_clip(frames=10)
    path = write_video(clip, tmp_path / "c.gif", fps=10)
    for start, stride, max_frames in [(0, 1, None), (2, 3, None), (1, 2, 3), (9, 1, 5), (0, 4, 1)]:
        read = read_video(path, max_frames=max_frames, stride=stride, start=start)
        np.testing.assert_array_equal(read.frames, clip[start::stride][:max_frames])
        assert read.fps == pytest.approx(10.0 / stride)
    webp = write_video(clip, tmp_path / "c.webp", fps=10)  # the Pillow reader follows the same rules
    read = read_video(webp, max_frames=2, stride=3, start=1)
    np.testing.assert_array_equal(read.frames, clip[1::3][:2])
    assert read.fps == pytest.approx(10.0 / 3)
    # numpy integers (an index array's elements) and whole floats select the same frames
    read = read_video(path, max_frames=np.int64(3), stride=np.int32(2), start=1.0)
    np.testing.assert_array_equal(read.frames, clip[1::2][:3])


def test_read_video_returns_a_clip(tmp_path):
    clip = read_video(write_video(palette_clip(), tmp_path / "c.mp4"))
    assert isinstance(clip, VideoClip) and clip.frames.dtype == np.uint8 and isinstance(clip.fps, float)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"stride": 0}, "stride"),
        ({"start": -1}, "start"),
        ({"max_frames": 0}, "max_frames"),
        ({"stride": 1.5}, "stride"),
        ({"stride": True}, "stride"),
        ({"max_frames": np.int64(0)}, "max_frames"),
        ({"start": 6}, "has 6 frames; start=6 is past the end"),
    ],
)
def test_read_video_refuses_bad_arguments(tmp_path, arguments, message):
    path = write_video(palette_clip(), tmp_path / "c.webp")
    with pytest.raises(InvalidInputError, match=message):
        read_video(path, **arguments)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("random.mp4", np.random.default_rng(0).bytes(5000), "not a video that can be decoded"),
        ("notes.mp4", b"just some text\n" * 100, "not a video that can be decoded"),
        ("notes.webp", b"just some text\n" * 100, "not a video that can be decoded"),
        ("notes.gif", b"GIF89a but not really", "not a video that can be decoded"),
        ("empty.mp4", b"", "empty"),
    ],
)
def test_undecodable_files_are_refused_in_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message) as caught:
        read_video(path)
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(InvalidInputError, match="is a folder; pass a video file"):
        read_video(tmp_path)


def test_audio_only_file_is_refused(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(InvalidInputError) as caught:
        read_video(path)
    assert str(caught.value) == f"{path} has no video stream"


def test_truncated_video_never_leaks_a_raw_error(tmp_path):
    path = write_video(smooth_clip(frames=16), tmp_path / "cut.mp4")
    data = path.read_bytes()
    for keep in (len(data) // 2, len(data) - 200, 300):
        path.write_bytes(data[:keep])
        try:
            clip = read_video(path)
        except InvalidInputError as error:
            assert "cut.mp4" in str(error)
        else:
            assert 0 < len(clip.frames) <= 16


def test_decoder_error_mid_stream_is_translated(tmp_path, monkeypatch):
    path = write_video(palette_clip(), tmp_path / "c.mp4")

    def fail_at_the_third(index):
        if index == 2:
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    watch_decoding(monkeypatch, fail_at_the_third)
    with pytest.raises(InvalidInputError, match="c.mp4 is not a video that can be decoded: Invalid data"):
        read_video(path)


def test_write_video_refusals(tmp_path):
    with pytest.raises(InvalidInputError, match=r"\.avi.*\.webp, \.gif, \.mp4"):
        write_video(palette_clip(), tmp_path / "out.avi")
    with pytest.raises(InvalidInputError, match=r"\[F, H, W, 3\]"):
        write_video(np.zeros((4, 8, 8)), tmp_path / "out.webp")
    with pytest.raises(InvalidInputError, match=r"\[F, H, W, 3\]"):
        write_video(np.zeros((0, 8, 8, 3)), tmp_path / "out.webp")
    with pytest.raises(InvalidInputError, match="NaN"):
        write_video(np.full((2, 8, 8, 3), np.nan), tmp_path / "out.webp")
    for fps in (0, 0.001, 61, float("inf"), float("nan"), True):  # 0.001: a WebP frame longer than 24 bits of ms
        with pytest.raises(InvalidInputError, match="^fps must be (a number|a finite number|from 1 to 60)"):
            write_video(palette_clip(), tmp_path / "out.webp", fps=fps)
    assert os.listdir(tmp_path) == []


def test_half_precision_tensor_frames(tmp_path):
    clip = palette_clip()
    tensor = torch.from_numpy(clip).to(torch.bfloat16) / 255  # not exact in bfloat16, but within half a level
    np.testing.assert_array_equal(read_video(write_video(tensor, tmp_path / "h.webp")).frames, clip)


def test_gif_that_pyav_refuses_is_read_with_pillow(tmp_path, monkeypatch):
    clip = palette_clip()
    path = write_video(clip, tmp_path / "c.gif")

    def refusing_pyav(*args):
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(video, "_decode_with_pyav", refusing_pyav)
    np.testing.assert_array_equal(read_video(path).frames, clip)
    (tmp_path / "bad.mp4").write_bytes(b"x" * 100)
    with pytest.raises(InvalidInputError, match="bad.mp4 is not a video that can be decoded: Invalid data"):
        read_video(tmp_path / "bad.mp4")


# --- what a read may cost: frame size, frame count, clip bytes --------------------------------------


def encoded_mp4(path, frames: int, height: int, width: int):
    """An mp4 of flat grey frames: tiny on disk whatever their size (the hostile files of this class)."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for index in range(frames):
            frame = np.full((height, width, 3), 8 * index % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def raw_h264(path, *parts):
    """A raw H.264 stream of `parts` (frames, height, width) one after another: its header states the first
    part's size and no frame count, so only decoding finds the rest."""
    data = b""
    for frames, height, width in parts:
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt, codec.time_base = width, height, "yuv420p", Fraction(1, 25)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 40 * index % 256, np.uint8), "rgb24")
            frame.pts = index
            data += b"".join(bytes(packet) for packet in codec.encode(frame))
        data += b"".join(bytes(packet) for packet in codec.encode(None))
    path.write_bytes(data)
    return path


def watch_decoding(monkeypatch, on_frame) -> None:
    """av.open wrapped so that `on_frame(index)` runs before each decoded frame is handed on (it may raise)."""
    real_open = av.open

    class Container:
        def __init__(self, container):
            self.container, self.streams = container, container.streams

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.container.close()

        def decode(self, stream):
            for index, frame in enumerate(self.container.decode(stream)):
                on_frame(index)
                yield frame

    monkeypatch.setattr(video.av, "open", lambda *args, **kwargs: Container(real_open(*args, **kwargs)))


class DecodeRecorder:
    """Counts the frames decoded, so that a test sees whether any was."""

    def __init__(self, monkeypatch):
        self.decoded = 0
        watch_decoding(monkeypatch, self.count)

    def count(self, _index):
        self.decoded += 1


def test_a_tiny_mp4_of_4096x4096_frames_is_refused_from_its_header_before_any_frame_is_decoded(tmp_path, monkeypatch):
    path = encoded_mp4(tmp_path / "huge.mp4", 2, 4096, 4096)
    assert path.stat().st_size < 100_000  # 2 frames of 4096x4096 decode to 100 MB of RGB
    recorder = DecodeRecorder(monkeypatch)
    for read in (read_video, lambda path: next(iter_frames(path))):
        with pytest.raises(InvalidInputError) as caught:
            read(path)
        assert str(caught.value) == (
            f"{path} has frames of 4096x4096, more than the 9,437,184 pixels a video frame may have; scale it down "
            f"first, e.g. ffmpeg -i huge.mp4 -vf scale=-2:1080 smaller.mp4"
        )
    assert recorder.decoded == 0


def test_4k_in_either_orientation_is_within_the_frame_cap():
    for width, height in ((3840, 2160), (2160, 3840), (4096, 2160), (4096, 2304)):
        assert width * height <= MAX_FRAME_PIXELS
    assert 4096 * 4096 > MAX_FRAME_PIXELS and 7680 * 4320 > MAX_FRAME_PIXELS  # 8K is refused


@pytest.mark.parametrize("extension", [".gif", ".webp"])
def test_animations_read_by_pillow_are_held_to_the_same_frame_cap(tmp_path, monkeypatch, extension):
    path = write_video(palette_clip(frames=2, height=48, width=64), tmp_path / f"c{extension}")
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 48 * 64 - 1)

    def refusing_pyav(*args):  # a GIF goes to Pillow too, when PyAV refuses it
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(video, "_decode_with_pyav", refusing_pyav)
    with pytest.raises(InvalidInputError, match=f"c{extension} has frames of 64x48, more than the 3,071 pixels"):
        read_video(path)


def test_a_stream_whose_header_understates_its_frame_size_is_refused_at_the_first_larger_frame(tmp_path, monkeypatch):
    path = raw_h264(tmp_path / "lie.h264", (2, 64, 64), (2, 128, 96))
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 100 * 100)
    with av.open(str(path)) as container:  # what the header says: the first part's size
        assert (container.streams.video[0].width, container.streams.video[0].height) == (64, 64)
    frames = iter_frames(path)
    assert [next(frames).shape for _ in range(2)] == [(64, 64, 3)] * 2
    with pytest.raises(InvalidInputError, match="lie.h264 has frames of 96x128, more than the 10,000 pixels"):
        next(frames)


def test_reads_past_the_decoded_frame_cap_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "MAX_DECODED_FRAMES", 5)
    declared = encoded_mp4(tmp_path / "long.mp4", 8, 16, 16)
    recorder = DecodeRecorder(monkeypatch)
    with pytest.raises(InvalidInputError, match=r"long.mp4: it has 8 frames, and one read decodes at most 5; read "
                                                r"fewer \(max_frames, --max-frames\) or cut the clip first"):
        read_video(declared)
    assert recorder.decoded == 0  # the mp4 states its count: refused before decoding
    assert len(read_video(declared, max_frames=5).frames) == 5  # the first 5 are within the cap
    with pytest.raises(InvalidInputError, match="reading that far decodes 7 frames"):
        iter_frames(declared, max_frames=3, stride=2, start=2)  # refused at the call, before any decoding
    undeclared = raw_h264(tmp_path / "long.h264", (8, 16, 16))  # no count in the header: found while decoding
    frames = iter_frames(undeclared)
    assert len([next(frames) for _ in range(5)]) == 5
    with pytest.raises(InvalidInputError, match="long.h264: it has more than 5 frames"):
        next(frames)


def test_read_video_refuses_to_hold_more_than_its_byte_cap_and_iter_frames_streams_any_length(tmp_path, monkeypatch):
    path = write_video(palette_clip(frames=6), tmp_path / "c.mp4")
    frame_bytes = 48 * 64 * 3
    monkeypatch.setattr(video, "MAX_CLIP_BYTES", 4 * frame_bytes)
    with pytest.raises(InvalidInputError, match=r"c.mp4: 5 frames of 64x48 take more than the 0 MiB that "
                                                r"read_video holds at once; pass max_frames or a stride, or read it"):
        read_video(path)
    assert len(read_video(path, max_frames=4).frames) == 4
    assert len(list(iter_frames(path))) == 6
