"""End to end at tiny size on real files: toy clips encoded as mp4 in every layout training reads (path,caption
CSV, WebVid's page_dir and flat layouts, tar shards from scripts/make_shards.py), a tiny SD-structured base as a
diffusers folder and a tiny DINOv2 on disk; the SD-1.5 mode trains from the latent cache, resumes and exports;
the CLI and the ComfyUI loader node load the export."""

import csv
import importlib
import shutil
import sys
from pathlib import Path

import pytest
import torch

from livephoto_core import cli
from livephoto_core.intensity import DEFAULT_THRESHOLDS
from livephoto_core.testing.tiny import SD_SCHEDULER, WORDS, TINY_UNET, tiny_dinov2, tiny_sd15_models
from livephoto_core.training import latent_cache, toyworld
from livephoto_core.training.base import write_base_folder
from livephoto_core.training.engine import train
from livephoto_core.training.latent_cache import build_latent_cache
from livephoto_core.training.recipe import TrainConfig
from livephoto_core.training.word_tokenizer import write_word_tokenizer
from livephoto_core.video import read_video

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    models = tiny_sd15_models(0)
    write_base_folder(root / "sd15", models.unet, models.vae, models.text_encoder, SD_SCHEDULER)
    write_word_tokenizer(root / "sd15" / "tokenizer", WORDS)
    tiny_dinov2().save_pretrained(root / "dinov2")
    # 6 toy clips of 8 frames at 64 px (4-frame clips at stride 1: random starts 0 .. 4).
    index = toyworld.write_dataset(root / "data", num_clips=6, seed=5, size=64, frames=8)
    rows = list(csv.DictReader(open(index, newline="")))
    webvid = [("videoid", "contentUrl", "duration", "page_dir", "name")]
    for number, row in enumerate(rows):
        for folder in (root / "webvid_page" / "000", root / "webvid_flat"):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(index).parent / row["path"], root / "webvid_page" / "000" / f"{number}.mp4")
        shutil.copy(Path(index).parent / row["path"], root / "webvid_flat" / f"{number}.mp4")
        webvid.append((str(number), "", "PT1S", "000", row["caption"]))
    for folder in ("webvid_page", "webvid_flat"):
        with open(root / folder / "index.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(webvid)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        make_shards = importlib.import_module("make_shards")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert make_shards.main(["--index", str(index), "--out", str(root / "shards"), "--samples-per-shard", "3"]) == 0
    return root, Path(index)


def config(root, index, run, **values) -> dict:
    return {"output_dir": str(run), "seed": 0, "steps": 4, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2,
            "torch_threads": 1, "log_every": 1,
            "data": {"index": str(index), "num_frames": 4, "stride": 1, "size": 64, "random_start": True,
                     "thresholds": list(DEFAULT_THRESHOLDS), **values.pop("data", {})},
            "model": {"base": str(root / "sd15"), "dinov2": str(root / "dinov2"),
                      "livephoto": {"dinov2_image_size": 28, "reweighter_layers": 1, "motion_max_seq_length": 8}},
            "validation": {"levels": []}, **values}


def test_every_layout_trains_and_the_cached_run_resumes_exports_and_loads_in_the_cli_and_the_node(files, tmp_path):
    root, index = files
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # The latent cache of the path,caption index, 2 epochs (3 steps an epoch).
        cached = config(root, index, tmp_path / "run", data={"latent_cache": str(tmp_path / "cache")})
        build_latent_cache(TrainConfig.from_dict(cached), epochs=2, clips_per_part=4)
        # WebVid's two layouts name the same videos: their caches hold the same clips.
        for layout in ("webvid_page", "webvid_flat"):
            other = config(root, root / layout / "index.csv", tmp_path / layout,
                           data={"latent_cache": str(tmp_path / f"cache_{layout}")})
            build_latent_cache(TrainConfig.from_dict(other), epochs=1, clips_per_part=4)
            from safetensors.torch import load_file

            for part in (0, 1):
                mine = load_file(latent_cache.part_path(tmp_path / "cache", 0, part))
                theirs = load_file(latent_cache.part_path(tmp_path / f"cache_{layout}", 0, part))
                assert torch.equal(mine["latents"], theirs["latents"]) and torch.equal(mine["ssim"], theirs["ssim"])

        # Train 2 steps from the cache, then resume to 4 (into the second epoch), as one uninterrupted run.
        first = train(TrainConfig.from_dict({**cached, "steps": 2}))
        assert sorted(first.losses) == [1, 2]
        resumed = train(TrainConfig.from_dict(cached), resume="latest")
        assert sorted(resumed.losses) == [3, 4]
        whole = train(TrainConfig.from_dict({**cached, "output_dir": str(tmp_path / "whole")}))
        assert whole.losses == pytest.approx({**first.losses, **resumed.losses}, rel=1e-5)
        export = resumed.export / "livephoto.safetensors"

        # Tar shards stream (the cache is built from an index): a step trains.
        sharded = config(root, index, tmp_path / "shards_run", steps=1)
        sharded["data"] = {**sharded["data"], "index": "", "shards": str(root / "shards")}
        assert sorted(train(TrainConfig.from_dict(sharded)).losses) == [1]
    finally:
        torch.set_num_threads(threads)

    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(read_video(index.parent / "clips" / sorted(p.name for p in (index.parent / "clips").iterdir())[0])
                    .frames[0]).save(photo)
    output = tmp_path / "out.gif"
    assert cli.main(["animate", str(photo), "the red circle moves left", "--livephoto", str(export),
                     "--base", str(root / "sd15"), "--dinov2", str(root / "dinov2"), "--steps", "2", "--frames", "4",
                     "--seed", "1", "-o", str(output)]) == 0
    assert read_video(output).frames.shape[0] == 4

    # The ComfyUI loader node's core on a MODEL of the same base.
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_stubs import PACK_NAME, stand_in_model, stubbed_comfyui
    from livephoto_core.testing.ldm_layout import unet_to_ldm

    unet = tiny_sd15_models(0).unet
    with stubbed_comfyui(tmp_path / "models"):
        loader = importlib.import_module(f"{PACK_NAME}.nodes.loader")
        model = stand_in_model(unet_to_ldm(unet.state_dict(), TINY_UNET["layers_per_block"]), context_dim=64)
        handle = loader.build_handle(model, str(export), export.name, str(root / "dinov2"), None, None, torch.float32)
    from livephoto_core.loading.checkpoint import read_livephoto_checkpoint

    _, exported = read_livephoto_checkpoint(export)
    loaded = handle.model.trainable_state_dict()
    assert set(loaded) == set(exported) and all(torch.equal(loaded[k], v) for k, v in exported.items())
    assert handle.model.config.num_frames == 4 and handle.model.config.base_model == "sd15"
