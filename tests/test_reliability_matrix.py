"""The bad-input matrix (issue 7): every wrong file, photo, setting, video and output, through the CLI, the Python
API and the nodes, gets one line that names the thing and the fix, before any heavy work.

Each row of CASES gives one input to one front end and returns what the user sees. Every row checks the
same promises: one line (a LivePhotoError; for the CLI exit status 2 and a single "error:" line, no
traceback); the words it must hold (the thing and the fix); no denoising step ran; a wrong file's tensors
were never read; a refused setting or photo cost no model loading (CLI) or no model load onto the device
(nodes); pickled code never ran. Inputs LivePhoto accepts (grayscale, 16-bit, odd sizes, empty or
non-ASCII prompts) must run and say what was changed.

Rows that an older test covers exactly name it in ``covered_by`` and are not run again here. All rows,
those included, make the table in docs/reliability.md, written by running them:

    LIVEPHOTO_WRITE_DOCS=1 python -m pytest tests/test_reliability_matrix.py -k docs
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import random
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_stubs import PACK_NAME, NodeEnv, stubbed_comfyui, write_tiny_livephoto_files
from livephoto_core.testing.ldm_layout import motion_adapter_to_original, vae_to_ldm, write_tiny_sd15_file
from PIL import Image
from safetensors.torch import load_file, save_file
from livephoto_core.testing.tiny import tiny_config, tiny_dinov2, tiny_motion_adapter, tiny_sd15_models

import livephoto_core.loading.assemble as loading_pipeline
import livephoto_core.pipeline as core_pipeline
import safetensors.torch
from livephoto_core.cli import main
from livephoto_core.errors import LivePhotoError
from livephoto_core.intensity import measure_intensity
from livephoto_core.video import read_video, write_video

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
TABLE_START, TABLE_END = "<!-- matrix:start -->", "<!-- matrix:end -->"
PROMPT = "the red circle moves left"
LONG_PROMPT = " ".join(["red circle moves left"] * 75)  # 300 tokens of the tiny vocabulary


# --- the inputs ----------------------------------------------------------------------------------------


def write_bad_files(folder: Path, marker: Path) -> None:
    """One file of each wrong kind, tiny, named after what it is."""
    folder.mkdir(parents=True)
    sdxl_marker = {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(4)}
    write_tiny_sd15_file(folder / "sdxl.safetensors", cross_attention_dim=2048, extra=sdxl_marker)
    write_tiny_sd15_file(folder / "sd2.safetensors", cross_attention_dim=1024)
    write_tiny_sd15_file(folder / "inpainting.safetensors", in_channels=9)
    lora_key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    lora = {f"{lora_key}.lora_down.weight": torch.zeros(4, 768), f"{lora_key}.lora_up.weight": torch.zeros(320, 4),
            f"{lora_key}.alpha": torch.tensor(4.0)}
    save_file(lora, str(folder / "lora.safetensors"))
    torch.save(lora, folder / "lora.ckpt")
    vae = vae_to_ldm(tiny_sd15_models().vae.state_dict())
    save_file({f"first_stage_model.{k}": v.contiguous() for k, v in vae.items()}, str(folder / "vae.safetensors"))
    motion = motion_adapter_to_original(tiny_motion_adapter(max_seq_length=32, mid_block=False).state_dict(), 32)
    save_file({k: v.contiguous() for k, v in motion.items()}, str(folder / "motion_module.safetensors"))
    (folder / "empty.safetensors").write_bytes(b"")
    whole = (folder / "sd2.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    (folder / "random.safetensors").write_bytes(random.Random(0).randbytes(4096))

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "runs_code.ckpt").write_bytes(pickle.dumps({"state_dict": {"weight": RunsCode()}}))


def write_other_format_version(source: Path, target: Path) -> None:
    """A LivePhoto checkpoint that says it is of format version 2."""
    with safetensors.safe_open(str(source), "pt") as handle:
        metadata = handle.metadata()
    config = json.loads(metadata["livephoto_config"])
    config["format_version"] = 2
    metadata.update(livephoto_config=json.dumps(config), format_version="2")
    save_file(load_file(str(source)), str(target), metadata=metadata)


def write_photos(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "photo.png")
    Image.fromarray(rgb).convert("L").save(folder / "grayscale.png")
    rgba = np.concatenate([rgb, rng.integers(0, 256, (80, 96, 1), dtype=np.uint8)], axis=-1)
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (80, 96), dtype=np.uint16)).save(folder / "16bit.png")
    assert Image.open(folder / "16bit.png").mode.startswith("I")
    Image.new("RGB", (1, 1)).save(folder / "1x1.png")
    Image.fromarray(rgb[:61, :75]).save(folder / "odd_75x61.png")
    huge = np.zeros((8192, 8192, 3), np.uint8)
    huge[::7] = 200
    Image.fromarray(huge).save(folder / "8192x8192.png", compress_level=1)
    frames = [Image.fromarray(np.roll(rgb, 4 * i, axis=1)) for i in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=125)
    (folder / "notes.png").write_text("this is a text file, not a picture\n")
    # A JPEG with a second image appended (MPO), as stereo cameras and phones write (depth, HDR gain map).
    Image.fromarray(rgb).save(folder / "camera.jpg", "MPO", save_all=True, append_images=[Image.fromarray(rgb[::-1])])
    assert Image.open(folder / "camera.jpg").format == "MPO"
    (folder / "bomb.png").write_bytes(png_header_only(40000, 40000))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and holds no pixels: a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write_videos(folder: Path) -> None:
    import av

    folder.mkdir(parents=True)
    (folder / "undecodable.mp4").write_bytes(b"not a video at all\n" * 50)
    (folder / "empty.mp4").write_bytes(b"")
    write_video(np.full((1, 32, 32, 3), 128, np.uint8), folder / "one_frame.mp4")
    with av.open(str(folder / "no_frames.mp4"), "w") as container:  # a video stream that never got a frame
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 32


@dataclass
class Node:
    env: NodeEnv
    models: Path

    @property
    def errors(self):
        return self.env.errors


@dataclass
class World:
    root: Path
    files: Path  # the wrong files
    photos: Path
    videos: Path
    marker: Path  # created if pickled code ever runs
    model: Path  # tiny_files: livephoto.safetensors, base.safetensors, dinov2/, tokenizer/
    pipeline: object  # loaded from `model` once; the CLI's loading is replaced by it where loading is not the point
    node: Node
    out: Path
    watch: "Watch" = None

    def model_args(self, **replace) -> list[str]:
        args = {"--livephoto": self.model / "livephoto.safetensors", "--base": self.model / "base.safetensors",
                "--dinov2": self.model / "dinov2", "--tokenizer": self.model / "tokenizer"}
        args.update({f"--{k.replace('_', '-')}": v for k, v in replace.items()})
        return [str(item) for pair in args.items() for item in pair]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_files):
    root = tmp_path_factory.mktemp("matrix")
    marker = root / "code_ran"
    write_bad_files(root / "files", marker)
    write_other_format_version(tiny_files / "livephoto.safetensors", root / "files" / "other_version.safetensors")
    write_photos(root / "photos")
    write_videos(root / "videos")
    pipeline = loading_pipeline.load_pipeline(
        tiny_files / "livephoto.safetensors", base=tiny_files / "base.safetensors", dinov2=tiny_files / "dinov2",
        tokenizer=tiny_files / "tokenizer",
    )
    models = root / "comfyui" / "models"
    files = write_tiny_livephoto_files(models)
    for name in ("sdxl", "sd2", "inpainting", "lora", "vae", "motion_module", "other_version", "empty", "truncated",
                 "random"):
        shutil.copy(root / "files" / f"{name}.safetensors", models / "livephoto")
    (models / "animatediff_models").mkdir()
    for name in ("lora.ckpt", "runs_code.ckpt"):
        shutil.copy(root / "files" / name, models / "animatediff_models")
    shutil.copy(root / "files" / "runs_code.ckpt", models / "livephoto")
    # A checkpoint trained on a frozen AnimateDiff file, so that the motion_module widget is read at all.
    from livephoto_core.loading.checkpoint import save_livephoto_checkpoint
    from livephoto_core.model import LivePhotoModel

    external = tiny_config(num_frames=4, motion_weights="external", motion_module_hash="0" * 64)
    save_livephoto_checkpoint(LivePhotoModel.from_base(external, tiny_sd15_models(0).unet, tiny_dinov2(0)),
                              models / "livephoto" / "external.safetensors")
    with stubbed_comfyui(models) as stubs:
        yield World(root, root / "files", root / "photos", root / "videos", marker, tiny_files, pipeline,
                    Node(NodeEnv(stubs, files), models), root / "out")


# --- watching for heavy work ------------------------------------------------------------------------


@dataclass
class Watch:
    """What ran during one case: model loads (CLI), device loads (nodes), denoising, tensor files read."""

    pipelines_loaded: list = field(default_factory=list)
    device_loads: list = field(default_factory=list)
    denoising: list = field(default_factory=list)
    tensor_files: list = field(default_factory=list)
    stand_in_loading: bool = True  # the CLI gets the already loaded tiny pipeline


@pytest.fixture
def watch(world, monkeypatch):
    seen = Watch()
    world.watch = seen
    real_load_pipeline, real_load_file = loading_pipeline.load_pipeline, safetensors.torch.load_file

    def load_pipeline(*args, **kwargs):
        seen.pipelines_loaded.append(args)
        return world.pipeline if seen.stand_in_loading else real_load_pipeline(*args, **kwargs)

    def load_file(path, *args, **kwargs):
        seen.tensor_files.append(Path(path).name)
        return real_load_file(path, *args, **kwargs)

    def recording(name: str, real: Callable, into: list):
        def run(*args, **kwargs):
            into.append(name)
            return real(*args, **kwargs)

        return run

    monkeypatch.setattr(loading_pipeline, "load_pipeline", load_pipeline)
    monkeypatch.setattr(safetensors.torch, "load_file", load_file)
    sampler = sys.modules[f"{PACK_NAME}.nodes.sampler"]
    for module in (core_pipeline, sampler):
        for name in ("invert_reference", "generate_latents"):
            monkeypatch.setattr(module, name, recording(name, getattr(module, name), seen.denoising))
    handle = world.node.env.handle
    monkeypatch.setattr(handle, "load", recording("device load", handle.load, seen.device_loads))
    yield seen
    world.watch = None


# --- the front ends -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What the user was told: the one error line, or for an accepted input the notes (maybe none)."""

    refused: bool
    text: str


