"""A pipeline put together from files on disk equals the one built in memory from the same weights."""

import numpy as np
import pytest
import torch
from PIL import Image
from livephoto_core.testing.tiny import (
    SD_SCHEDULER,
    tiny_config,
    tiny_dinov2,
    tiny_sd15_models,
    train_livephoto_parts_,
)

from livephoto_core.errors import ModelFileError
from livephoto_core.loading.assemble import load_pipeline
from livephoto_core.loading.checkpoint import (
    read_livephoto_checkpoint,
    save_livephoto_checkpoint,
)
from livephoto_core.model import LivePhotoModel
from livephoto_core.pipeline import LivePhotoPipeline


def test_the_package_exports_the_loader_and_the_pipeline():
    import livephoto_core
    from livephoto_core import LivePhotoPipeline as exported_pipeline
    from livephoto_core import load_pipeline as exported_loader

    assert exported_loader is load_pipeline and exported_pipeline is LivePhotoPipeline
    assert {"load_pipeline", "LivePhotoPipeline"} <= set(livephoto_core.__all__)


def test_loaded_pipeline_equals_the_in_memory_one(tiny_files):
    from transformers import CLIPTokenizer

    loaded = load_pipeline(tiny_files / "livephoto.safetensors", base=tiny_files / "base.safetensors",
                           dinov2=tiny_files / "dinov2", tokenizer=tiny_files / "tokenizer")
    models = tiny_sd15_models(0)
    model = train_livephoto_parts_(LivePhotoModel.from_base(tiny_config(), models.unet, tiny_dinov2())).eval()
    expected = LivePhotoPipeline(model, models.vae, models.text_encoder,
                                 CLIPTokenizer.from_pretrained(tiny_files / "tokenizer"), SD_SCHEDULER)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    settings = dict(num_frames=3, num_inference_steps=2, seed=3)
    a, b = loaded(photo, "the red circle moves left", **settings), expected(photo, "the red circle moves left", **settings)
    torch.testing.assert_close(a.frames, b.frames, atol=1e-4, rtol=0)
    assert set(a.settings["model_hashes"]) == {"base", "livephoto", "dinov2"}
    assert all(len(h) == 64 for h in a.settings["model_hashes"].values())


def test_checkpoint_round_trip_keeps_config_and_tensors(tiny_files):
    config, state = read_livephoto_checkpoint(tiny_files / "livephoto.safetensors")
    assert config == tiny_config()
    assert any(".motion_modules." in k for k in state) and "text_reweighter.head.weight" in state
    with pytest.raises(Exception, match="already exists"):
        save_livephoto_checkpoint(
            LivePhotoModel.from_base(tiny_config(), tiny_sd15_models(0).unet, tiny_dinov2()), tiny_files / "livephoto.safetensors"
        )


def test_missing_parts_are_named_with_the_option_to_pass(tiny_files):
    with pytest.raises(ModelFileError, match="--base"):
        load_pipeline(tiny_files / "livephoto.safetensors", dinov2=tiny_files / "dinov2")
    with pytest.raises(ModelFileError, match="--dinov2"):
        load_pipeline(tiny_files / "livephoto.safetensors", base=tiny_files / "base.safetensors")
    with pytest.raises(ModelFileError, match="leave out --motion-module"):
        load_pipeline(tiny_files / "livephoto.safetensors", base=tiny_files / "base.safetensors", dinov2=tiny_files / "dinov2",
                      motion_module=tiny_files / "base.safetensors")


def test_wrong_files_in_each_role_are_refused(tiny_files):
    with pytest.raises(ModelFileError, match="DINOv2"):
        load_pipeline(tiny_files / "livephoto.safetensors", base=tiny_files / "dinov2", dinov2=tiny_files / "dinov2",
                      tokenizer=tiny_files / "tokenizer")
    with pytest.raises(ModelFileError, match="not a LivePhoto checkpoint"):
        load_pipeline(tiny_files / "base.safetensors", base=tiny_files / "base.safetensors", dinov2=tiny_files / "dinov2")
