"""The motion-control benchmark's scoring, held to the toy world's ground truth, and its plumbing on a tiny model."""

import numpy as np
import pytest

from benchmarks.motion_control import (
    PHOTO_SETS,
    SPLIT_SEEDS,
    TRANSLATIONS,
    ZOOMS,
    Case,
    Workload,
    direction_cases,
    evaluate,
    heldout_specs,
    parse_models,
    pipeline_renderer,
    probe_table,
    swapped_caption,
    table,
    wilson_interval,
    zoom_cases,
)
from livephoto_core.intensity import DEFAULT_THRESHOLDS, measure_intensity
from livephoto_core.testing.tiny import tiny_pipeline
from livephoto_core.training.toyworld import render_clip

SMALL = Workload(direction_photos=2, zoom_photos=1, intensity_photos=1, conflict_clips=4)


def ground_truth_renderer(workload: Workload, photo_set: str, reverse: bool = False):
    """Renders each held-out case as the toy world does: the clip its prompt asks for (reversed: the
    opposite motion)."""
    look, full = PHOTO_SETS[photo_set], photo_set != "toy"
    specs = [spec for variants in direction_cases(workload, 64, 8, look) + zoom_cases(workload, 64, 8, look)
             for spec in variants]
    specs += heldout_specs(workload.seed + 2, TRANSLATIONS, workload.conflict_clips, True, 64, 8, look)
    specs += heldout_specs(workload.seed + 3, TRANSLATIONS + ZOOMS, workload.intensity_photos, False, 64, 8, look)
    clips = {}
    for spec in specs:
        clip = render_clip(spec) / 255.0
        clips[Case(spec, full).photo().tobytes(), spec.caption] = clip[::-1] if reverse else clip

    def render(photo, prompt, level, prior_inversion, seed):
        return clips[photo.tobytes(), prompt]

    return render


def measure_level(frames):
    return measure_intensity(frames, DEFAULT_THRESHOLDS).level


@pytest.mark.parametrize("photo_set", list(PHOTO_SETS))
def test_the_true_clips_score_every_direction_and_zoom_right_and_reproduce_the_photo(photo_set):
    renderer = ground_truth_renderer(SMALL, photo_set)
    summary = evaluate(renderer, measure_level, SMALL, 64, 8, photo_set=photo_set).summary()
    assert summary["direction_accuracy"] == summary["zoom_accuracy"] == summary["conflict_direction_accuracy"] == 1
    assert summary["counts"] == {"direction": 8, "zoom": 2, "conflict": 4, "intensity": 8}
    # The output ignores the requested level here, so the ranks cannot correlate.
    assert summary["intensity_spearman"] is None
    # Four different motions of one photo differ; frame 0 is the photo (up to the pipeline's own resize of a
    # larger photo against the toy world's).
    assert summary["direction_pixel_spread"] > 0.005
    if photo_set == "toy":
        assert summary["frame0_psnr_db"] == np.inf
    else:
        assert summary["frame0_psnr_db"] > 35 and summary["frame0_ssim"] > 0.98


def test_clips_played_backwards_score_every_direction_and_zoom_wrong():
    summary = evaluate(ground_truth_renderer(SMALL, "toy", reverse=True), measure_level, SMALL, 64, 8).summary()
    assert summary["direction_accuracy"] == summary["zoom_accuracy"] == summary["conflict_direction_accuracy"] == 0
    assert summary["frame0_psnr_db"] < 40  # frame 0 is now the last frame


def test_every_direction_photo_is_asked_all_four_directions_in_held_out_words():
    from livephoto_core.training.toyworld import TEMPLATES

    trained = {w for t in TEMPLATES["translate"]["train"] for w in t.split()}
    for variants in direction_cases(Workload(direction_photos=3), 64, 8, "photo"):
        assert [v.direction for v in variants] == list(TRANSLATIONS)
        assert len({Case(v, True).photo().tobytes() for v in variants}) == 1  # one photo, four prompts
        for spec in variants:
            assert spec.phrasing == "heldout" and spec.direction in spec.caption.split()
            words = set(spec.caption.split()) - {"to", "the"} - {spec.direction}
            assert words <= trained | {spec.scene.shapes[spec.subject].colour, spec.scene.shapes[spec.subject].kind}
            assert swapped_caption(spec).split().count(spec.direction) == 0


def test_wilson_intervals_match_the_textbook_values():
    # 8 of 10: (0.490, 0.943) (Wilson 1927; e.g. Newcombe 1998, table I).
    low, high = wilson_interval([True] * 8 + [False] * 2)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson_interval([True] * 128)[0] > 0.97 and wilson_interval([]) is None


def test_held_out_cases_are_balanced_and_conflicts_name_what_the_photo_lacks():
    specs = heldout_specs(1, TRANSLATIONS, 8, True, 64, 8)
    assert [s.direction for s in specs] == list(TRANSLATIONS) * 2
    for spec in specs:
        assert spec.phrasing == "heldout" and spec.conflict
        assert all((shape.colour, shape.kind) != (spec.named_colour, spec.named_kind) for shape in spec.scene.shapes)


