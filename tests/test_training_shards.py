"""Webdataset tar shards: the converter, the labelling pass per shard, the stream over processes and
workers, resuming it, and bad samples."""

import csv
import io
import json
import logging
import tarfile

import numpy as np
import pytest
import torch

from test_training import one_thread, pretrained_files, toy_data  # noqa: F401 (shared fixtures)
from test_training_data import numbered_frames, write_lossless

from livephoto_core.errors import InvalidInputError
from livephoto_core.intensity import level_from_ssim, mean_adjacent_ssim
from livephoto_core.training import data, shards
from livephoto_core.training.batching import ClipStream
from livephoto_core.training.recipe import TrainConfig

SAMPLING = data.ClipSampling(num_frames=4, stride=2, size=16)  # span 7 of 12 frames: starts 0 .. 5


def make_index(folder, count):
    """`count` videos of 12 frames (each video's frames shifted by its number) and their CSV index."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [("path", "caption")]
    for i in range(count):
        frames = np.roll(numbered_frames(12), 3 * i, axis=2)
        write_lossless(folder / f"v{i:02d}.mp4", frames)
        rows.append((f"v{i:02d}.mp4", f"caption {i}"))
    with open(folder / "index.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return folder / "index.csv"


@pytest.fixture
def sharded(tmp_path):
    """16 videos in 4 shards of 4, written by the converter script; their labelling."""
    from scripts.make_shards import main

    index = make_index(tmp_path / "videos", 16)
    assert main(["--index", str(index), "--out", str(tmp_path / "shards"), "--samples-per-shard", "4"]) == 0
    paths = shards.list_shards(tmp_path / "shards")
    return paths, shards.label_shards(paths, SAMPLING, tmp_path / "cache.jsonl")


def epoch_keys(labelling, epoch, world, workers, batch_size=2):
    """Every rank's batches of one epoch, as the keys they hold."""
    keys = []
    for rank in range(world):
        stream = shards.ShardStream(labelling.shards, labelling.thresholds, SAMPLING, seed=5)
        clips = ClipStream(stream, batch_size, seed=5, rank=rank, world=world, workers=workers)
        start = sum(clips.batches(e) for e in range(epoch))
        for _, (batch_epoch, _, batch) in zip(range(clips.batches(epoch)), clips(start)):
            assert batch_epoch == epoch
            keys += batch["key"]
    return keys


def test_the_converter_writes_video2dataset_s_layout_and_keeps_finished_shards(tmp_path, capsys):
    from scripts.make_shards import main

    index = make_index(tmp_path / "videos", 5)
    with open(index, "a", newline="") as handle:
        csv.writer(handle).writerows([("gone.mp4", "missing"), ("notes.txt", "not a video")])
    out = tmp_path / "shards"
    assert main(["--index", str(index), "--out", str(out), "--samples-per-shard", "3"]) == 0
    assert "5 of 7 videos written to 3 shards" in capsys.readouterr().out
    with tarfile.open(out / "000000.tar") as tar:
        names = tar.getnames()
        assert names == [f"00000000{i}.{suffix}" for i in range(3) for suffix in ("mp4", "txt", "json")]
        assert tar.extractfile("000000001.mp4").read() == (tmp_path / "videos" / "v01.mp4").read_bytes()
        assert tar.extractfile("000000001.txt").read() == b"caption 1"
        assert json.loads(tar.extractfile("000000001.json").read())["caption"] == "caption 1"
    assert [s.key for s in shards.iter_samples(out / "000001.tar")] == ["000000003", "000000004"]
    assert [s.key for s in shards.iter_samples(out / "000002.tar")] == []  # only the skipped two
    written = (out / "000001.tar").read_bytes()
    (out / "000002.tar").unlink()  # as if killed before the last shard
    assert main(["--index", str(index), "--out", str(out), "--samples-per-shard", "3"]) == 0
    assert "(2 shards kept from an earlier run" in capsys.readouterr().out
    assert (out / "000001.tar").read_bytes() == written and (out / "000002.tar").is_file()
    assert not list(out.glob("*.partial"))
    assert main(["--index", str(tmp_path / "nothing.csv"), "--out", str(out)]) == 2


