"""The bundled demo model: complete, small, what `livephoto animate` uses with no model options."""

import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from livephoto_core.cli import main
from livephoto_core.loading.assemble import DEMO_MODEL_DIR, demo_checkpoint
from livephoto_core.loading.checkpoint import read_livephoto_config
from livephoto_core.loading.detect import detect_path
from livephoto_core.loading.files import content_hash
from livephoto_core.video import read_video

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "assets" / "red_circle.png"
MAX_BYTES = 25 * 1024 * 1024


def test_the_demo_model_is_complete_and_under_25_mb():
    files = [path for path in DEMO_MODEL_DIR.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= MAX_BYTES
    config = read_livephoto_config(demo_checkpoint())
    assert config.base_model == "bundled" and config.motion_weights == "checkpoint"
    assert detect_path(DEMO_MODEL_DIR / "base").kind == "sd15"
    assert detect_path(DEMO_MODEL_DIR / "dinov2").kind == "dinov2"
    assert (DEMO_MODEL_DIR / "base" / "tokenizer" / "vocab.json").is_file()


def test_the_recipe_that_trained_it_is_in_the_repository():
    """The shipped model records the config it was trained with: the committed second phase's, but for
    where the run's files lay (the recipe unpacks the fine-tune it starts from to runs/demo-ft1; the run read
    it from livephoto_core/demo_model, where it was then)."""
    recipe = json.loads((ROOT / "configs" / "train" / "demo_second_phase.json").read_text())
    trained = read_livephoto_config(demo_checkpoint()).extra["training"]["config"]
    for section in ("model", "scratch"):
        for where in ("init_from", "images_from", "base", "dinov2", "tokenizer", "motion_module"):
            recipe[section].pop(where, None), trained[section].pop(where, None)
    recipe.pop("output_dir")

    def assert_within(asked: dict, recorded: dict, where: str) -> None:  # the record also holds the defaults
        for key, value in asked.items():
            if isinstance(value, dict):
                assert_within(value, recorded[key], f"{where}{key}.")
            else:
                assert recorded[key] == value, f"{where}{key}"

    assert_within(recipe, trained, "")


def test_animate_with_no_model_options_uses_the_demo_model(tmp_path):
    out = tmp_path / "red_circle.webp"
    assert main(["animate", str(PHOTO), "the red circle moves to the left", "-o", str(out), "--seed", "0"]) == 0
    clip = read_video(out)
    config = read_livephoto_config(demo_checkpoint())
    assert len(clip.frames) == config.num_frames
    settings = json.loads((tmp_path / "red_circle.webp.json").read_text())
    assert settings["model_hashes"]["livephoto"] == content_hash(demo_checkpoint())
    # The first frame is the photo again, as well as the demo model's small VAE allows.
    photo = np.asarray(Image.open(PHOTO).convert("RGB"), dtype=np.float64) / 255
    first = clip.frames[0].astype(np.float64) / 255
    assert peak_signal_noise_ratio(photo, first, data_range=1.0) > 20
