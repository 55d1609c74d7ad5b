"""The toy world: sampling, rendering against independent references, writing, and the benchmark's
motion measurements."""

import csv
import json
import math

import av
import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import polygon as fill_polygon
from skimage.metrics import structural_similarity

from livephoto_core.errors import InvalidInputError, OutputExistsError
from livephoto_core.intensity import fit_thresholds, level_from_ssim, mean_adjacent_ssim
from benchmarks import motion_measure as measure
from livephoto_core.training import toyworld as tw


def specs(count, seed=0, split="train", **sampling):
    return [tw.clip_spec(seed, i, split, **sampling) for i in range(count)]


# ---------------------------------------------------------------------------------------------
# Sampling


def test_specs_and_frames_are_deterministic_per_seed_and_index():
    a, b = tw.clip_spec(7, 3), tw.clip_spec(7, 3)
    assert a == b
    np.testing.assert_array_equal(tw.render_clip(a), tw.render_clip(b))
    assert tw.clip_spec(7, 4) != a and tw.clip_spec(8, 3) != a
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert tw.sample_clip_spec(rng_a) == tw.sample_clip_spec(rng_b)


def test_heldout_split_draws_other_images():
    train, heldout = specs(50), specs(50, split="heldout")
    assert not {s.scene for s in train} & {s.scene for s in heldout}
    assert all(s.phrasing == "heldout" for s in heldout)