def test_shard_labelling_measures_what_the_index_labelling_measures(sharded, tmp_path):
    paths, labelling = sharded
    by_index = data.label_videos(data.read_index(tmp_path / "videos" / "index.csv"), SAMPLING,
                                 tmp_path / "index_cache.jsonl")
    assert labelling.thresholds == by_index.thresholds
    assert [s.usable for s in labelling.shards] == [4, 4, 4, 4]
    assert labelling.counts == {"total": 16, "usable": 16, "decoded": 16, "cached": 0, "missing": 0,
                                "undecodable": 0, "too_short": 0, "shards": 4, "damaged_shards": 0}
    again = shards.label_shards(paths, SAMPLING, tmp_path / "cache.jsonl")
    assert again.counts["decoded"] == 0 and again.counts["cached"] == 16 and again.thresholds == labelling.thresholds


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_and_their_workers_see_every_sample_once_per_epoch(sharded, workers):
    _, labelling = sharded
    everything = {f"{p.name}/{s.key}" for p in sharded[0] for s in shards.iter_samples(p)}
    epochs = [epoch_keys(labelling, epoch, world=2, workers=workers) for epoch in (0, 1)]
    for keys in epochs:
        assert sorted(keys) == sorted(everything)
    assert epochs[0] != epochs[1]  # the shards are dealt anew each epoch


