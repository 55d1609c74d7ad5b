"""Training data pipeline: index formats, clip sampling, the cached SSIM labelling pass, the Dataset."""

import csv
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import av
import numpy as np
import pytest
import torch
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity
from skimage.transform import resize

from livephoto_core.errors import InvalidInputError
from livephoto_core.intensity import DEFAULT_THRESHOLDS, level_from_ssim
from livephoto_core.training import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_lossless(path, frames, fps=8):
    """Encode uint8 RGB frames with PyAV directly (lossless RGB H.264), so decoding gives them back."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=fps, options={"qp": "0", "preset": "ultrafast"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "rgb24"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def numbered_frames(count, height=24, width=24):
    """Frame i is grey level 6 i + 5 with a moving bright square, so frames are told apart by mean."""
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i] = 6 * i + 5
        top = (2 * i) % (height - 6)
        frames[i, top : top + 6, 4:10] = 250
    return frames


def frame_numbers(clip):
    return [round((f[:, 12:].astype(float).mean() - 5) / 6) for f in clip]


@pytest.fixture
def videos(tmp_path):
    """Twelve good videos of 20 frames (four of them non-square) and their CSV index."""
    folder = tmp_path / "videos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        frames = numbered_frames(20, 24, 24 if i < 8 else 40)
        frames = np.clip(frames.astype(int) + rng.integers(0, 3, frames.shape), 0, 255).astype(np.uint8)
        write_lossless(folder / f"v{i}.mp4", frames)
        rows.append((f"videos/v{i}.mp4", f"caption {i}"))
    index = tmp_path / "index.csv"
    with open(index, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "caption"), *rows])
    return index


SAMPLING = data.ClipSampling(num_frames=4, stride=3, size=16)


# ---------------------------------------------------------------------------------------------
# Index


def test_csv_index_resolves_paths_relative_to_the_index(tmp_path):
    (tmp_path / "sub").mkdir()
    index = tmp_path / "sub" / "index.csv"
    index.write_text('path,caption,extra\nclips/a.mp4,"a cat, running",1\n/abs/b.mp4,  a dog  ,2\n')
    entries = data.read_index(index)
    assert entries == [
        data.VideoEntry(tmp_path / "sub" / "clips" / "a.mp4", "a cat, running"),
        data.VideoEntry(data.Path("/abs/b.mp4"), "a dog"),
    ]
    assert data.read_index(index, root=tmp_path / "elsewhere")[0].path == tmp_path / "elsewhere" / "clips" / "a.mp4"


def test_json_lines_index(tmp_path):
    index = tmp_path / "index.jsonl"
    index.write_text(
        json.dumps({"path": "x.mp4", "caption": "zoom in"})
        + "\n\n"
        + json.dumps({"path": "d/y.mp4", "caption": "still", "other": 3})
        + "\n"
    )
    assert data.read_index(index) == [
        data.VideoEntry(tmp_path / "x.mp4", "zoom in"),
        data.VideoEntry(tmp_path / "d" / "y.mp4", "still"),
    ]


def test_webvid_index_in_the_page_dir_and_the_flat_layout(tmp_path):
    index = tmp_path / "results_2M_val.csv"
    index.write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        "1066692580,https://example.com/1066692580.mp4,PT00H00M11S,006001_006050,Meeting on a beach\n"
        '21179416,https://example.com/21179416.mp4,PT00H00M10S,007001_007050,"Waves, slow motion"\n'
    )
    # The first video is missing (as some are in every WebVid download); the second tells the layout.
    (tmp_path / "webvid" / "007001_007050").mkdir(parents=True)
    (tmp_path / "webvid" / "007001_007050" / "21179416.mp4").write_bytes(b"")
    entries = data.read_index(index, root=tmp_path / "webvid")
    assert entries == [
        data.VideoEntry(tmp_path / "webvid" / "006001_006050" / "1066692580.mp4", "Meeting on a beach"),
        data.VideoEntry(tmp_path / "webvid" / "007001_007050" / "21179416.mp4", "Waves, slow motion"),
    ]
    # AnimateDiff's and PIA's loaders read videos straight from one folder.
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "21179416.mp4").write_bytes(b"")
    assert data.read_index(index, root=tmp_path / "flat") == [
        data.VideoEntry(tmp_path / "flat" / "1066692580.mp4", "Meeting on a beach"),
        data.VideoEntry(tmp_path / "flat" / "21179416.mp4", "Waves, slow motion"),
    ]
    with pytest.raises(InvalidInputError, match=r"none of its first 2 videos .*set data.root"):
        data.read_index(index, root=tmp_path / "elsewhere")


@pytest.mark.parametrize(
    "name, text",
    [
        ("index.csv", "file,text\na.mp4,hello\n"),
        ("index.csv", "path,caption\n,empty path\n"),
        ("index.jsonl", '{"path": "a.mp4", "caption": "ok"}\nnot json\n'),
        ("index.jsonl", '["a.mp4", "list"]\n'),
        ("index.txt", "a.mp4 hello\n"),
    ],
)
def test_malformed_indexes_are_refused_with_a_clear_error(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(InvalidInputError, match=name):
        data.read_index(tmp_path / name)
    with pytest.raises(InvalidInputError, match="does not exist"):
        data.read_index(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------------------
# Clip sampling


def test_load_clip_takes_num_frames_at_stride_from_start(tmp_path):
    path = write_lossless(tmp_path / "n.mp4", numbered_frames(30))
    sampling = data.ClipSampling(num_frames=5, stride=4, size=24)
    assert frame_numbers(data.load_clip(path, sampling)) == [0, 4, 8, 12, 16]
    assert frame_numbers(data.load_clip(path, sampling, start=13)) == [13, 17, 21, 25, 29]
    with pytest.raises(InvalidInputError, match="too short"):
        data.load_clip(path, sampling, start=14)
    np.testing.assert_array_equal(data.load_clip(path, sampling)[0], numbered_frames(30)[0])


def test_center_crop_and_resize_match_an_independent_reference():
    rng = np.random.default_rng(1)
    height, width = 36, 60
    frames = np.zeros((2, height, width, 3), np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    frames[:] = np.stack([4 * y, 3 * x, 255 - 4 * y], axis=-1).astype(np.uint8)[None]
    frames[:, :, :12] = (255, 0, 255)  # outside the centred 36 x 36 square: must vanish
    frames[:, :, 48:] = (255, 0, 255)
    frames[1] = np.clip(frames[1] + rng.integers(0, 5, frames[1].shape), 0, 255)
    square = frames[:, :, 12:48]
    np.testing.assert_array_equal(data.center_crop_resize(frames, 36), square)
    np.testing.assert_array_equal(
        data.center_crop_resize(frames.transpose(0, 2, 1, 3), 36), square.transpose(0, 2, 1, 3)
    )
    small = data.center_crop_resize(frames, 18)
    assert small.shape == (2, 18, 18, 3) and small.dtype == np.uint8
    reference = resize(square.astype(float), (2, 18, 18, 3), order=3, anti_aliasing=True, preserve_range=True)
    assert np.abs(small.astype(float) - reference)[:, 2:-2, 2:-2].mean() < 2.0
    large = data.center_crop_resize(frames, 72)
    reference = resize(square.astype(float), (2, 72, 72, 3), order=3, preserve_range=True)
    assert np.abs(large.astype(float) - reference)[:, 4:-4, 4:-4].mean() < 2.0


@pytest.mark.parametrize("bad", [{"num_frames": 1}, {"stride": 0}, {"size": 4}, {"stride": 2.5}])
def test_bad_sampling_is_refused(bad):
    with pytest.raises(InvalidInputError):
        data.ClipSampling(**bad)


# ---------------------------------------------------------------------------------------------
# Labelling pass


def independent_ssim(path, sampling):
    """Mean adjacent SSIM via PyAV + skimage only, on the labelling sample (no resize: size = side)."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    chosen = np.stack(frames[: sampling.span : sampling.stride])
    side = min(chosen.shape[1:3])
    assert side == sampling.size
    top, left = (chosen.shape[1] - side) // 2, (chosen.shape[2] - side) // 2
    gray = [rgb2gray(f[top : top + side, left : left + side]) for f in chosen]
    return float(np.mean([structural_similarity(a, b, data_range=1.0) for a, b in itertools.pairwise(gray)]))


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = data.read_video

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "read_video", counting)
    return calls