def test_render_shapes_and_photo():
    spec = tw.clip_spec(0, 0, size=48, frames=16)
    clip = tw.render_clip(spec)
    assert clip.shape == (16, 48, 48, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(tw.render_photo(spec), clip[0])


def test_motion_mix_follows_weights_and_directions_are_balanced():
    drawn = specs(1200)
    keys = [
        next(k for k, v in tw.MOTIONS.items() if v[0] == s.motion and (v[1] == s.direction or s.motion == "rotate"))
        for s in drawn
    ]
    for key, weight in tw.DEFAULT_MOTION_WEIGHTS.items():
        assert abs(keys.count(key) / len(drawn) - weight) < 0.04, key
    only = specs(40, motion_weights={"left": 1.0, "zoom_out": 1.0})
    assert {(s.motion, s.direction) for s in only} == {("translate", "left"), ("zoom", "out")}


@pytest.mark.parametrize(
    "bad",
    [
        {"size": 8},
        {"frames": 1},
        {"motion_weights": {"sideways": 1.0}},
        {"motion_weights": {"left": 0.0}},
        {"conflict_rate": 1.5},
        {"two_shape_rate": -0.1},
        {"min_translation": 0.0},
        {"min_translation": 0.9},
    ],
)
def test_bad_sampling_arguments_are_refused(bad):
    with pytest.raises(InvalidInputError):
        tw.clip_spec(0, 0, **bad)
    with pytest.raises(InvalidInputError):
        tw.clip_spec(0, 0, split="test")


def test_two_shapes_have_distinct_colours_and_never_overlap():
    two = [s for s in specs(300, two_shape_rate=1.0, conflict_rate=0.0) if len(s.scene.shapes) == 2]
    assert len(two) > 220  # the rest found no room beside the first shape
    for spec in two:
        assert spec.scene.shapes[0].colour != spec.scene.shapes[1].colour
        clip = tw.render_clip(spec)
        masks = [np.stack([measure.colour_mask(f, shape.colour) for f in clip]) for shape in spec.scene.shapes]
        # Dilated by one pixel, the two shapes' pixels stay apart in every frame.
        assert not (ndimage.binary_dilation(masks[0], structure=np.ones((1, 3, 3))) & masks[1]).any()
    assert all(len(s.scene.shapes) == 1 for s in specs(50, two_shape_rate=0.0))


@pytest.mark.parametrize("frames, size", [(8, 64), (16, 64), (8, 96)])
def test_shapes_stay_inside_the_frame_for_the_whole_clip(frames, size):
    for spec in specs(150, frames=frames, size=size):
        clip = tw.render_clip(spec)
        shapes = np.stack([measure.colour_mask(f) for f in clip])
        assert not shapes[:, [0, -1], :].any() and not shapes[:, :, [0, -1]].any()
        if spec.motion in ("translate", "rotate", "still"):
            # Nothing is cut off: the moving shape keeps its area.
            colour = spec.scene.shapes[spec.subject].colour
            _, full = measure._hue_and_chroma(np.array(tw.PALETTE[colour]) / 255)
            _, chroma = measure._hue_and_chroma(clip / 255)
            # Coverage-weighted area: the shape's chroma summed over its (anti-aliased) pixels.
            areas = [(c * measure.colour_mask(f, colour, min_chroma=0.1)).sum() / full for f, c in zip(clip, chroma)]
            assert max(areas) / min(areas) < 1.03, spec


def test_rotation_never_picks_a_circle_and_stays_below_half_the_symmetry():
    rotations = specs(200, motion_weights={"rotate": 1.0})
    for spec in rotations:
        kind = spec.scene.shapes[spec.subject].kind
        assert kind != "circle"
        assert 0 < spec.speed < 0.5 * tw._SYMMETRY_DEGREES[kind]
    assert {s.direction for s in rotations} == {"clockwise", "counterclockwise"}


def test_speeds_spread_from_very_slow_to_fast():
    # Translations move at least 2 latent pixels (8 px at 64 px); the other motions start barely visible.
    travel = [s.speed * (s.frames - 1) for s in specs(600, motion_weights={"left": 1.0})]
    assert 8.0 <= min(travel) < 9.0 and max(travel) > 25.0
    # Log-uniform: every band of a factor of 1.5 between the extremes is populated.
    counts, _ = np.histogram(np.log(travel), bins=np.arange(math.log(8.0), math.log(35.2), math.log(1.5)))
    assert (counts > 60).all(), counts
    zooms = [s.speed ** (s.frames - 1) for s in specs(600, motion_weights={"zoom_in": 1.0})]
    assert min(zooms) < 1.06 and max(zooms) > 1.9


def test_min_translation_lets_translations_go_slower():
    slow = [s.speed * (s.frames - 1) for s in specs(300, motion_weights={"up": 1.0}, min_translation=0.03)]
    assert 0.03 * 64 <= min(slow) < 2.5 and max(slow) > 25.0
    assert 0.3 < np.mean(np.array(slow) < 8.0) < 0.7  # log-uniform: about half below the default's 8 px


# ---------------------------------------------------------------------------------------------
# Captions


def _skeleton(caption: str) -> str:
    words = set(tw.PALETTE) | set(tw.SHAPE_KINDS) | {"left", "right", "up", "down"}
    return " ".join("X" if w in words else w for w in caption.replace("to the ", "").split())


def test_captions_use_only_the_vocabulary_and_splits_use_disjoint_phrasings():
    train, heldout = specs(800), specs(800, split="heldout")
    vocabulary = set(tw.TOY_VOCABULARY)
    for spec in train + heldout:
        assert spec.caption == spec.caption.lower()
        assert set(spec.caption.split()) <= vocabulary, spec.caption
    assert not {_skeleton(s.caption) for s in train} & {_skeleton(s.caption) for s in heldout}
    assert len(vocabulary) < 70
    # Every word of the vocabulary shows up in some caption.
    assert set().union(*(s.caption.split() for s in train + heldout)) == vocabulary


def test_heldout_phrasings_keep_the_motion_words_seen_in_training():
    motion_words = {
        "translate": {"left", "right", "up", "down"},
        "zoom": {"zoom", "zooms", "zooming", "in", "out"},
        "rotate": {"rotates", "rotating", "spins", "spinning"},
        "still": {"still", "static"},
    }
    train_words = set().union(*(s.caption.split() for s in specs(800)))
    for spec in specs(400, split="heldout"):
        used = set(spec.caption.split()) & motion_words[spec.motion]
        assert used and used <= train_words, spec.caption


def test_captions_match_the_clip_unless_marked_as_conflict():
    drawn = specs(1500)
    conflicts = [s for s in drawn if s.conflict]
    assert abs(len(conflicts) / len(drawn) - 0.15) < 0.03
    for spec in drawn:
        subject = spec.scene.shapes[spec.subject]
        words = spec.caption.split()
        if spec.motion == "translate":
            assert spec.direction in words
        if spec.motion == "zoom":
            assert spec.direction in words
        if spec.named_colour is None:
            assert not spec.conflict and not set(words) & set(tw.PALETTE)
            continue
        assert spec.named_colour in words and spec.named_kind in words
        present = {(s.colour, s.kind) for s in spec.scene.shapes}
        if spec.conflict:
            assert (spec.named_colour, spec.named_kind) not in present
            assert len(spec.scene.shapes) == 1  # which shape moves is never a guess
        else:
            assert (spec.named_colour, spec.named_kind) == (subject.colour, subject.kind)
    assert not any(s.conflict for s in specs(200, conflict_rate=0.0))


# ---------------------------------------------------------------------------------------------
# Rendering against independent references


def _supersampled_coverage(vertices, size, factor=16):
    """Fraction of each pixel inside a polygon, by filling it on a factor-times finer grid (skimage)."""
    rows, cols = fill_polygon(vertices[:, 1] * factor - 0.5, vertices[:, 0] * factor - 0.5, (size * factor,) * 2)
    fine = np.zeros((size * factor,) * 2)
    fine[rows, cols] = 1.0
    return fine.reshape(size, factor, size, factor).mean(axis=(1, 3))


@pytest.mark.parametrize("kind", ["circle", "square", "triangle", "star"])
def test_anti_aliased_shape_matches_supersampled_rasterisation(kind):
    size, centre, radius, angle = 40, (19.3, 21.7), 11.2, 17.0
    image = np.zeros((size, size, 3))
    tw._paint_shape(image, kind, "red", centre, radius, angle)
    coverage = image[..., 0] / (230 / 255)
    if kind == "circle":
        theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
        vertices = np.stack([centre[0] + radius * np.cos(theta), centre[1] + radius * np.sin(theta)], axis=-1)
    else:
        vertices = tw._polygon_vertices(kind, centre, radius, angle)
    reference = _supersampled_coverage(vertices, size)
    assert np.abs(coverage - reference).max() < 0.15
    assert abs(coverage.sum() - reference.sum()) / reference.sum() < 0.005


def test_locate_shape_finds_the_analytic_centre_and_area():
    # Area over circumradius squared; the star is 10 triangles of sides 1 and 0.45 at 36 degrees.
    areas = {
        "circle": math.pi,
        "square": 2.0,
        "triangle": 3 * math.sqrt(3) / 4,
        "star": 10 * 0.5 * 0.45 * math.sin(math.radians(36)),
    }
    for spec in specs(100, two_shape_rate=1.0, look="classic") + specs(200, two_shape_rate=1.0, look="varied"):
        photo = tw.render_photo(spec)
        # Drawn at the frame's own size the edges are exact; drawn larger and Lanczos-resized, nearly.
        exact = spec.scene.render_scale == 1
        for shape in spec.scene.shapes:
            centroid, area = measure.locate_shape(photo, shape.colour)
            squeeze = min(shape.stretch, 1 / shape.stretch)
            # Small or squeezed shapes are mostly edge pixels, which the colour blend measures less exactly.
            sharp = exact and shape.radius * squeeze >= 6.4  # the classic look's smallest
            # Regular shapes (also squeezed ones) have their centroid at the centre of their circumcircle.
            assert math.dist(centroid, shape.centre) < (0.1 if sharp else 0.2), (shape, centroid)
            expected = areas[shape.kind] * shape.radius**2 * squeeze
            assert abs(area / expected - 1) < (0.02 if sharp else 0.08), shape
    assert measure.locate_shape(np.full((32, 32, 3), 128, np.uint8), "red") == (None, 0.0)


def test_zoom_scales_the_whole_frame_about_the_centre():
    spec = next(s for s in specs(200, motion_weights={"zoom_in": 1.0}, look="classic") if s.speed ** (s.frames - 1) > 1.5)
    clip = tw.render_clip(spec).astype(float)
    scale = spec.speed ** (spec.frames - 1)
    size = spec.scene.size
    # The last frame's centre region equals the first frame magnified about the centre.
    y, x = np.mgrid[0:size, 0:size] + 0.5
    source = [(c - size / 2) / scale + size / 2 - 0.5 for c in (y, x)]
    predicted = np.stack([ndimage.map_coordinates(clip[0, ..., c], source, order=1) for c in range(3)], axis=-1)
    inner = slice(size // 4, 3 * size // 4)
    assert structural_similarity(predicted[inner, inner], clip[-1, inner, inner], channel_axis=-1, data_range=255) > 0.9


def test_background_is_low_saturation_and_shapes_are_saturated():
    for spec in specs(50, look="classic") + specs(100, look="varied"):
        photo = tw.render_photo(spec).astype(float) / 255
        _, chroma = measure._hue_and_chroma(photo)
        size = spec.scene.size
        y, x = np.mgrid[0:size, 0:size] + 0.5
        background = np.ones((size, size), bool)
        for shape in spec.scene.shapes:
            # Lanczos resizing rings for about three output pixels beside an edge.
            rim = 1 if spec.scene.render_scale == 1 else 3
            background &= np.hypot(x - shape.centre[0], y - shape.centre[1]) > shape.radius + rim
            _, area = measure.locate_shape(photo, shape.colour)
            assert area > 0
        assert chroma[background].max() < 0.1
        assert chroma[~background].max() > 0.74


# ---------------------------------------------------------------------------------------------
# Intensity levels


def test_every_motion_spreads_over_the_ssim_intensity_levels():
    drawn = specs(400)
    ssims = np.array([mean_adjacent_ssim(tw.render_clip(s)) for s in drawn])
    thresholds = fit_thresholds(ssims)
    levels = np.array([level_from_ssim(v, thresholds) for v in ssims])
    for motion in ("translate", "rotate", "zoom"):
        populated = set(levels[[s.motion == motion for s in drawn]])
        assert len(populated) >= 8, (motion, sorted(populated))
    assert (ssims[[s.motion == "still" for s in drawn]] == 1.0).all()
    assert set(levels[[s.motion == "still" for s in drawn]]) == {1}
    # Faster clips of one motion have lower SSIM (rank correlation, computed by hand).
    left = [i for i, s in enumerate(drawn) if s.motion == "translate"]
    speed_rank = np.argsort(np.argsort([drawn[i].speed for i in left]))
    ssim_rank = np.argsort(np.argsort(ssims[left]))
    # Textured backgrounds make SSIM depend on the scene too, so the correlation is strong, not perfect.
    assert np.corrcoef(speed_rank, ssim_rank)[0, 1] < -0.5


# ---------------------------------------------------------------------------------------------
# Writing a data set


def _decode_with_pyav(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)]), stream.average_rate