def test_items_carry_the_level_of_their_own_frames_and_reproduce(sharded):
    _, labelling = sharded
    stream = shards.ShardStream(labelling.shards, labelling.thresholds, SAMPLING, seed=1)
    stream.split(batch_size=1, rank=0, world=1, loader_workers=0)
    items = list(stream)
    assert len(items) == 16 and all(item["replaced"] == 0 for item in items)
    for item in items:
        pixels = ((item["frames"].permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        assert item["level"] == level_from_ssim(mean_adjacent_ssim(pixels), labelling.thresholds)
    again = list(stream)
    assert all(torch.equal(a["frames"], b["frames"]) for a, b in zip(items, again))
    # Starts are drawn per sample: not every clip starts at frame 0.
    fixed = shards.ShardStream(labelling.shards, labelling.thresholds, SAMPLING, seed=1, random_start=False)
    fixed.split(batch_size=1, rank=0, world=1, loader_workers=0)
    at_zero = list(fixed)
    assert [i["key"] for i in at_zero] == [i["key"] for i in items]
    assert sum(not torch.equal(a["frames"], b["frames"]) for a, b in zip(items, at_zero)) > 4


def test_a_resumed_stream_continues_where_it_stopped(sharded):
    _, labelling = sharded

    def rank0(start):
        stream = shards.ShardStream(labelling.shards, labelling.thresholds, SAMPLING, seed=5)
        return ClipStream(stream, 1, seed=5, rank=0, world=2, workers=2)(start)

    uninterrupted = [next(s) for s in [rank0(0)] for _ in range(12)]  # 8 batches an epoch: into the second
    for start in (3, 8, 9):
        resumed = rank0(start)
        for epoch, positions, batch in uninterrupted[start:start + 3]:
            again = next(resumed)
            assert (again[0], again[1], again[2]["key"]) == (epoch, positions, batch["key"])
            assert torch.equal(again[2]["frames"], batch["frames"])


def write_odd_shard(path, good_video):
    """A shard with a good sample, one without a caption, one whose video is noise, and another good one."""
    with tarfile.open(path, "w") as tar:
        for name, payload in (("a.mp4", good_video), ("a.txt", b"good"), ("b.mp4", good_video),
                              ("c.mp4", np.random.default_rng(0).bytes(3000)), ("c.txt", b"noise"),
                              ("d.mp4", good_video), ("d.json", b'{"caption": "from json"}')):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_bad_samples_and_a_damaged_shard_are_skipped_and_counted(sharded, tmp_path, caplog, monkeypatch):
    paths, _ = sharded
    good = (tmp_path / "videos" / "v00.mp4").read_bytes()
    write_odd_shard(tmp_path / "shards" / "odd.tar", good)
    damaged = tmp_path / "shards" / "000003.tar"
    with tarfile.open(damaged) as tar:
        cut = tar.getmember("000000015.txt").offset_data + 3  # inside the last sample's caption
    damaged.write_bytes(damaged.read_bytes()[:cut])
    paths = shards.list_shards(tmp_path / "shards")
    with caplog.at_level(logging.WARNING):
        labelling = shards.label_shards(paths, SAMPLING, tmp_path / "cache2.jsonl")
    counts = labelling.counts
    assert (counts["missing"], counts["undecodable"], counts["damaged_shards"], counts["shards"]) == (1, 1, 1, 5)
    assert (counts["usable"], counts["total"]) == (12 + 3 + 2, 12 + 3 + 4)
    assert "000003.tar is unreadable after" in caplog.text and "skipped 2 of" in caplog.text
    odd = next(s for s in labelling.shards if s.path.name == "odd.tar")
    assert (odd.usable, odd.bad) == (2, {"b", "c"})

    stream = shards.ShardStream([odd], labelling.thresholds, SAMPLING)
    stream.split(batch_size=1, rank=0, world=1, loader_workers=0)
    items = list(stream)
    assert [(i["key"], i["caption"], i["replaced"]) for i in items] == [("odd.tar/a", "good", 0),
                                                                        ("odd.tar/d", "from json", 0)]
    # The damaged shard is read up to where labelling stopped.
    cut = next(s for s in labelling.shards if s.path == damaged)
    stream = shards.ShardStream([cut], labelling.thresholds, SAMPLING)
    stream.split(batch_size=1, rank=0, world=1, loader_workers=0)
    assert [i["key"] for i in stream] == [f"000003.tar/0000000{n}" for n in (12, 13, 14)]

    # A sample that breaks after labelling is skipped and counted on the next item; the worker's
    # shards start over to fill its share.
    real = shards.load_training_clip
    broken = []

    def breaking_a_once(path, sampling, start, name):
        if name.endswith("/a") and not broken:
            broken.append(name)
            path = tmp_path / "gone.mp4"
        return real(path, sampling, start, name)

    monkeypatch.setattr(shards, "load_training_clip", breaking_a_once)
    stream = shards.ShardStream([odd], labelling.thresholds, SAMPLING)
    stream.split(batch_size=1, rank=0, world=1, loader_workers=0)
    with caplog.at_level(logging.WARNING):
        items = list(stream)
    assert [(i["key"], i["replaced"]) for i in items] == [("odd.tar/d", 1), ("odd.tar/a", 0)]
    assert f"skipping {odd.path}/a in training" in caplog.text


def test_shards_too_few_for_the_slots_and_bad_configs_are_refused_with_the_fix(sharded, tmp_path):
    _, labelling = sharded
    stream = shards.ShardStream(labelling.shards, labelling.thresholds, SAMPLING)
    with pytest.raises(InvalidInputError, match=r"4 shards cannot feed 2 process\(es\) x 3 loader.*--samples-per-shard"):
        ClipStream(stream, 1, seed=0, rank=0, world=2, workers=3)
    with pytest.raises(InvalidInputError, match="less than one batch of 5"):
        ClipStream(stream, 5, seed=0, rank=0, world=2, workers=2).batches(0)
    with pytest.raises(InvalidInputError, match="no .tar files there"):
        shards.list_shards(tmp_path / "videos")
    assert shards.list_shards(str(tmp_path / "shards" / "00000[12].tar"))[0].name == "000001.tar"
    base = {"output_dir": "run", "model": {"base": "b", "dinov2": "d"}}
    with pytest.raises(InvalidInputError, match="give one of data.index .* and data.shards"):
        TrainConfig.from_dict({**base, "data": {"index": "i.csv", "shards": "s"}})
    with pytest.raises(InvalidInputError, match="data.shards is for the SD-1.5 mode"):
        TrainConfig.from_dict({"output_dir": "run", "model": {"from_scratch": True}, "data": {"shards": "s"}})
    assert TrainConfig.from_dict({**base, "data": {"shards": "s"}}).data.shards == "s"


@pytest.fixture
def toy_shards(tmp_path):
    from livephoto_core.training import toyworld

    index = toyworld.write_dataset(tmp_path / "toy", num_clips=16, seed=3, size=64, frames=4)
    shards.write_shards(data.read_index(index), tmp_path / "toy_shards", samples_per_shard=4)
    return str(tmp_path / "toy_shards")


def test_sd15_training_on_shards_resumes_with_the_same_losses(toy_shards, pretrained_files, toy_data, tmp_path):  # noqa: F811
    from test_training import log_records, pretrained_config

    from livephoto_core.training.engine import train

    def config(run, steps):
        values = pretrained_config(toy_data, pretrained_files, tmp_path / run, **{"data.shards": toy_shards})
        values["data"]["index"] = ""
        return TrainConfig.from_dict({**values, "steps": steps, "checkpoint_every": 2})

    uninterrupted = train(config("whole", 4))
    assert sorted(uninterrupted.losses) == [1, 2, 3, 4] and uninterrupted.export is not None
    data_record = log_records(tmp_path / "whole", "data")[0]
    assert (data_record["usable"], data_record["shards"]) == (16, 4)
    train(config("sliced", 2))
    resumed = train(config("sliced", 4), resume="latest")
    assert sorted(resumed.losses) == [3, 4]
    for step in (3, 4):
        assert resumed.losses[step] == pytest.approx(uninterrupted.losses[step], abs=1e-6, rel=0)
