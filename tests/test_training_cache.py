"""The latent cache: a run from it trains on the clips an uncached run decodes (same losses), loads
no frozen encoder, resumes the pass after a kill, and refuses a cache made for other models, sizes or
too few epochs, naming the fix."""

import json

import pytest

from test_training import one_thread, pretrained_config, pretrained_files, still_then_moving, toy_data  # noqa: F401

from livephoto_core.intensity import DEFAULT_THRESHOLDS

from livephoto_core.errors import InvalidInputError
from livephoto_core.training import latent_cache
from livephoto_core.training.engine import Trainer, train
from livephoto_core.training.latent_cache import build_latent_cache
from livephoto_core.training.recipe import TrainConfig


def uncached_config(toy_data, files, still_then_moving, run, steps=2, **overrides) -> dict:  # noqa: F811
    """4 videos of 16 frames whose 4-frame clips' levels depend on their start (random_start), 2 steps an
    epoch."""
    config = pretrained_config(toy_data, files, run, **{
        "data.index": still_then_moving, "data.thresholds": list(DEFAULT_THRESHOLDS), "data.random_start": True,
        "data.validation_index": None, "cache_latents": False, **overrides})
    config["steps"] = steps
    return config


def cached_config(toy_data, files, still_then_moving, run, cache, **overrides) -> dict:  # noqa: F811
    return uncached_config(toy_data, files, still_then_moving, run, **{"data.latent_cache": str(cache), **overrides})


@pytest.fixture(scope="module")
def built(toy_data, pretrained_files, still_then_moving, tmp_path_factory):  # noqa: F811
    """A cache of 3 epochs, 3 clips a part: 2 parts an epoch."""
    root = tmp_path_factory.mktemp("cache")
    config = TrainConfig.from_dict(cached_config(toy_data, pretrained_files, still_then_moving, root / "labels",
                                                 root / "cache"))
    counts = build_latent_cache(config, epochs=3, clips_per_part=3)
    return root / "cache", counts


def test_a_run_from_the_cache_matches_an_uncached_run_and_loads_no_encoder(
        toy_data, pretrained_files, still_then_moving, built, tmp_path, monkeypatch):  # noqa: F811
    cache, counts = built
    assert counts == {"parts_written": 6, "parts_kept": 0, "clips_written": 12}
    index = json.loads((cache / "index.json").read_text())
    assert index["epochs"] == 3 and index["videos"] == 4 and index["shapes"]["latents"] == [4, 4, 8, 8]

    overrides = {"steps": 6}  # all 3 epochs
    uncached = train(TrainConfig.from_dict(uncached_config(toy_data, pretrained_files, still_then_moving,
                                                          tmp_path / "uncached", **overrides)))

    import livephoto_core.training.base as base_module

    def no_dinov2(*args, **kwargs):
        raise AssertionError("DINOv2 loaded")

    monkeypatch.setattr(base_module, "load_dinov2", no_dinov2)
    trainer = Trainer(TrainConfig.from_dict(cached_config(toy_data, pretrained_files, still_then_moving,
                                                          tmp_path / "cached", cache, **overrides)))
    result = trainer.run()
    assert trainer.vae is None and trainer.text_encoder is None and trainer.base.vae is None
    assert trainer.base.text_encoder is None and trainer.encoders is None
    assert sorted(result.losses) == sorted(uncached.losses)
    for step, loss in uncached.losses.items():
        assert result.losses[step] == pytest.approx(loss, rel=1e-5, abs=1e-6)


def test_the_pass_resumes_adds_epochs_and_a_wrong_cache_is_refused_with_the_fix(
        toy_data, pretrained_files, still_then_moving, built, tmp_path):  # noqa: F811
    cache, _ = built
    copy = tmp_path / "cache"
    import shutil

    shutil.copytree(cache, copy)
    # A killed pass: no index yet, one part missing. The rerun writes that part alone, the same bytes.
    (copy / "index.json").unlink()
    lost = latent_cache.part_path(copy, 1, 1)
    original = lost.read_bytes()
    lost.unlink()
    config = TrainConfig.from_dict(cached_config(toy_data, pretrained_files, still_then_moving, tmp_path / "run", copy,
                                                 steps=2))
    with pytest.raises(InvalidInputError, match="has not finished"):
        train(config)
    labels = tmp_path / "labels"
    build = TrainConfig.from_dict(cached_config(toy_data, pretrained_files, still_then_moving, labels, copy))
    assert build_latent_cache(build, epochs=3, clips_per_part=3) == {
        "parts_written": 1, "parts_kept": 5, "clips_written": 1}
    assert lost.read_bytes() == original

    # 10 steps read 5 epochs: refused before training, naming --epochs; then added.
    longer = TrainConfig.from_dict(cached_config(toy_data, pretrained_files, still_then_moving, tmp_path / "long", copy,
                                                 steps=10))
    with pytest.raises(InvalidInputError, match="--epochs 5"):
        train(longer)
    assert build_latent_cache(build, epochs=5, clips_per_part=3)["parts_written"] == 4
    assert json.loads((copy / "index.json").read_text())["epochs"] == 5

    # Other sizes, another DINOv2, another storage layout: refused with what differs.
    with pytest.raises(InvalidInputError, match=r"clips\.stride.*new folder"):
        train(TrainConfig.from_dict(cached_config(toy_data, pretrained_files, still_then_moving, tmp_path / "s", copy,
                                                  **{"data.stride": 2})))
    other = tmp_path / "dinov2"
    shutil.copytree(pretrained_files / "dinov2", other)
    weights = next(other.glob("*.safetensors"))
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    tensors[next(iter(tensors))] += 1
    save_file(tensors, weights)
    wrong = cached_config(toy_data, pretrained_files, still_then_moving, tmp_path / "d", copy)
    wrong["model"]["dinov2"] = str(other)
    with pytest.raises(InvalidInputError, match=r"models\.dinov2"):
        train(TrainConfig.from_dict(wrong))
    with pytest.raises(InvalidInputError, match="clips_per_part"):
        build_latent_cache(build, epochs=5, clips_per_part=2)
    with pytest.raises(InvalidInputError, match="cache_latents and cache_text"):
        TrainConfig.from_dict(cached_config(toy_data, pretrained_files, still_then_moving, tmp_path / "c", copy,
                                            cache_text=True))
    with pytest.raises(InvalidInputError, match="does not exist; build it"):
        train(TrainConfig.from_dict(cached_config(toy_data, pretrained_files, still_then_moving, tmp_path / "n",
                                                  tmp_path / "nothing")))


def test_the_script_builds_the_cache(toy_data, pretrained_files, still_then_moving, tmp_path):  # noqa: F811
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("cache_latents", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "cache_latents.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cached_config(toy_data, pretrained_files, still_then_moving, tmp_path / "run",
                                               tmp_path / "cache")))
    assert script.main(["--config", str(config), "--dtype", "bfloat16"]) == 0
    from safetensors import safe_open

    with safe_open(latent_cache.part_path(tmp_path / "cache", 0, 0), framework="pt") as part:
        assert part.get_slice("latents").get_dtype() == "BF16" and part.get_slice("ssim").get_dtype() == "F64"
    assert script.main(["--config", str(config), "--dtype", "float32"]) == 2  # another dtype: a new folder