def test_write_dataset_is_lossless_and_its_labels_reproduce_the_clips(tmp_path):
    csv_path = tw.write_dataset(tmp_path / "toy", num_clips=12, seed=3, frames=6, size=32, fps=8)
    assert csv_path == tmp_path / "toy" / "captions.csv"
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = [json.loads(line) for line in (tmp_path / "toy" / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == len(labels) == 12
    for index, (row, label) in enumerate(zip(rows, labels)):
        assert row["path"] == label["path"] and not row["path"].startswith("/")
        assert row["caption"] == label["caption"] and label["split"] == "train"
        spec = tw.ToyClipSpec.from_dict(label)
        assert spec == tw.clip_spec(3, index, size=32, frames=6)
        frames, rate = _decode_with_pyav(csv_path.parent / row["path"])
        assert rate == 8
        np.testing.assert_array_equal(frames, tw.render_clip(spec))  # bit-exact: frame-0 PSNR is infinite
    assert {"motion", "direction", "speed", "subject", "conflict", "scene"} <= set(labels[0])


def test_write_dataset_refuses_to_replace_a_data_set_unless_overwriting(tmp_path):
    (tmp_path / "notes.txt").write_text("kept")
    tw.write_dataset(tmp_path, num_clips=2, seed=0, size=32, frames=3)
    with pytest.raises(OutputExistsError):
        tw.write_dataset(tmp_path, num_clips=2, seed=0, size=32, frames=3)
    tw.write_dataset(tmp_path, num_clips=1, seed=1, size=32, frames=3, split="heldout", overwrite=True)
    assert [p.name for p in (tmp_path / "clips").iterdir()] == ["000000.mp4"]
    assert json.loads((tmp_path / "labels.jsonl").read_text())["split"] == "heldout"
    assert (tmp_path / "notes.txt").read_text() == "kept"
    with pytest.raises(InvalidInputError):
        tw.write_dataset(tmp_path / "other", num_clips=1, seed=0, split="validation")
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------------------------------------
# Motion measurements


def _degrade(clip, rng):
    """Blur, a 30 % loss of saturation, a small hue-preserving brightness shift and noise."""
    frames = ndimage.gaussian_filter(clip.astype(float) / 255, sigma=(0, 1.0, 1.0, 0))
    grey = frames.mean(axis=-1, keepdims=True)
    frames = grey + 0.7 * (frames - grey) + 0.03
    return np.clip(frames + rng.normal(0, 0.03, frames.shape), 0, 1)


@pytest.mark.parametrize("degraded", [False, True])
def test_measured_direction_and_zoom_match_the_ground_truth(degraded):
    rng = np.random.default_rng(0)
    outcomes = {"translate": [], "zoom": [], "none": []}
    for spec in specs(300, seed=11):
        clip = tw.render_clip(spec)
        frames = _degrade(clip, rng) if degraded else clip
        subject = spec.scene.shapes[spec.subject]
        direction = measure.displacement_direction(frames, subject.colour)
        zoom = measure.zoom_direction(frames)
        if spec.motion == "translate":
            outcomes["translate"].append(direction == spec.direction)
        elif spec.motion == "zoom":
            outcomes["zoom"].append(zoom == spec.direction)
        elif spec.motion in ("still", "rotate"):
            outcomes["none"].append(direction is None and zoom is None)
    floor = 0.98 if degraded else 1.0
    for name, results in outcomes.items():
        assert len(results) > 30 and np.mean(results) >= floor, (name, np.mean(results))


def test_colour_mask_accepts_uint8_and_float_and_refuses_unknown_colours():
    photo = tw.render_photo(tw.clip_spec(0, 1))
    np.testing.assert_array_equal(measure.colour_mask(photo, "red"), measure.colour_mask(photo / 255.0, "red"))
    with pytest.raises(InvalidInputError):
        measure.colour_mask(photo, "orange")


def test_displacement_direction_reads_image_axes():
    size = 48
    frames = np.full((5, size, size, 3), 120, np.uint8)
    for t in range(5):
        frames[t, 20 + 2 * t : 28 + 2 * t, 10:18] = tw.PALETTE["blue"]  # moves down the image
    assert measure.displacement_direction(frames, "blue") == "down"
    assert measure.displacement_direction(frames[::-1], "blue") == "up"
    assert measure.displacement_direction(frames.transpose(0, 2, 1, 3), "blue") == "right"
    assert measure.displacement_direction(frames, "red") is None
