"""scripts/balance_toy_levels.py: a toy index with every motion spread evenly over the levels."""

import csv
import json
from collections import Counter

import numpy as np
import pytest

from livephoto_core.training import toyworld as tw
from scripts.balance_toy_levels import balanced_rows, main


def test_each_motion_gets_its_share_spread_evenly_over_its_levels():
    clips = {"zoom": {1: list("abcdefgh"), 2: list("ij"), 5: list("k")},  # level 5: too few, left out
             "translate": {3: list("lmnop"), 4: list("qrstu")}}
    rows = balanced_rows(clips, {"zoom": 0.5, "translate": 0.5}, rows=16, max_repeats=3, min_clips=2,
                         rng=np.random.default_rng(0))
    counts = Counter(rows)
    zoom_level_1 = sum(counts[c] for c in "abcdefgh")
    assert zoom_level_1 == 4 and sum(counts[c] for c in "ij") == 4  # 8 zoom rows, 4 per level
    assert counts["i"] == counts["j"] == 2 and all(counts[c] <= 1 for c in "abcdefgh")
    assert "k" not in counts
    assert sum(counts[c] for c in "lmnop") == 4 and sum(counts[c] for c in "qrstu") == 4
    # A level too thin for its quota repeats each clip at most max_repeats times.
    capped = balanced_rows({"zoom": {1: ["a"], 2: list("bcdefghij")}}, {"zoom": 1.0}, rows=10, max_repeats=2,
                           min_clips=1, rng=np.random.default_rng(0))
    assert Counter(capped)["a"] == 2 and len(capped) == 7


def test_writes_an_index_that_training_reads_and_refuses_to_overwrite(tmp_path, capsys):
    first = tw.write_dataset(tmp_path / "a", 24, seed=0, size=32, frames=4)
    second = tw.write_dataset(tmp_path / "b", 12, seed=1, size=32, frames=4, min_translation=0.03,
                              motion_weights={"left": 1.0})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data": {"num_frames": 4, "stride": 1, "size": 32,
                                           "thresholds": [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.96, 0.99]}}))
    out = tmp_path / "index" / "levels.csv"
    args = ["--data", str(first.parent), str(second.parent), "--out", str(out), "--thresholds-from", str(config),
            "--rows", "40", "--min-clips", "1"]
    assert main(args) == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert 20 <= len(rows) <= 40
    assert all((out.parent / row["path"]).is_file() for row in rows)
    assert {row["path"].split("/")[1] for row in rows} == {"a", "b"}
    assert "translate: clips per level" in capsys.readouterr().out
    assert main(args) == 2 and "exists" in capsys.readouterr().err


def test_bad_arguments_get_one_clear_line(tmp_path, capsys):
    out = str(tmp_path / "index.csv")
    assert main(["--data", str(tmp_path / "nothing"), "--out", out]) == 2
    assert "labels.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--out", out, "--shares", "zoom"])
    assert "MOTION=SHARE" in capsys.readouterr().err