def cli(world: World, *argv, real_loading: bool = False) -> Seen:
    """`livephoto ARGV`, in-process. Refusal: exit 2 and one "error:" line, the last one, no traceback."""
    world.watch.stand_in_loading = not real_loading
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in argv])
    lines = err.getvalue().splitlines()
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue(), err.getvalue()
    errors = [line for line in lines if line.startswith("error")]
    if code != 0:
        assert code == 2 and errors == [lines[-1]], (code, lines)
        return Seen(True, errors[0])
    assert not errors, lines
    notes = [line for line in lines if line.startswith("photo ")]  # what was done to the photo
    return Seen(False, "; ".join(notes) or out.getvalue().splitlines()[0])


def animate(world: World, photo="photo.png", prompt=PROMPT, *extra, **model_files) -> Seen:
    image = world.photos / photo if isinstance(photo, str) else photo
    output = world.out / f"{Path(str(photo)).stem}.webp"
    world.out.mkdir(exist_ok=True)
    return cli(world, "animate", image, prompt, "--frames", "2", "--steps", "1", "--seed", "0", "-o", output,
               "--overwrite", *world.model_args(**model_files), *extra, real_loading=bool(model_files))


def api(call: Callable) -> Seen:
    try:
        result = call()
    except LivePhotoError as error:
        return Seen(True, str(error))
    notes = getattr(result, "notes", None) or []
    return Seen(False, "; ".join(notes))


def run_pipeline(world: World, photo="photo.png", prompt=PROMPT, **settings) -> Seen:
    image = world.photos / photo if isinstance(photo, str) else photo
    return api(lambda: world.pipeline(image, prompt, **{"num_frames": 2, "num_inference_steps": 1, "seed": 0,
                                                        **settings}))


def load_api(world: World, **files) -> Seen:
    world.watch.stand_in_loading = False
    parts = {"livephoto": world.model / "livephoto.safetensors", "base": world.model / "base.safetensors",
             "dinov2": world.model / "dinov2", "tokenizer": world.model / "tokenizer", **files}
    return api(lambda: loading_pipeline.load_pipeline(**parts))