def test_the_benchmark_runs_through_a_pipeline(tmp_path):
    from benchmarks.motion_control import caption_swap_gaps, first_step_directions, token_weight_means

    pipe = tiny_pipeline(tmp_path)
    workload = Workload(direction_photos=1, zoom_photos=1, intensity_photos=1, conflict_clips=1, swap_clips=2)
    render = pipeline_renderer(pipe, steps=2, guidance=4.0, scheduler="dpmpp_2m")
    scores = evaluate(render, measure_level, workload, 64, 8, photo_set="photos")
    summary = scores.summary()
    assert summary["clips"] == 4 + 2 + 1 + 8
    assert 0 <= summary["frame0_ssim"] <= 1 and summary["intensity_spearman"] is None or -1 <= summary[
        "intensity_spearman"] <= 1
    gaps = caption_swap_gaps(pipe, workload)
    assert set(gaps) == {999, 900, 700, 500, 300} and all(np.isfinite(list(gaps.values())))
    first_steps = first_step_directions(pipe, workload, guidance=4.0)
    assert len(first_steps) == 4 and all(isinstance(hit, bool) for hit in first_steps)
    weights = token_weight_means(pipe, workload)
    assert set(weights) == {"motion_words", "content_words", "other_words", "start_token", "padding"}
    assert all(0 <= value <= 1 for value in weights.values())
    result = {"rows": {"photos, with inversion": summary}, "vae_round_trip_psnr_db": {"photos": 12.0},
              "caption_swap_gap": {"photos": gaps}, "token_weights": weights,
              "first_step_direction": {"photos": {"accuracy": 0.5, "ci95": (0.1, 0.9), "count": 4}}}
    assert table({"tiny": result}).splitlines()[-1].startswith("| tiny | photos | ")
    assert probe_table({"tiny": result}).splitlines()[-1].startswith("| tiny | photos | ")


def test_validation_scenes_are_not_test_scenes():
    """Checkpoints are picked on the validation split; no photo of it may be a test photo."""
    def photos(split: str) -> list[bytes]:
        workload = Workload(direction_photos=8, zoom_photos=4, seed=SPLIT_SEEDS[split])
        cases = direction_cases(workload, 64, 8, "classic") + zoom_cases(workload, 64, 8, "classic")
        return [Case(variants[0], False).photo().tobytes() for variants in cases]

    # Every metric draws from seed + 0..4: the two splits' seed ranges must not meet.
    assert abs(SPLIT_SEEDS["test"] - SPLIT_SEEDS["validation"]) > 4
    assert not set(photos("test")) & set(photos("validation"))


def test_model_arguments_are_name_equals_path():
    assert parse_models(None) == {"demo model": None}
    assert parse_models(["full=a.safetensors", "no map=b.safetensors"]) == {"full": "a.safetensors",
                                                                            "no map": "b.safetensors"}
    with pytest.raises(SystemExit, match="NAME=PATH"):
        parse_models(["a.safetensors"])


def test_level_summary_separates_the_offset_between_photos_from_following_the_level():
    from benchmarks.motion_levels import summary

    # Two photos that each follow the level exactly, one placed 2 levels higher: perfect within a
    # photo, less than perfect pooled.
    rows = [["toy", "translate", 0, level, level - 1] for level in range(2, 10)]
    rows += [["toy", "zoom", 1, level, level + 1] for level in range(2, 10)]
    figures = summary(rows)
    assert figures["mean_within_photo"] == 1.0
    assert figures["by_motion"] == {"translate": 1.0, "zoom": 1.0}
    assert 0.5 < figures["pooled"] < 0.95


def test_the_ideal_model_gives_each_level_the_nearest_level_the_scene_reaches():
    from benchmarks.motion_control import LEVELS
    from benchmarks.motion_levels import ceiling_rows, reachable_levels

    specs = heldout_specs(7, ("left", "zoom_in"), 2, False, 64, 8, "classic")
    for spec in specs:
        reachable = reachable_levels(spec, DEFAULT_THRESHOLDS)
        rows = ceiling_rows([spec], "toy", DEFAULT_THRESHOLDS)
        measured = [row[4] for row in rows]
        assert [row[3] for row in rows] == list(LEVELS) and set(measured) <= reachable
        assert measured == sorted(measured) and len(reachable) >= 3  # slow to fast: several levels
        for row in rows:
            assert all(abs(row[4] - row[3]) <= abs(level - row[3]) for level in reachable)


def test_reweighter_gradient_probe_reads_every_word_class(tmp_path):
    from benchmarks.reweighter_gradient import summary, token_gradients
    from livephoto_core.training import toyworld as tw

    pipe = tiny_pipeline(tmp_path)
    config = pipe.config
    data = tw.write_dataset(tmp_path / "toy", 6, seed=0, size=config.height, frames=config.num_frames,
                            conflict_rate=0.5).parent
    gradients = token_gradients(pipe, data, clips=6)
    assert len(gradients["padding"]) == 6 and gradients["motion words"]
    assert gradients["content words"] or gradients["content words, conflicting"]
    assert all(np.isfinite(v).all() for v in gradients.values())
    figures = summary({"motion words": [1.0, 3.0], "padding": [2.0]})
    assert figures == {"motion words": {"count": 2, "mean": 2.0, "sd": pytest.approx(2 ** 0.5), "t": pytest.approx(2.0)}}