def test_labelling_measures_the_training_frames_and_fits_thresholds(videos, tmp_path):
    entries = data.read_index(videos) * 2  # each video twice: measured once
    sampling = data.ClipSampling(num_frames=5, stride=2, size=24)
    result = data.label_videos(entries, sampling, tmp_path / "cache.jsonl")
    assert result.counts == {
        "total": 24,
        "decoded": 12,
        "cached": 0,
        "missing": 0,
        "undecodable": 0,
        "too_short": 0,
        "usable": 24,
    }
    assert [v.path for v in result.videos] == [e.path for e in entries]
    for video in result.videos[:12]:
        assert video.ssim == pytest.approx(independent_ssim(video.path, sampling), abs=1e-9)
        assert video.frame_count == 20
    assert result.ssims == [v.ssim for v in result.videos]
    expected = np.quantile(result.ssims, np.arange(1, 10) / 10)
    assert len(result.thresholds) == 9 and all(np.diff(result.thresholds) > 0)
    assert np.allclose(result.thresholds, expected, atol=1e-12)


def test_second_labelling_run_decodes_nothing(videos, tmp_path, count_decodes):
    entries = data.read_index(videos)
    first = data.label_videos(entries, SAMPLING, tmp_path / "cache.jsonl")
    assert len(count_decodes) == 12
    second = data.label_videos(entries, SAMPLING, tmp_path / "cache.jsonl")
    assert len(count_decodes) == 12 and second.counts["cached"] == 12 and second.counts["decoded"] == 0
    assert second.videos == first.videos and second.thresholds == first.thresholds
    # Other sampling, or a changed file: measured again.
    data.label_videos(entries, data.ClipSampling(num_frames=4, stride=2, size=16), tmp_path / "cache.jsonl")
    assert len(count_decodes) == 24
    write_lossless(entries[0].path, numbered_frames(20))
    os.utime(entries[0].path, ns=(1, 1))
    third = data.label_videos(entries, SAMPLING, tmp_path / "cache.jsonl")
    assert len(count_decodes) == 25 and third.counts["decoded"] == 1