def node_call(world: World, call: Callable) -> Seen:
    try:
        call()
    except world.node.errors.LivePhotoError as error:
        return Seen(True, str(error))
    return Seen(False, "")


def load_node(world: World, **widgets) -> Seen:
    """Load LivePhoto Model as ComfyUI runs it: validate_inputs when queued, then execute."""
    env = world.node.env
    chosen = {"livephoto_checkpoint": env.files.checkpoint, "dinov2": env.files.dinov2, "motion_module": "none",
              **widgets}
    verdict = env.node("LoadLivePhotoModel").validate_inputs(**chosen)
    if verdict is not True:
        return Seen(True, verdict)
    return node_call(world, lambda: env.load(**widgets))


def sample_node(world: World, **inputs) -> Seen:
    """LivePhoto Sampler as ComfyUI runs it: validate_inputs (intensity) when queued, then execute."""
    env = world.node.env
    verdict = env.node("LivePhotoSampler").validate_inputs(intensity=[inputs.get("intensity", 5)])  # a list node
    if verdict is not True:
        return Seen(True, verdict)
    return node_call(world, lambda: env.sample(**inputs))


def animate_to(world: World, output: str, *extra) -> Seen:
    """`livephoto animate` to ``output`` in the out folder, without --overwrite unless ``extra`` has it."""
    world.out.mkdir(exist_ok=True)
    return cli(world, "animate", world.photos / "photo.png", PROMPT, "--frames", "2", "--steps", "1", "--seed", "0",
               "-o", world.out / output, *world.model_args(), *extra)


def animate_over(world: World, lay_out: Callable[[Path], object], output: str, *extra) -> Seen:
    """`animate_to` after ``lay_out`` put something in the out folder; the folder must be left as it was."""
    world.out.mkdir(exist_ok=True)
    lay_out(world.out)
    before = sorted(os.listdir(world.out))
    seen = animate_to(world, output, *extra)
    assert sorted(os.listdir(world.out)) == before
    return seen


def write_over(world: World, lay_out: Callable[[Path], object], output: str, overwrite: bool = False) -> Seen:
    """`write_video` to ``output`` in the out folder after ``lay_out``; the folder must be left as it was."""
    world.out.mkdir(exist_ok=True)
    lay_out(world.out)
    before = sorted(os.listdir(world.out))
    seen = api(lambda: write_video(np.zeros((2, 32, 32, 3), np.uint8), world.out / output, overwrite=overwrite))
    assert sorted(os.listdir(world.out)) == before
    return seen


def no_files(folder: Path) -> None:
    """Lay nothing out."""


def replace_with_link(link: Path, target: Path) -> None:
    """A symbolic link to ``target``, made anew (the out folder lives as long as the module's tests)."""
    link.unlink(missing_ok=True)
    link.symlink_to(target)


def text_reweight_node(world: World, text: str) -> Seen:
    env = world.node.env
    return node_call(world, lambda: env.run("LivePhotoTextReweight", livephoto_model=env.handle, clip=env.clip,
                                            text=text))


def live_photo_over_an_existing_mov(world: World) -> Seen:
    world.out.mkdir(exist_ok=True)
    (world.out / "pair.mov").write_bytes(b"precious")
    seen = animate_to(world, "pair.livephoto")
    assert (world.out / "pair.mov").read_bytes() == b"precious" and not (world.out / "pair.jpg").exists()
    return seen


def save_for_phone_node(world: World, frames: torch.Tensor) -> Seen:
    return node_call(world, lambda: world.node.env.run(
        "LivePhotoSaveForPhone", frames=frames, filename_prefix="matrix", format="Apple Live Photo (.jpg + .mov)",
        fps=8.0))


def intensity_node(world: World, frames) -> Seen:
    return node_call(world, lambda: world.node.env.run("LivePhotoEstimateIntensity", frames=frames))


def photo_tensor(world: World, height: int, width: int, batch: int = 1, channels: int = 3) -> torch.Tensor:
    return torch.rand(batch, height, width, channels, generator=torch.Generator().manual_seed(0))


# --- the matrix ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    group: str  # "file", "photo", "setting", "video", "output"
    input: str  # what the user gave, in words
    front_end: str  # "CLI", "API", "node"
    run: Callable[[World], Seen]
    says: tuple[str, ...] = ()  # what the line must hold: the thing, and the fix
    accepted: bool = False  # an input LivePhoto takes (then `says` is what the notes must hold)
    bad_file: str | None = None  # a wrong file whose tensors must never be read
    after_loading: bool = False  # refused once the model is loaded (needs it), still before denoising
    covered_by: str = ""  # an existing test covering this cell exactly: not run again here

    @property
    def id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", f"{self.front_end} {self.input}".lower()).strip("-")


BASE_NEEDS = "--base needs an SD-1.5 checkpoint"
DETECT = "tests/test_loading_detect.py::"


def wrong_base(name: str, what: str, fix: str, covered: str = "") -> list[Case]:
    """A file of the wrong kind given as the SD-1.5 base: CLI, API; inspect names it and exits 0."""
    file = f"{name}.safetensors"
    return [
        Case("file", f"{what} as the base", "CLI", lambda w: animate(w, base=w.files / file),
             (f"{file} is {what}", BASE_NEEDS, fix), bad_file=file),
        Case("file", f"{what} as the base", "API", lambda w: load_api(w, base=w.files / file),
             (f"{file} is {what}", BASE_NEEDS, fix), bad_file=file, covered_by=covered),
        Case("file", f"{what}", "CLI inspect", lambda w: cli(w, "inspect", w.files / file), (what,), accepted=True),
    ]


def broken_file(name: str, what: str, says: tuple[str, ...]) -> list[Case]:
    """A missing-in-spirit file (empty, truncated, noise, pickled code): refused wherever it is given."""
    return [
        Case("file", f"{what} as the base", "CLI", lambda w: animate(w, base=w.files / name), says, bad_file=name),
        Case("file", f"{what} as the base", "API", lambda w: load_api(w, base=w.files / name), says, bad_file=name),
        Case("file", f"{what}", "CLI inspect", lambda w: cli(w, "inspect", w.files / name), says, bad_file=name),
    ]


