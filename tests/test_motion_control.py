"""The motion-control benchmark's scoring, held to the toy world's ground truth, and its plumbing on a tiny model."""

import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.motion_control import (  # noqa: E402
    TRANSLATIONS,
    ZOOMS,
    Workload,
    evaluate,
    heldout_specs,
    parse_models,
    pipeline_renderer,
    table,
)
from livephoto_core.intensity import DEFAULT_THRESHOLDS, measure_intensity  # noqa: E402
from livephoto_core.training.toyworld import render_clip, render_photo  # noqa: E402

SMALL = Workload(direction_clips=4, zoom_clips=2, intensity_photos=1, conflict_clips=4)


def ground_truth_renderer(workload: Workload, reverse: bool = False):
    """Renders each held-out photo as the toy world does: its true clip (reversed: the opposite motion)."""
    clips = {}
    for offset, motions, conflict, count in (
        (0, TRANSLATIONS, False, workload.direction_clips), (1, ZOOMS, False, workload.zoom_clips),
        (2, TRANSLATIONS, True, workload.conflict_clips),
        (3, TRANSLATIONS + ZOOMS, False, workload.intensity_photos),
    ):
        for spec in heldout_specs(workload.seed + offset, motions, count, conflict, 64, 8):
            clip = render_clip(spec) / 255.0
            clips[render_photo(spec).tobytes()] = clip[::-1] if reverse else clip

    def render(photo, prompt, level, prior_inversion, seed):
        return clips[photo.tobytes()]

    return render


def measure_level(frames):
    return measure_intensity(frames, DEFAULT_THRESHOLDS).level


def test_the_true_clips_score_every_direction_and_zoom_right_and_reproduce_the_photo():
    summary = evaluate(ground_truth_renderer(SMALL), measure_level, SMALL, 64, 8).summary()
    assert summary["direction_accuracy"] == summary["zoom_accuracy"] == summary["conflict_direction_accuracy"] == 1
    assert summary["frame0_ssim"] == pytest.approx(1.0)
    assert summary["frame0_psnr_db"] == np.inf
    # The output ignores the requested level here, so the ranks cannot correlate.
    assert summary["intensity_spearman"] is None
    assert summary["counts"] == {"direction": 4, "zoom": 2, "conflict": 4, "intensity": 8}


def test_clips_played_backwards_score_every_direction_and_zoom_wrong():
    summary = evaluate(ground_truth_renderer(SMALL, reverse=True), measure_level, SMALL, 64, 8).summary()
    assert summary["direction_accuracy"] == summary["zoom_accuracy"] == summary["conflict_direction_accuracy"] == 0
    assert summary["frame0_psnr_db"] < 40  # frame 0 is now the last frame


def test_held_out_cases_are_balanced_and_conflicts_name_what_the_photo_lacks():
    specs = heldout_specs(1, TRANSLATIONS, 8, True, 64, 8)
    assert [s.direction for s in specs] == list(TRANSLATIONS) * 2
    for spec in specs:
        assert spec.phrasing == "heldout" and spec.conflict
        assert all((shape.colour, shape.kind) != (spec.named_colour, spec.named_kind) for shape in spec.scene.shapes)


def test_the_benchmark_runs_through_a_pipeline(tmp_path):
    pipe = tiny_pipeline(tmp_path)
    workload = Workload(direction_clips=1, zoom_clips=1, intensity_photos=1, conflict_clips=1)
    scores = evaluate(pipeline_renderer(pipe, steps=2, guidance=4.0), measure_level, workload, 64, 8)
    summary = scores.summary()
    assert summary["clips"] == 1 + 1 + 1 + 8
    assert 0 <= summary["frame0_ssim"] <= 1 and summary["intensity_spearman"] is None or -1 <= summary[
        "intensity_spearman"] <= 1
    row = table({"tiny": {"rows": {"with inversion": summary}, "vae_round_trip_psnr_db": 12.0}})
    assert row.splitlines()[-1].startswith("| tiny | ")


def test_model_arguments_are_name_equals_path():
    assert parse_models(None) == {"demo model": None}
    assert parse_models(["full=a.safetensors", "no map=b.safetensors"]) == {"full": "a.safetensors",
                                                                            "no map": "b.safetensors"}
    with pytest.raises(SystemExit, match="NAME=PATH"):
        parse_models(["a.safetensors"])