def test_labelling_resumes_after_a_kill(videos, tmp_path, count_decodes):
    entries = data.read_index(videos)
    complete = data.label_videos(entries, SAMPLING, tmp_path / "reference.jsonl")
    count_decodes.clear()
    # A labelling process that is killed (SIGKILL) while it works through the list.
    cache = tmp_path / "cache.jsonl"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from livephoto_core.training import data
        real = data.read_video
        def slow(*args, **kwargs):
            time.sleep(0.4)
            return real(*args, **kwargs)
        data.read_video = slow
        data.label_videos(data.read_index({str(videos)!r}), data.ClipSampling(4, 3, 16), {str(cache)!r})
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not cache.exists() or cache.read_text().count("\n") < 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = cache.read_text().count("\n")
    assert 2 <= done < 12
    with open(cache, "a") as handle:
        handle.write('{"key": "torn')  # a line cut off mid-write
    resumed = data.label_videos(entries, SAMPLING, cache)
    assert resumed.counts["decoded"] == len(count_decodes) == 12 - done
    assert resumed.videos == complete.videos and resumed.thresholds == complete.thresholds
    assert data.label_videos(entries, SAMPLING, cache).counts["decoded"] == 0


def test_bad_videos_are_skipped_counted_and_logged(videos, tmp_path, caplog):
    folder = videos.parent / "videos"
    (folder / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "empty.mp4").write_bytes(b"")
    write_lossless(folder / "short.mp4", numbered_frames(9))  # needs (4 - 1) * 3 + 1 = 10
    with open(videos, "a", newline="") as handle:
        csv.writer(handle).writerows(
            [
                ("videos/missing.mp4", "gone"),
                ("videos/noise.mp4", "noise"),
                ("videos/empty.mp4", "empty"),
                ("videos/short.mp4", "short"),
            ]
        )
    entries = data.read_index(videos)
    with caplog.at_level(logging.INFO, logger=data.__name__):
        result = data.label_videos(entries, SAMPLING, tmp_path / "cache.jsonl")
    assert result.counts == {
        "total": 16,
        "decoded": 15,
        "cached": 0,
        "missing": 1,
        "undecodable": 2,
        "too_short": 1,
        "usable": 12,
    }
    assert [v.caption for v in result.videos] == [f"caption {i}" for i in range(12)]
    assert "skipped 4 of 16 videos" in caplog.text and "short.mp4" in caplog.text
    # Failures are cached too: a rerun decodes nothing and counts the same.
    again = data.label_videos(entries, SAMPLING, tmp_path / "cache.jsonl")
    assert again.counts == {**result.counts, "decoded": 0, "cached": 15}