def picked_in_the_node(name: str, what: str, says: tuple[str, ...], widget: str = "livephoto_checkpoint",
                       **other_widgets) -> Case:
    return Case("file", f"{what} picked in '{widget}'", "node", lambda w: load_node(w, **{widget: name}, **other_widgets),
                (name, *says), bad_file=name)


NOT_LIVEPHOTO = ("not a LivePhoto checkpoint", "pick one in 'livephoto_checkpoint'")
CORRUPT = ("truncated or corrupt", "download it again")

CASES: list[Case] = [
    # --- files ---
    *wrong_base("sdxl", "an SDXL checkpoint", "SDXL models do not fit", DETECT + "test_sdxl_as_base"),
    *wrong_base("sd2", "an SD-2.x checkpoint", "SD-2.x models do not fit", DETECT + "test_sd2_as_base"),
    *wrong_base("inpainting", "an SD-1.5 inpainting checkpoint", "not the 9-channel inpainting variant",
                DETECT + "test_inpainting_as_base"),
    *wrong_base("lora", "a LoRA", "apply the LoRA in ComfyUI with LoraLoader", DETECT + "test_lora_as_base"),
    *wrong_base("vae", "a VAE-only file", "pass the whole SD-1.5 checkpoint (VAE included) with --base",
                DETECT + "test_vae_only_as_base"),
    *wrong_base("motion_module", "an AnimateDiff motion module", "pass it with --motion-module",
                DETECT + "test_motion_module_versions_and_as_base"),
    Case("file", "a LivePhoto checkpoint of format version 2", "CLI",
         lambda w: animate(w, livephoto=w.files / "other_version.safetensors"),
         ("other_version.safetensors", "format version 2", "reads version 1", "re-export it"),
         bad_file="other_version.safetensors"),
    Case("file", "a LivePhoto checkpoint of format version 2", "API",
         lambda w: load_api(w, livephoto=w.files / "other_version.safetensors"),
         ("other_version.safetensors", "format version 2", "re-export it"), bad_file="other_version.safetensors"),
    Case("file", "a LivePhoto checkpoint of format version 2", "CLI inspect",
         lambda w: cli(w, "inspect", w.files / "other_version.safetensors"), ("LivePhoto checkpoint (format 2)",),
         accepted=True),
    *broken_file("empty.safetensors", "an empty file", ("empty.safetensors is empty (0 bytes)", "download it again")),
    *broken_file("truncated.safetensors", "a truncated safetensors", ("truncated.safetensors", *CORRUPT)),
    *broken_file("random.safetensors", "random bytes", ("random.safetensors", *CORRUPT)),
    *broken_file("runs_code.ckpt", "a pickle whose __reduce__ runs code",
                 ("runs_code.ckpt contains pickled code", "never runs", "convert it to .safetensors")),
    Case("file", "a photo", "CLI inspect", lambda w: cli(w, "inspect", w.photos / "photo.png"), ("unknown",),
         accepted=True),
    picked_in_the_node("sdxl.safetensors", "an SDXL checkpoint", ("is an SDXL checkpoint", *NOT_LIVEPHOTO)),
    picked_in_the_node("sd2.safetensors", "an SD-2.x checkpoint", ("is an SD-2.x checkpoint", *NOT_LIVEPHOTO)),
    picked_in_the_node("inpainting.safetensors", "an inpainting checkpoint",
                       ("is an SD-1.5 inpainting checkpoint", *NOT_LIVEPHOTO)),
    picked_in_the_node("lora.safetensors", "a LoRA", ("is a LoRA", *NOT_LIVEPHOTO)),
    picked_in_the_node("lora.ckpt", "a LoRA (.ckpt)",
                       ("is a LoRA", "'motion_module' needs an AnimateDiff SD-1.5 motion module",
                        "with Load Checkpoint and apply the LoRA in ComfyUI with LoraLoader"),
                       widget="motion_module", livephoto_checkpoint="external.safetensors"),
    picked_in_the_node("vae.safetensors", "a VAE", ("is a VAE-only file", *NOT_LIVEPHOTO)),
    picked_in_the_node("motion_module.safetensors", "a motion module",
                       ("is an AnimateDiff motion module", "belongs in 'motion_module'", *NOT_LIVEPHOTO[1:])),
    picked_in_the_node("other_version.safetensors", "a LivePhoto checkpoint of format version 2",
                       ("format version 2", "re-export it")),
    picked_in_the_node("empty.safetensors", "an empty file", ("is empty (0 bytes)", "download it again")),
    picked_in_the_node("truncated.safetensors", "a truncated safetensors", CORRUPT),
    picked_in_the_node("random.safetensors", "random bytes", CORRUPT),
    picked_in_the_node("runs_code.ckpt", "a pickle whose __reduce__ runs code", NOT_LIVEPHOTO),
    picked_in_the_node("runs_code.ckpt", "a pickle whose __reduce__ runs code",
                       ("contains pickled code", "convert it to .safetensors"), widget="motion_module",
                       livephoto_checkpoint="external.safetensors"),
    # --- photos ---
    Case("photo", "grayscale", "CLI", lambda w: animate(w, "grayscale.png"), accepted=True),
    Case("photo", "grayscale", "API", lambda w: run_pipeline(w, "grayscale.png"), accepted=True,
         covered_by="tests/test_pipeline.py::test_grayscale_and_rgba_photos_are_converted"),
    Case("photo", "RGBA", "CLI", lambda w: animate(w, "rgba.png"), accepted=True),
    Case("photo", "RGBA", "API", lambda w: run_pipeline(w, "rgba.png"), accepted=True,
         covered_by="tests/test_pipeline.py::test_grayscale_and_rgba_photos_are_converted"),
    Case("photo", "RGBA IMAGE (4 channels)", "node",
         lambda w: sample_node(w, photo=torch.cat([w.node.env.default_photo, torch.ones(1, 64, 64, 1)], -1)),
         accepted=True),
    Case("photo", "16-bit", "CLI", lambda w: animate(w, "16bit.png"), accepted=True),
    Case("photo", "16-bit", "API", lambda w: run_pipeline(w, "16bit.png"), accepted=True),
    Case("photo", "1x1", "CLI", lambda w: animate(w, "1x1.png"), ("1x1.png is 1x1", "at least 32 px")),
    Case("photo", "1x1", "API", lambda w: run_pipeline(w, "1x1.png"), ("1x1.png is 1x1", "at least 32 px")),
    Case("photo", "1x1", "node", lambda w: sample_node(w, photo=photo_tensor(w, 1, 1)),
         ("photo is 1x1 pixels", "from 64 to 1024", "scale it with ImageScale")),
    Case("photo", "8192x8192", "CLI", lambda w: animate(w, "8192x8192.png"), ("8192x8192 was resized to 64x64",),
         accepted=True),
    Case("photo", "8192x8192", "API", lambda w: run_pipeline(w, "8192x8192.png"), ("8192x8192 was resized",),
         accepted=True),
    Case("photo", "8192x8192, encoded", "node",
         lambda w: sample_node(w, reference={"samples": torch.zeros(1, 4, 1024, 1024)}),
         ("latent is for a 8192x8192 image", "from 64 to 1024", "scale the photo with ImageScale")),
    Case("photo", "40000x40000 (decompression bomb)", "CLI", lambda w: animate(w, "bomb.png"),
         ("bomb.png is", "at most 8192 px")),
    Case("photo", "40000x40000 (decompression bomb)", "API", lambda w: run_pipeline(w, "bomb.png"),
         ("bomb.png is", "at most 8192 px")),
    Case("photo", "odd size 75x61", "CLI", lambda w: animate(w, "odd_75x61.png"), ("75x61", "to 64x64"),
         accepted=True),
    Case("photo", "odd size 75x61", "API", lambda w: run_pipeline(w, "odd_75x61.png"), ("75x61", "to 64x64"),
         accepted=True),
    Case("photo", "odd size 75x69", "node", lambda w: sample_node(w, photo=photo_tensor(w, 69, 75)),
         ("photo is 75x69 pixels", "multiples of 8", "scale it to 72x64 with ImageScale")),
    Case("photo", "a batch (animated GIF)", "CLI", lambda w: animate(w, "animated.gif"),
         ("animated.gif holds 3 frames", "one still photo", "save the frame")),
    Case("photo", "a batch of 2", "API", lambda w: run_pipeline(w, photo_tensor(w, 64, 64, batch=2)),
         ("batch of 2",), covered_by="tests/test_pipeline.py::test_a_batch_of_photos_is_refused"),
    Case("photo", "a batch of 3, one latent", "node", lambda w: sample_node(w, photo=photo_tensor(w, 64, 64, batch=3)),
         ("the photo input holds 3 images but the reference 1 latent", "connect VAEEncode of these same photos"),
         covered_by="tests/test_nodes.py::test_bad_photos_and_latents_are_refused_naming_the_fix"),
    Case("photo", "a text file named .png", "CLI", lambda w: animate(w, "notes.png"),
         ("notes.png is not an image file",)),
    Case("photo", "a text file named .png", "API", lambda w: run_pipeline(w, "notes.png"),
         ("notes.png is not an image file",)),
    Case("photo", "a JPEG carrying a second image (MPO)", "CLI", lambda w: animate(w, "camera.jpg"),
         ("96x80 was resized",), accepted=True),
    Case("photo", "a JPEG carrying a second image (MPO)", "API", lambda w: run_pipeline(w, "camera.jpg"),
         ("96x80 was resized",), accepted=True),
]

