import os

import pytest

# Tests run on 2 cores; more threads only add contention.
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def cpu_without_native_bf16(monkeypatch):
    """`--dtype auto` renders in bf16 on a CPU that computes it natively: the same test would render in
    another precision on another machine. Every test sees a CPU without it; tests of the choice say otherwise.
    Subprocesses (the CLI run as a command) still ask the real CPU."""
    monkeypatch.setattr("livephoto_core.precision.cpu_has_native_bf16", lambda: False)


@pytest.fixture
def pipeline(tmp_path):
    from livephoto_core.testing.tiny import tiny_pipeline

    return tiny_pipeline(tmp_path / "tokenizer")


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """A tiny SD-1.5-shaped single file, DINOv2 folder, tokenizer folder and LivePhoto checkpoint.
    Shared by the session: read them, write elsewhere."""
    tmp_path = tmp_path_factory.mktemp("tiny_files")
    from livephoto_core.testing.ldm_layout import write_tiny_sd15_file
    from livephoto_core.testing.tiny import (
        WORDS,
        tiny_config,
        tiny_dinov2,
        tiny_sd15_models,
        train_livephoto_parts_,
    )

    from livephoto_core.loading.checkpoint import save_livephoto_checkpoint
    from livephoto_core.model import LivePhotoModel
    from livephoto_core.training.word_tokenizer import write_word_tokenizer

    write_tiny_sd15_file(tmp_path / "base.safetensors", seed=0)
    tiny_dinov2().save_pretrained(tmp_path / "dinov2")
    write_word_tokenizer(tmp_path / "tokenizer", WORDS)
    model = train_livephoto_parts_(LivePhotoModel.from_base(tiny_config(), tiny_sd15_models(0).unet, tiny_dinov2()))
    save_livephoto_checkpoint(model, tmp_path / "livephoto.safetensors")
    return tmp_path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Where scripts/test.sh has built ComfyUI (LIVEPHOTO_REQUIRE_COMFYUI=1, as in CI), a real-ComfyUI
    test that skips (no browser, no comfy-cli, no server) is a failure: CI must not pass without them."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("LIVEPHOTO_REQUIRE_COMFYUI") == "1" and item.get_closest_marker("comfyui"):
        report.outcome = "failed"
        report.longrepr = f"skipped where the real-ComfyUI tests are required: {report.longrepr}"