def test_worker_processes_give_the_same_result_as_one(videos, tmp_path):
    entries = data.read_index(videos)
    one = data.label_videos(entries, SAMPLING, tmp_path / "one.jsonl", workers=1)
    two = data.label_videos(entries, SAMPLING, tmp_path / "two.jsonl", workers=2)
    assert two.videos == one.videos and two.thresholds == one.thresholds and two.counts == one.counts
    lines = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and all(line["status"] == "ok" for line in lines)
    with pytest.raises(InvalidInputError):
        data.label_videos(entries, SAMPLING, tmp_path / "x.jsonl", workers=0)


def test_given_thresholds_are_used_and_checked(videos, tmp_path):
    entries = data.read_index(videos)
    given = tuple(np.linspace(0.5, 0.9, 9))
    assert data.label_videos(entries, SAMPLING, tmp_path / "c.jsonl", thresholds=given).thresholds == given
    with pytest.raises(InvalidInputError):
        data.label_videos(entries, SAMPLING, tmp_path / "c.jsonl", thresholds=(0.5, 0.4))


# ---------------------------------------------------------------------------------------------
# Dataset


@pytest.fixture
def labelled(videos, tmp_path):
    return data.label_videos(data.read_index(videos), SAMPLING, tmp_path / "cache.jsonl")