PIPELINE_SETTINGS = "tests/test_pipeline.py::test_bad_settings_are_refused_before_any_model_runs"
VIDEO_OUTPUTS = "tests/test_video.py::test_every_output_file_is_checked_before_any_work"
NO_CUDA = "CUDA is not available in this torch build" if torch.version.cuda is None else "sees no GPU"
LATIN1_PROMPT = b"the red circle moves left, cam\xe9ra".decode("utf-8", "surrogateescape")  # as sys.argv holds it
PHONE_REFUSALS = "tests/test_phone.py::test_what_a_phone_format_cannot_hold_is_refused_in_one_line_writing_nothing"
NODE_INTENSITY = "tests/test_nodes.py::test_intensity_outside_1_to_10_is_refused_at_validation_naming_the_range"
NODE_SETTINGS = "tests/test_nodes.py::test_settings_fed_by_links_are_checked_when_the_node_runs"
for label, flag, api_name, node_name, value, says, covered in [
    ("intensity 0", "--intensity", "intensity", "intensity", 0, ("intensity", "from 1 (still) to 10", "got 0"),
     (PIPELINE_SETTINGS, NODE_INTENSITY)),
    ("intensity 11", "--intensity", "intensity", "intensity", 11, ("intensity", "from 1 (still) to 10", "got 11"),
     (PIPELINE_SETTINGS, NODE_INTENSITY)),
    ("intensity NaN", "--intensity", "intensity", "intensity", float("nan"), ("intensity", "from 1", "got nan"),
     (PIPELINE_SETTINGS, "")),
    ("frames 0", "--frames", "num_frames", "frames", 0, ("frames must be from 2 to 512", "got 0"),
     (PIPELINE_SETTINGS, "")),
    ("frames 1", "--frames", "num_frames", "frames", 1, ("frames must be from 2 to 512", "got 1"),
     (PIPELINE_SETTINGS, "")),
    ("frames 10000", "--frames", "num_frames", "frames", 10000, ("frames must be from 2 to 512", "got 10000"),
     (PIPELINE_SETTINGS, "")),
    ("steps 0", "--steps", "num_inference_steps", "steps", 0, ("steps must be from 1 to 1000", "got 0"),
     (PIPELINE_SETTINGS, NODE_SETTINGS)),
    ("guidance -1", "--guidance", "guidance_scale", "cfg", -1.0, ("guidance scale must be from 0 to 100", "7.5 is usual"),
     (PIPELINE_SETTINGS, NODE_SETTINGS)),
    ("guidance 1000", "--guidance", "guidance_scale", "cfg", 1000.0, ("guidance scale must be from 0 to 100", "got 1000"),
     ("", "")),
    ("guidance inf", "--guidance", "guidance_scale", "cfg", float("inf"), ("guidance scale must be a finite number",),
     ("", "")),
    ("scheduler 'k_lms_turbo'", "--scheduler", "scheduler", "scheduler", "k_lms_turbo",
     ("unknown scheduler 'k_lms_turbo'", "choose one of: ddim"), ("", "")),
]:
    api_covered, node_covered = covered
    CASES += [
        Case("setting", label, "CLI", lambda w, f=flag, v=value: animate(w, "photo.png", PROMPT, f, v), says),
        Case("setting", label, "API", lambda w, n=api_name, v=value: run_pipeline(w, **{n: v}), says,
             covered_by=api_covered),
        Case("setting", label, "node", lambda w, n=node_name, v=value: sample_node(w, **{n: v}),
             tuple(s.replace("16", "16") for s in says), covered_by=node_covered),
    ]

def node_windows(world: World, window_length=0, window_overlap=-1, loop=False):
    return world.node.env.run("LivePhotoContextWindows", window_length=window_length, window_overlap=window_overlap,
                              schedule="static", loop=loop)[0]


CASES += [
    Case("setting", "intensity schedule reaching level 11", "CLI",
         lambda w: animate(w, "photo.png", PROMPT, "--intensity", "2:0,11:1"),
         ("intensity schedule '2:0,11:1'", "level 11 is outside 1 (still) to 10")),
    Case("setting", "intensity schedule reaching level 11", "API",
         lambda w: run_pipeline(w, intensity=[2, 11]), ("intensity of frame 1 must be a number from 1 (still) to 10",)),
    Case("setting", "intensity schedule reaching level 11", "node",
         lambda w: sample_node(w, frames=2, intensity_schedule="2:0,11:1"), ("level 11 is outside 1 (still) to 10",)),
    Case("setting", "intensity keyframes out of order", "CLI",
         lambda w: animate(w, "photo.png", PROMPT, "--intensity", "5:1,2:0"),
         ("keyframes must be in order of frame", "got frames 1, 0")),
    Case("setting", "intensity keyframes out of order", "node",
         lambda w: sample_node(w, intensity_schedule="5:1,2:0"), ("keyframes must be in order of frame",)),
    Case("setting", "an intensity keyframe beyond the last frame", "CLI",
         lambda w: animate(w, "photo.png", PROMPT, "--intensity", "2:0,8:31"),
         ("keyframe at frame 31, beyond the video's last frame (1)", "ask for more frames or move the keyframe")),
    Case("setting", "an intensity keyframe beyond the last frame", "API",
         lambda w: run_pipeline(w, intensity=[2, 3, 4]), ("intensity holds 3 levels but the video has 2 frames",)),
    Case("setting", "an intensity keyframe beyond the last frame", "node",
         lambda w: sample_node(w, frames=2, intensity_schedule="2:0,8:31"),
         ("keyframe at frame 31, beyond the video's last frame (1)",)),
    Case("setting", "a window longer than the motion modules handle", "CLI",
         lambda w: animate(w, "photo.png", PROMPT, "--window-length", "17"),
         ("window length must be from 2 to 16 frames", "the longest clip this model's motion modules handle")),
    Case("setting", "a window longer than the motion modules handle", "API",
         lambda w: run_pipeline(w, window_length=17), ("window length must be from 2 to 16 frames", "got 17")),
    Case("setting", "a window longer than the motion modules handle", "node",
         lambda w: sample_node(w, frames=20, windows=node_windows(w, window_length=17)),
         ("window length must be from 2 to 16 frames", "got 17")),
    Case("setting", "a window overlap as long as the window", "CLI",
         lambda w: animate(w, "photo.png", PROMPT, "--frames", "12", "--window-length", "4", "--window-overlap", "4"),
         ("window overlap must be from 0 to 3 frames", "less than the window length, 4")),
    Case("setting", "a window overlap as long as the window", "API",
         lambda w: run_pipeline(w, num_frames=12, window_length=4, window_overlap=4),
         ("window overlap must be from 0 to 3 frames", "got 4")),
    Case("setting", "a window overlap as long as the window", "node",
         lambda w: sample_node(w, frames=12, windows=node_windows(w, window_length=4, window_overlap=4)),
         ("window overlap must be from 0 to 3 frames", "got 4")),
    Case("setting", "a loop within one window", "CLI", lambda w: animate(w, "photo.png", PROMPT, "--loop"),
         ("a loop needs at least two windows", "ask for more than")),
    Case("setting", "a loop within one window", "API", lambda w: run_pipeline(w, loop=True),
         ("a loop needs at least two windows", "ask for more than")),
    Case("setting", "a loop within one window", "node", lambda w: sample_node(w, windows=node_windows(w, loop=True)),
         ("a loop needs at least two windows", "ask for more than")),
]