def test_dataset_items(labelled):
    dataset = data.VideoCaptionDataset(labelled.videos, labelled.thresholds, SAMPLING, seed=3, random_start=False)
    assert len(dataset) == 12
    item = dataset[2]
    assert item["frames"].shape == (4, 3, 16, 16) and item["frames"].dtype == torch.float32
    assert item["frames"].min() >= -1 and item["frames"].max() <= 1
    torch.testing.assert_close(item["reference"], item["frames"][0])
    clip = data.load_clip(labelled.videos[2].path, SAMPLING)
    torch.testing.assert_close(item["frames"], torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert item["caption"] == "caption 2" and item["ssim"] == labelled.videos[2].ssim
    assert item["level"] == level_from_ssim(item["ssim"], labelled.thresholds)
    assert (item["index"], item["replaced"]) == (2, 0)


def test_dataset_items_depend_only_on_seed_epoch_and_index(labelled):
    def make(seed):
        return data.VideoCaptionDataset(labelled.videos, labelled.thresholds, SAMPLING, seed=seed)

    a, b = make(0), make(0)
    for index in (4, 1, 4):  # any order of access
        torch.testing.assert_close(a[index]["frames"], b[index]["frames"], rtol=0, atol=0)
    starts = set()
    for epoch in range(12):
        a.set_epoch(epoch)
        # Starts are drawn over every start that fits: 0 .. 20 - 10.
        starts.add(frame_numbers(((a[0]["frames"].permute(0, 2, 3, 1) + 1) * 127.5).numpy().round())[0])
    assert len(starts) > 4 and max(starts) <= 10
    a.set_epoch(0)
    torch.testing.assert_close(a[4]["frames"], b[4]["frames"], rtol=0, atol=0)
    assert any(not torch.equal(make(seed)[4]["frames"], b[4]["frames"]) for seed in (1, 2, 3))


def test_dataset_replaces_a_broken_video_deterministically(labelled):
    labelled.videos[3].path.write_bytes(b"broken since labelling")
    dataset = data.VideoCaptionDataset(labelled.videos, labelled.thresholds, SAMPLING, seed=0)
    item = dataset[3]
    assert item["replaced"] == 1 and item["index"] != 3 and dataset.failed_items == 1
    fresh = data.VideoCaptionDataset(labelled.videos, labelled.thresholds, SAMPLING, seed=0)
    torch.testing.assert_close(fresh[3]["frames"], item["frames"], rtol=0, atol=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    batches = list(loader)
    assert sum(int(b["replaced"].sum()) for b in batches) == 1
    torch.testing.assert_close(
        torch.cat([b["frames"] for b in batches]), torch.stack([fresh[i]["frames"] for i in range(12)]), rtol=0, atol=0
    )


def test_dataset_gives_up_when_every_video_fails(labelled):
    for video in labelled.videos:
        video.path.unlink()
    dataset = data.VideoCaptionDataset(labelled.videos, labelled.thresholds, SAMPLING, max_replacements=3)
    with pytest.raises(InvalidInputError, match="failed to decode"):
        dataset[0]
    with pytest.raises(InvalidInputError):
        data.VideoCaptionDataset([], labelled.thresholds)


def still_then_fast(count=24, side=24, seed=0):
    """A textured frame held still for the first half of the video, then new noise every frame."""
    rng = np.random.default_rng(seed)
    frames = np.repeat(rng.integers(0, 256, (1, side, side, 3), dtype=np.uint8), count, axis=0)
    frames[count // 2 :] = rng.integers(0, 256, (count - count // 2, side, side, 3), dtype=np.uint8)
    return frames


def skimage_level(frames, thresholds):
    """The level of an item's frames (float [F, 3, H, W] in [-1, 1]) by skimage, independently of intensity.py."""
    pixels = ((frames.permute(0, 2, 3, 1) + 1) * 127.5).round().numpy().astype(np.uint8)
    gray = [rgb2gray(f) for f in pixels]
    ssim = np.mean([structural_similarity(a, b, data_range=1.0) for a, b in itertools.pairwise(gray)])
    return level_from_ssim(float(ssim), thresholds)


def test_an_item_s_level_is_measured_on_its_own_frames_not_on_the_video_s_start(tmp_path):
    """With random_start the clip starts anywhere; its level must describe those frames (issue 13)."""
    sampling = data.ClipSampling(num_frames=4, stride=2, size=24)  # span 7: starts 0 .. 17 of 24
    paths = [write_lossless(tmp_path / f"s{i}.mp4", still_then_fast(seed=i)) for i in range(3)]
    entries = [data.VideoEntry(path, f"caption {i}") for i, path in enumerate(paths)]
    labelled = data.label_videos(entries, sampling, tmp_path / "cache.jsonl", thresholds=DEFAULT_THRESHOLDS)
    assert all(level_from_ssim(v.ssim, DEFAULT_THRESHOLDS) == 1 for v in labelled.videos)  # still at start 0
    dataset = data.VideoCaptionDataset(labelled.videos, labelled.thresholds, sampling, seed=0)
    levels = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            item = dataset[index]
            assert item["level"] == skimage_level(item["frames"], labelled.thresholds)
            assert item["level"] == level_from_ssim(item["ssim"], labelled.thresholds)
            levels.append(item["level"])
    assert 1 in levels and 10 in levels  # clips from the still part and from the moving part
    # At start 0 the item's measurement is the labelling pass's, to the bit.
    fixed = data.VideoCaptionDataset(labelled.videos, labelled.thresholds, sampling, random_start=False)
    assert [fixed[i]["ssim"] for i in range(3)] == [v.ssim for v in labelled.videos]


def test_toy_world_data_set_goes_through_the_pipeline_losslessly(tmp_path):
    from livephoto_core.training import toyworld

    csv_path = toyworld.write_dataset(tmp_path / "toy", num_clips=10, seed=4, size=32, frames=6)
    sampling = data.ClipSampling(num_frames=6, stride=1, size=32)
    result = data.label_videos(data.read_index(csv_path), sampling, tmp_path / "cache.jsonl")
    assert result.counts["usable"] == 10
    dataset = data.VideoCaptionDataset(result.videos, result.thresholds, sampling, random_start=False)
    for index in (0, 7):
        spec = toyworld.clip_spec(4, index, size=32, frames=6)
        item = dataset[index]
        expected = torch.from_numpy(toyworld.render_clip(spec)).permute(0, 3, 1, 2).float() / 127.5 - 1
        torch.testing.assert_close(item["frames"], expected, rtol=0, atol=0)
        assert item["caption"] == spec.caption