CASES += [
    Case("setting", "a 300-token prompt", "CLI", lambda w: animate(w, "photo.png", LONG_PROMPT),
         ("prompt is 300 tokens long", "at most 75", "shorten it"), after_loading=True),
    Case("setting", "a 300-token prompt", "API", lambda w: run_pipeline(w, prompt=LONG_PROMPT),
         ("prompt is 300 tokens long", "shorten it"),
         covered_by="tests/test_pipeline.py::test_long_prompt_is_refused_with_its_length"),
    Case("setting", "a 300-token prompt", "node", lambda w: sample_node(w, positive=w.node.env.text(LONG_PROMPT)),
         ("longer than 75 tokens", "shorten it"),
         covered_by="tests/test_nodes.py::test_a_300_token_prompt_is_refused_by_text_reweight_and_by_the_sampler"),
    Case("setting", "height 0", "CLI", lambda w: animate(w, "photo.png", PROMPT, "--size", "0", "64"),
         ("height must be a multiple of 8 from 64 to 1024", "got 0")),
    Case("setting", "height 0", "API", lambda w: run_pipeline(w, height=0),
         ("height must be a multiple of 8 from 64 to 1024", "got 0"), covered_by=PIPELINE_SETTINGS),
    Case("setting", "seed, frames, steps, intensity as numpy integers", "API",
         lambda w: run_pipeline(w, seed=np.int64(3), num_frames=np.int32(2), num_inference_steps=np.uint8(1),
                                intensity=np.int16(4)), accepted=True),
    Case("setting", "seed, frames, steps, intensity as numpy integers", "node",
         lambda w: sample_node(w, seed=np.int64(3), frames=np.int32(2), steps=np.uint8(1), intensity=np.int16(4)),
         accepted=True),
    Case("setting", "a prompt with a byte that is not UTF-8 (typed in a Latin-1 shell)", "CLI",
         lambda w: animate(w, "photo.png", LATIN1_PROMPT), ("the prompt holds the byte 0xe9", "pass UTF-8 text")),
    Case("setting", "a prompt with a byte that is not UTF-8 (typed in a Latin-1 shell)", "API",
         lambda w: run_pipeline(w, prompt=LATIN1_PROMPT), ("the prompt holds the byte 0xe9", "pass UTF-8 text"),
         covered_by=PIPELINE_SETTINGS),
    Case("setting", "a prompt with a lone surrogate (from a JSON escape)", "node",
         lambda w: text_reweight_node(w, "move \ud800 left"),
         ("the text holds a lone surrogate U+D800", "pass UTF-8 text")),
    # A GPU machine takes --device cuda; these rows are for the torch builds that cannot.
    *([] if torch.cuda.is_available() else [
        Case("setting", "--device cuda on a torch without CUDA", "CLI",
             lambda w: animate(w, "photo.png", PROMPT, "--device", "cuda"), ("device cuda: ", NO_CUDA)),
        Case("setting", "--device cuda on a torch without CUDA", "API", lambda w: load_api(w, device="cuda"),
             ("device cuda: ", NO_CUDA), bad_file="base.safetensors"),  # refused before any weights are read
    ]),
    Case("setting", "an empty prompt", "CLI", lambda w: animate(w, "photo.png", ""), accepted=True),
    Case("setting", "an empty prompt", "API", lambda w: run_pipeline(w, prompt=""), accepted=True,
         covered_by="tests/test_pipeline.py::test_empty_and_non_ascii_prompts_work"),
    Case("setting", "an empty prompt", "node", lambda w: sample_node(w, positive=w.node.env.text("")), accepted=True),
    Case("setting", "non-ASCII text", "CLI", lambda w: animate(w, "photo.png", "cámara 動く →"), accepted=True),
    Case("setting", "non-ASCII text", "API", lambda w: run_pipeline(w, prompt="cámara 動く →"), accepted=True,
         covered_by="tests/test_pipeline.py::test_empty_and_non_ascii_prompts_work"),
    Case("setting", "non-ASCII text", "node", lambda w: sample_node(w, positive=w.node.env.text("cámara 動く →")),
         accepted=True),
    # --- videos for `livephoto intensity` ---
    Case("video", "undecodable", "CLI", lambda w: cli(w, "intensity", w.videos / "undecodable.mp4"),
         ("undecodable.mp4 is not a video that can be decoded",),
         covered_by="tests/test_cli.py::test_intensity_of_an_undecodable_video_is_one_line"),
    Case("video", "undecodable", "API", lambda w: api(lambda: read_video(w.videos / "undecodable.mp4")),
         ("undecodable.mp4 is not a video that can be decoded",),
         covered_by="tests/test_video.py::test_undecodable_files_are_refused_in_one_line"),
    Case("video", "one frame", "CLI", lambda w: cli(w, "intensity", w.videos / "one_frame.mp4"),
         ("one_frame.mp4 holds one frame", "pass a video of 2 frames or more")),
    Case("video", "one frame", "API",
         lambda w: api(lambda: measure_intensity(read_video(w.videos / "one_frame.mp4").frames)),
         ("needs at least 2 frames", "got 1")),
    Case("video", "one frame (IMAGE batch of 1)", "node", lambda w: intensity_node(w, torch.rand(1, 32, 32, 3)),
         ("needs at least 2 frames",),
         covered_by="tests/test_nodes.py::test_estimate_intensity_matches_skimage_ssim_and_the_models_thresholds"),
    Case("video", "zero length (0 bytes)", "CLI", lambda w: cli(w, "intensity", w.videos / "empty.mp4"),
         ("empty.mp4 is empty (0 bytes)",)),
    Case("video", "zero length (0 bytes)", "API", lambda w: api(lambda: read_video(w.videos / "empty.mp4")),
         ("empty.mp4 is empty (0 bytes)",),
         covered_by="tests/test_video.py::test_undecodable_files_are_refused_in_one_line"),
    Case("video", "a video stream with no frames", "CLI", lambda w: cli(w, "intensity", w.videos / "no_frames.mp4"),
         ("no_frames.mp4",)),
    Case("video", "--max-frames 1", "CLI",
         lambda w: cli(w, "intensity", w.videos / "one_frame.mp4", "--max-frames", "1"),
         ("--max-frames must be 2 or more", "got 1")),
    # --- outputs that cannot be written: refused before the model loads ---
    Case("output", "its folder does not exist", "CLI", lambda w: animate_over(w, no_files, "nowhere/clip.webp"),
         ("out/nowhere does not exist", "create it first")),
    Case("output", "its folder is a file", "CLI",
         lambda w: animate_over(w, lambda d: (d / "notes.txt").write_text("x"), "notes.txt/clip.webp"),
         ("notes.txt is a file, not a folder", "choose another folder")),
    Case("output", "a dangling symbolic link, with --overwrite", "CLI",
         lambda w: animate_over(w, lambda d: replace_with_link(d / "link.webp", d / "gone.webp"), "link.webp",
                                "--overwrite"),
         ("link.webp is a symbolic link to", "gone.webp, which does not exist", "remove the link")),
    Case("output", "a folder, with --overwrite", "CLI",
         lambda w: animate_over(w, lambda d: (d / "folder.mp4").mkdir(exist_ok=True), "folder.mp4", "--overwrite"),
         ("folder.mp4 is a folder", "give a file name")),
    Case("output", "its settings sidecar OUT.json exists", "CLI",
         lambda w: animate_over(w, lambda d: (d / "sidecar.webp.json").write_text("{}"), "sidecar.webp"),
         ("sidecar.webp.json already exists (the settings sidecar of sidecar.webp)", "pass --overwrite")),
    Case("output", "it exists", "CLI",
         lambda w: animate_over(w, lambda d: (d / "taken.gif").write_bytes(b"precious"), "taken.gif"),
         ("taken.gif already exists", "pass --overwrite")),
    Case("output", "its folder does not exist", "API", lambda w: write_over(w, no_files, "nowhere/clip.webp"),
         ("out/nowhere does not exist", "create it first"), covered_by=f"{VIDEO_OUTPUTS}[missing folder]"),
    Case("output", "a dangling symbolic link, with overwrite=True", "API",
         lambda w: write_over(w, lambda d: replace_with_link(d / "link.webp", d / "gone.webp"), "link.webp", True),
         ("link.webp is a symbolic link to", "which does not exist", "remove the link"),
         covered_by=f"{VIDEO_OUTPUTS}[dangling symlink]"),
    Case("output", "its settings sidecar OUT.json exists", "API",
         lambda w: write_over(w, lambda d: (d / "sidecar.webp.json").write_text("{}"), "sidecar.webp"),
         ("sidecar.webp.json already exists (the settings sidecar of sidecar.webp)", "pass --overwrite"),
         covered_by=f"{VIDEO_OUTPUTS}[existing sidecar]"),
    # --- phone live photos (issue 19) ---
    Case("output", "NAME.motionphoto.jpg (not the Motion Photo filename pattern)", "CLI",
         lambda w: animate_to(w, "clip.motionphoto.jpg"), ("clip.motionphoto.jpg", "must end in MP.jpg", "NAME.MP.jpg")),
    Case("output", "NAME.motionphoto.jpg (not the Motion Photo filename pattern)", "API",
         lambda w: api(lambda: write_video(np.zeros((2, 32, 32, 3), np.uint8), w.out / "clip.motionphoto.jpg")),
         ("must end in MP.jpg",), covered_by=PHONE_REFUSALS),
    Case("output", "a Live Photo whose .mov already exists", "CLI", live_photo_over_an_existing_mov,
         ("pair.mov already exists", "the video of the Live Photo pair.livephoto", "pass --overwrite")),
    Case("output", "a Live Photo whose .mov already exists", "API",
         lambda w: api(lambda: write_video(np.zeros((2, 32, 32, 3), np.uint8), w.out / "pair.livephoto")),
         ("pair.mov already exists",),
         covered_by="tests/test_phone.py::test_a_live_photo_whose_pair_file_exists_is_refused_and_nothing_is_touched"),
    Case("output", "one frame as a phone live photo", "API",
         lambda w: api(lambda: write_video(np.zeros((1, 32, 32, 3), np.uint8), w.out / "one.MP.jpg")),
         ("needs at least 2 frames", "got 1"), covered_by=PHONE_REFUSALS),
    Case("output", "one frame (IMAGE batch of 1) to Save Live Photo for Phone", "node",
         lambda w: save_for_phone_node(w, torch.rand(1, 32, 32, 3)), ("needs at least 2 frames", "got 1"),
         covered_by="tests/test_phone.py::test_the_node_refuses_a_single_frame_in_one_line"),
    Case("output", "frames of 4097x16 as a phone live photo", "API",
         lambda w: api(lambda: write_video(np.zeros((2, 16, 4097, 3), np.uint8), w.out / "wide.livephoto")),
         ("frames of 4097x16 are too large", "H.264 level 5.1"), covered_by=PHONE_REFUSALS),
    Case("output", "frames of 4097x16 to Save Live Photo for Phone", "node",
         lambda w: save_for_phone_node(w, torch.zeros(2, 16, 4097, 3)),
         ("frames of 4097x16 are too large", "scale them down")),
]


def check(world: World, case: Case) -> Seen:
    """Run one case and check the promises every case makes; -> what the user saw."""
    seen = case.run(world)
    watch = world.watch
    assert not world.marker.exists(), "pickled code ran"
    assert seen.refused != case.accepted, seen
    for words in case.says:
        assert words in seen.text, (words, seen.text)
    if case.accepted:
        if case.front_end == "node":  # the recorder sees the loads it is there to catch
            assert watch.device_loads, "an accepted node run loaded no model onto the device"
        return seen
    assert "\n" not in seen.text and seen.text.strip() == seen.text
    assert watch.denoising == [], f"refused only after {watch.denoising}"
    if case.bad_file is not None:
        assert case.bad_file not in watch.tensor_files, f"{case.bad_file}'s tensors were read before the refusal"
    if case.front_end == "CLI" and case.group in ("photo", "setting", "output") and not case.after_loading:
        assert watch.pipelines_loaded == [], "the model was loaded before the refusal"
    if case.front_end == "node" and case.group in ("photo", "setting"):
        assert watch.device_loads == [], "the model was loaded onto the device before the refusal"
    return seen


@pytest.mark.parametrize("case", [c for c in CASES if not c.covered_by], ids=lambda c: c.id)
def test_bad_input(world, watch, case):
    check(world, case)


def test_every_case_is_unique_and_every_front_end_is_reached():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert {case.front_end for case in CASES} == {"CLI", "CLI inspect", "API", "node"}
    for covered in {case.covered_by.split("::")[0] for case in CASES if case.covered_by}:
        assert (ROOT / covered).is_file(), covered


# --- the table of docs/reliability.md -------------------------------------------------------------------


def table(world: World, rows: list[tuple[Case, Seen]]) -> str:
    def clean(text: str) -> str:
        text = text.replace(f"{world.root}/", "").replace(str(world.model) + "/", "")
        for folder in ("files/", "photos/", "videos/", "out/"):
            text = text.replace(folder, "")
        return text.replace("|", "\\|")

    lines = ["| input | front end | outcome: what the user sees | tested in |", "|---|---|---|---|"]
    for case, seen in rows:
        outcome = f"accepted{': ' + clean(seen.text) if seen.text else ''}" if case.accepted else f"`{clean(seen.text)}`"
        where = case.covered_by or f"test_reliability_matrix.py::test_bad_input[{case.id}]"
        lines.append(f"| {case.group}: {case.input} | {case.front_end} | {outcome} | `{where}` |")
    return "\n".join(lines)


@pytest.mark.skipif(not os.environ.get("LIVEPHOTO_WRITE_DOCS"), reason="set LIVEPHOTO_WRITE_DOCS=1 to write the doc")
def test_write_the_docs_table(world, watch):
    rows = []
    for case in CASES:
        for name in ("pipelines_loaded", "device_loads", "denoising", "tensor_files"):
            getattr(watch, name).clear()
        rows.append((case, check(world, case)))
    text = DOC.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    DOC.write_text(text[:start] + "\n" + table(world, rows) + "\n" + text[end:])
