"""The node pack in a real, headless ComfyUI (CPU), with full-size random-weight SD-1.5 models.

Needs COMFYUI_HOME (a ComfyUI work tree and venv made by ../shared/comfyui/setup.sh, with the pack's
requirements installed: ``setup.sh -r requirements.txt``) and the harness folder (``COMFYUI_HARNESS``,
default ../shared/comfyui beside the repository). Skipped where either is absent. Run with

    COMFYUI_HOME=../.comfyui python -m pytest -m comfyui tests/test_comfyui_server.py -v -s

What it builds once and keeps under $COMFYUI_HOME/models: a random SD-1.5 checkpoint (the harness'
make_random_sd15_checkpoint.py), a LivePhoto checkpoint made for it (LivePhotoModel.from_base on
its full-size UNet, with a tiny random DINOv2), that DINOv2, and a random FILM frame-interpolation
model (ComfyUI's own FILMNet class). The workflows name the files users have
(v1-5-pruned-emaonly.safetensors, film_net_fp16.safetensors, ...); a temporary models folder maps
those names to the random files with symlinks. Every API workflow of tests/workflows runs at 64x64, 4 frames, 2 steps.
"""

from __future__ import annotations

import base64
import io
import importlib.util
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ["COMFYUI_HOME"]).resolve() if os.environ.get("COMFYUI_HOME") else None
HARNESS = Path(os.environ.get("COMFYUI_HARNESS", ROOT.parent / "shared" / "comfyui")).resolve()
API_DIR, UI_DIR = ROOT / "tests" / "workflows", ROOT / "workflows"
RANDOM_CHECKPOINT = "random_sd15.safetensors"
RANDOM_LIVEPHOTO = "livephoto_random_sd15_v1.safetensors"  # bump the suffix when the recipe below changes
RANDOM_DINOV2 = "dinov2_tiny_random_v1.safetensors"
RANDOM_FILM = "film_random_v1.safetensors"
SMALL = dict(size=64, frames=4, steps=2, long_frames=12, schedule="3:0,8:6,3:11")

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.slow,
    pytest.mark.skipif(
        HOME is None or not (HOME / "ComfyUI" / "main.py").is_file() or not (HARNESS / "run_workflow.py").is_file(),
        reason="needs COMFYUI_HOME (../shared/comfyui/setup.sh) and the harness in COMFYUI_HARNESS",
    ),
]
TIMINGS: dict[str, float] = {}


def harness():
    spec = importlib.util.spec_from_file_location("run_workflow", HARNESS / "run_workflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(name: str, seconds: float) -> None:
    TIMINGS[name] = round(seconds, 1)
    print(f"\n[timing] {name}: {seconds:.1f} s", flush=True)


# --- models and inputs -------------------------------------------------------------------------------


def build_random_livephoto(checkpoint: Path, livephoto: Path, dinov2: Path) -> None:
    """A LivePhoto checkpoint for the random SD-1.5 (its new parts randomized, so frames differ), fp16."""
    from safetensors.torch import load_file, save_file
    from livephoto_core.testing.tiny import randomize_, tiny_dinov2

    from livephoto_core.config import LivePhotoConfig
    from livephoto_core.loading.checkpoint import save_livephoto_checkpoint
    from livephoto_core.loading.sd15 import unet_from_ldm
    from livephoto_core.model import LivePhotoModel

    state = {k: v for k, v in load_file(checkpoint).items() if k.startswith("model.diffusion_model.")}
    unet = unet_from_ldm(state, torch.float32, checkpoint.name)
    del state
    tiny = tiny_dinov2(0)
    config = LivePhotoConfig(num_frames=SMALL["frames"], height=SMALL["size"], width=SMALL["size"], dinov2_hidden_size=32,
                             dinov2_image_size=56, dinov2_variant="tiny-random")
    model = LivePhotoModel.from_base(config, unet, tiny)
    with torch.no_grad():
        for name, module in model.unet.motion_unet.named_modules():
            if name == "conv_in" or name.endswith("proj_out") and ".motion_modules." in name:
                randomize_(module, len(name))
        for processor in model.unet.content_processors():
            randomize_(processor.to_out, 1)
        randomize_(model.text_reweighter.head, 2)
    save_livephoto_checkpoint(model, livephoto, overwrite=True, dtype=torch.float16)
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(dinov2))


def random_lora(path: Path, rank: int = 4) -> None:
    """A kohya-style LoRA on every attn2 to_k/to_v of the SD-1.5 UNet, random, strong enough to see."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    blocks = [f"input_blocks_{i}_1" for i in (1, 2, 4, 5, 7, 8)] + ["middle_block_1"] + [
        f"output_blocks_{i}_1" for i in range(3, 12)]
    widths = {"input_blocks_1": 320, "input_blocks_2": 320, "input_blocks_4": 640, "input_blocks_5": 640,
              "input_blocks_7": 1280, "input_blocks_8": 1280, "middle_block": 1280}
    widths.update({f"output_blocks_{i}": w for i, w in [(3, 1280), (4, 1280), (5, 1280), (6, 640), (7, 640),
                                                         (8, 640), (9, 320), (10, 320), (11, 320)]})
    state = {}
    for block in blocks:
        width = widths[block.rsplit("_", 1)[0]]
        for projection in ("to_k", "to_v"):
            key = f"lora_unet_{block}_transformer_blocks_0_attn2_{projection}"
            state[f"{key}.lora_down.weight"] = torch.randn(rank, 768, generator=generator) * 0.05
            state[f"{key}.lora_up.weight"] = torch.randn(width, rank, generator=generator) * 0.05
            state[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(state, str(path))


# A FILM frame-interpolation model with random weights, built in ComfyUI's venv from ComfyUI's own class
# (comfy_extras/frame_interpolation_models/film_net.py) so that its loader recognises the file as FILM.
# Its layers are made with ComfyUI's uninitialised ops, so every weight is drawn here; small weights
# keep the flows finite. fp16, as the film_net_fp16.safetensors users download.
RANDOM_FILM_SCRIPT = r'''
import sys
sys.path.insert(0, ".")  # the ComfyUI work tree
path = sys.argv[1]
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]
import torch
from safetensors.torch import save_file
from comfy_extras.frame_interpolation_models.film_net import FILMNet

torch.manual_seed(0)
model = FILMNet()
with torch.no_grad():
    for parameter in model.parameters():
        parameter.normal_(0, 0.02)
save_file({key: value.half().contiguous() for key, value in model.state_dict().items()}, path)
'''


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, wan_files):
    """Cached random files under $COMFYUI_HOME/models, linked under the names the workflows use; for
    livephoto_wan.json the tiny umT5, Wan VAE, DiT and LoRA of `wan_files` under the names it loads."""
    cache = HOME / "models"
    checkpoint = cache / "checkpoints" / RANDOM_CHECKPOINT
    if not checkpoint.is_file():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(HOME / "venv" / "bin" / "python"), str(HARNESS / "make_random_sd15_checkpoint.py"),
                        str(checkpoint)], check=True)
    livephoto, dinov2 = cache / "livephoto" / RANDOM_LIVEPHOTO, cache / "livephoto" / RANDOM_DINOV2
    if not livephoto.is_file() or not dinov2.is_file():
        livephoto.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        build_random_livephoto(checkpoint, livephoto, dinov2)
        report("build the random LivePhoto checkpoint", time.monotonic() - started)
    film = cache / "frame_interpolation" / RANDOM_FILM
    if not film.is_file():
        film.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(HOME / "venv" / "bin" / "python"), "-c", RANDOM_FILM_SCRIPT, str(film)],
                       cwd=HOME / "ComfyUI", check=True)
    models = tmp_path_factory.mktemp("comfyui") / "models"
    links = {
        "checkpoints/v1-5-pruned-emaonly.safetensors": checkpoint,
        "livephoto/livephoto_sd15.safetensors": livephoto,
        "livephoto/dinov2-large.safetensors": dinov2,
        "frame_interpolation/film_net_fp16.safetensors": film,
        "diffusion_models/base.safetensors": wan_files["base"],
        "loras/lora.safetensors": wan_files["lora"],
        "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors": wan_files["text"],
        "vae/wan_2.1_vae.safetensors": wan_files["vae"],
    }
    for name, target in links.items():
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        (models / name).symlink_to(target)
    random_lora(models / "loras" / "random_lora.safetensors")
    return models


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    y, x = np.mgrid[0:96, 0:96] / 95
    photo = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1)
    Image.fromarray(np.rint(photo * 255).astype(np.uint8)).save(folder / "example.png")
    import av

    with av.open(str(folder / "example.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for index in range(8):  # a gradient sliding right: plenty of motion
            ramp = (np.arange(64)[None, :] * 4 + index * 24) % 256
            frame = np.stack(np.broadcast_arrays(ramp, ramp.T, 128), axis=-1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return [folder / "example.png", folder / "example.mp4"]


# --- the server ---------------------------------------------------------------------------------------


class Events:
    """ComfyUI's websocket (/ws?clientId=...), read with the standard library: JSON text messages."""

    def __init__(self, port: int, client_id: str):
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.socket.sendall(
            f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buffer = b""
        self.binary: list[bytes] = []  # binary messages: the server's preview images
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.socket.recv(4096)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.socket.recv(65536)
            if not chunk:
                raise ConnectionError("the websocket closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def next(self, timeout: float) -> dict | None:
        """The next JSON message, or None when `timeout` passes first. Binary frames (previews) are kept
        in `binary`."""
        self.socket.settimeout(timeout)
        try:
            while True:
                first, second = self._read(2)
                length = second & 0x7F
                if length == 126:
                    length = struct.unpack(">H", self._read(2))[0]
                elif length == 127:
                    length = struct.unpack(">Q", self._read(8))[0]
                payload = self._read(length)
                if first & 0x0F == 1:
                    return json.loads(payload)
                if first & 0x0F == 2:
                    self.binary.append(payload)
        except (socket.timeout, TimeoutError):
            return None

    def close(self):
        self.socket.close()


class Comfy:
    def __init__(self, server, rw):
        self.server, self.rw, self.url = server, rw, server.base_url
        self.client_id = uuid.uuid4().hex
        self.events = Events(server.port, self.client_id)

    def submit(self, workflow: dict, extra_data: dict | None = None) -> str:
        request = {"prompt": workflow, "client_id": self.client_id, **({"extra_data": extra_data} if extra_data else {})}
        status, body = self.rw.http_json(self.url, "/prompt", request)
        assert status == 200, self.rw.format_refusal(body)
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 900, on_event=None) -> tuple[dict, list[dict]]:
        """Follow the websocket until the prompt ends; returns its /history entry and the events seen."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self.events.next(timeout=1)
            if event is not None and (event.get("data") or {}).get("prompt_id") == prompt_id:
                event["at"] = time.monotonic()
                seen.append(event)
                if on_event:
                    on_event(event)
                if event["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                    break
            assert self.server.alive(), self.server.log_tail()
        else:
            pytest.fail(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.server.log_tail()}")
        while True:  # the end message can arrive before /history has the entry
            _, history = self.rw.http_json(self.url, f"/history/{prompt_id}")
            if prompt_id in history or time.monotonic() > deadline:
                return history[prompt_id], seen
            time.sleep(0.1)

    def run(self, workflow: dict, name: str, extra_data: dict | None = None) -> tuple[dict, list[dict]]:
        started = time.monotonic()
        entry, events = self.wait(self.submit(workflow, extra_data))
        assert entry["status"]["status_str"] == "success", self.rw.format_execution_error(entry)
        report(name, time.monotonic() - started)
        print(f"[timing] {name}, per node: {node_seconds(workflow, events)}", flush=True)
        return entry, events

    def free(self) -> None:
        """Unload every model and drop every cached node output (POST /free). ComfyUI acts on it after
        the next prompt, so a one-node prompt follows."""
        self.rw.http_json(self.url, "/free", {"unload_models": True, "free_memory": True})
        self.run({"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
                  "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}, "free memory")

    def download(self, entry: dict, node_id: str, key: str = "images") -> list[Path]:
        folder = Path(tempfile.mkdtemp(prefix="comfyui-out-"))
        return [Path(self.rw.download(self.url, item, folder)) for item in entry["outputs"][node_id][key]]


@pytest.fixture(scope="module")
def comfy(models_dir, inputs):
    rw = harness()
    run_dir = tempfile.mkdtemp(prefix="livephoto-comfyui-")
    server = rw.Server(str(HOME / "ComfyUI"), str(HOME / "venv" / "bin" / "python"), [str(ROOT)], str(models_dir),
                       [str(p) for p in inputs], [], run_dir, None)
    try:
        report("server start", server.wait_ready(180))
        server.check_packs_loaded()
        client = Comfy(server, rw)
        yield client
        client.events.close()
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"\n[timing] summary: {json.dumps(TIMINGS)}", flush=True)


def node_seconds(workflow: dict, events: list[dict]) -> dict[str, float]:
    """Seconds between one node's "executing" message and the next: what each node took."""
    starts = [(e["at"], e["data"]["node"]) for e in events if e["type"] == "executing"]
    ends = [at for at, _ in starts[1:]] + [events[-1]["at"]]
    return {f"{node} {workflow[node]['class_type']}": round(end - at, 1)
            for (at, node), end in zip(starts, ends) if node is not None and end - at >= 0.5}


def small(workflow: dict) -> dict:
    """The shipped workflow at test size: 64x64 photo, 4 frames, 2 steps; a long one (with Context Windows)
    3 windows of the 4-frame model long, its intensity schedule squeezed to fit."""
    workflow = json.loads(json.dumps(workflow))
    long = any(node["class_type"] == "LivePhotoContextWindows" for node in workflow.values())
    for node in workflow.values():
        inputs = node["inputs"]
        if node["class_type"] == "ImageScale":
            inputs.update(width=SMALL["size"], height=SMALL["size"])
        if node["class_type"] in ("LivePhotoSampler", "LivePhotoPriorInversion"):
            inputs["steps"] = SMALL["steps"]
        if node["class_type"] == "LivePhotoSampler":
            inputs["frames"] = SMALL["long_frames"] if long else SMALL["frames"]
        if inputs.get("intensity_schedule"):
            inputs["intensity_schedule"] = SMALL["schedule"]
    return workflow


def api_workflow(name: str) -> dict:
    return json.loads((API_DIR / f"{name}_api.json").read_text())


def frames_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.stack([np.asarray(frame.convert("RGB"), dtype=np.float64) for frame in ImageSequence.Iterator(image)])


def texts(entry: dict, node_id: str) -> list[str]:
    return list(entry["outputs"][node_id]["text"])


# --- tests: converted UNet against ComfyUI's own (separate process, before the server starts) ----------

UNET_CHECK = r'''
import importlib.util, json, sys, time
import torch
sys.path.insert(0, ".")  # the ComfyUI work tree
repo, checkpoint, lora_file = sys.argv[1:4]
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]  # as the server runs here
import comfy.sd, comfy.utils, comfy.model_management
spec = importlib.util.spec_from_file_location("livephoto_pack", repo + "/__init__.py", submodule_search_locations=[repo])
pack = importlib.util.module_from_spec(spec); sys.modules["livephoto_pack"] = pack; spec.loader.exec_module(pack)
from livephoto_pack.nodes.loader import check_sd15, patched_unet_state_dict
from livephoto_pack.livephoto_core.loading.sd15 import unet_from_ldm

torch.manual_seed(0)
model = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=False, output_clip=False)[0]
check_sd15(model)
x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 768)
result = {}

def compare(patcher, name):
    started = time.monotonic()
    unet = unet_from_ldm(patched_unet_state_dict(patcher, torch.float32), torch.float32, "MODEL")
    result[name + "_convert_s"] = round(time.monotonic() - started, 1)
    comfy.model_management.load_models_gpu([patcher], force_full_load=True)  # applies the patches, as sampling does
    with torch.inference_mode():
        ours = unet(x, t, encoder_hidden_states=context).sample
        theirs = patcher.model.diffusion_model(x, timesteps=t, context=context)
    result[name + "_max_abs_diff"] = (ours - theirs).abs().max().item()
    result[name + "_output_scale"] = theirs.abs().max().item()
    return ours

plain = compare(model, "plain")
lora = comfy.utils.load_torch_file(lora_file, safe_load=True)
patched_model, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
result["lora_patched_keys"] = len(patched_model.patches)
patched = compare(patched_model, "lora")
result["lora_changes_output_by"] = (patched - plain).abs().max().item()
print("RESULT " + json.dumps(result))
'''


def test_comfyuis_unet_and_the_converted_unet_agree_with_and_without_a_lora(models_dir, tmp_path):
    script = tmp_path / "unet_check.py"
    script.write_text(UNET_CHECK)
    started = time.monotonic()
    run = subprocess.run(
        [str(HOME / "venv" / "bin" / "python"), str(script), str(ROOT), str(models_dir / "checkpoints" / "v1-5-pruned-emaonly.safetensors"),
         str(models_dir / "loras" / "random_lora.safetensors")],
        cwd=HOME / "ComfyUI", capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
    report("UNet comparison (load, 2 conversions, 4 forwards)", time.monotonic() - started)
    print(f"[unet] {result}")
    assert result["plain_max_abs_diff"] < 1e-3 and result["lora_max_abs_diff"] < 1e-3
    assert result["lora_patched_keys"] == 32
    assert result["lora_changes_output_by"] > 100 * result["lora_max_abs_diff"]  # the LoRA matters, and agrees


# --- tests on the running server --------------------------------------------------------------------


def test_the_nodes_are_registered_with_category_and_tooltips(comfy):
    _, info = comfy.rw.http_json(comfy.url, "/object_info")
    ours = {name: entry for name, entry in info.items() if entry.get("category") == "LivePhoto"}
    assert set(ours) == {"LoadLivePhotoModel", "LivePhotoTextReweight", "LivePhotoPriorInversion", "LivePhotoSampler",
                         "LivePhotoEstimateIntensity", "LivePhotoSaveForPhone", "LivePhotoPingPong",
                         "LivePhotoContextWindows", "LoadLivePhotoWanModel", "LivePhotoWanSampler"}
    for name, entry in ours.items():
        for section in ("required", "optional"):
            for input_name, (_, options) in entry["input"].get(section, {}).items():
                assert options.get("tooltip"), f"{name}.{input_name}"
        assert all(entry["output_tooltips"]), name
    assert info["LoadLivePhotoModel"]["input"]["required"]["livephoto_checkpoint"][1]["options"] == [
        "dinov2-large.safetensors", "livephoto_sd15.safetensors"]


def test_the_template_browser_serves_each_workflow_and_its_thumbnail(comfy):
    """ComfyUI lists a pack's templates from the first served folder name it finds (example_workflows/,
    example/, examples/, workflow/, workflows/): only workflows/ exists, and each entry opens."""
    import urllib.request

    served = ("example_workflows", "example", "examples", "workflow", "workflows")
    assert [name for name in served if (ROOT / name).is_dir()] == ["workflows"]
    [pack] = comfy.server.pack_names
    status, templates = comfy.rw.http_json(comfy.url, "/api/workflow_templates")
    assert status == 200
    names = sorted(path.stem for path in UI_DIR.glob("*.json"))
    assert sorted(templates[pack]) == names
    for name in names:
        with urllib.request.urlopen(f"{comfy.url}/api/workflow_templates/{pack}/{name}.json", timeout=30) as response:
            assert response.status == 200
            assert json.loads(response.read()) == json.loads((UI_DIR / f"{name}.json").read_text())
        with urllib.request.urlopen(f"{comfy.url}/api/workflow_templates/{pack}/{name}.jpg", timeout=30) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "image/jpeg"
            thumbnail = Image.open(io.BytesIO(response.read()))
            assert thumbnail.format == "JPEG" and min(thumbnail.size) >= 128


@pytest.mark.parametrize("name", ["animate", "animate_smooth", "intensity_sweep", "livephoto_wan", "long_loop",
                                  "measure_video", "text_weights"])
def test_each_ui_workflow_converts_to_its_api_twin_with_comfy_cli(comfy, name, tmp_path):
    converter = os.environ.get("COMFY_CLI_PYTHON", str(ROOT.parent / ".comfycli" / "bin" / "python"))
    if not Path(converter).is_file():
        pytest.skip("comfy-cli not installed (python3 -m venv ../.comfycli && ../.comfycli/bin/pip install comfy-cli)")
    _, info = comfy.rw.http_json(comfy.url, "/object_info")
    (tmp_path / "object_info.json").write_text(json.dumps(info))
    code = ("import json, sys; from comfy_cli.workflow_to_api import convert_ui_to_api; "
            "print(json.dumps(convert_ui_to_api(json.load(open(sys.argv[1])), json.load(open(sys.argv[2])))))")
    run = subprocess.run([converter, "-c", code, str(UI_DIR / f"{name}.json"), str(tmp_path / "object_info.json")],
                         capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == api_workflow(name)


def test_comfy_cli_validates_the_pack_for_the_registry():
    """`comfy node validate` (pyproject's [tool.comfy], license, security checks) passes."""
    converter = Path(os.environ.get("COMFY_CLI_PYTHON", str(ROOT.parent / ".comfycli" / "bin" / "python")))
    if not converter.is_file():
        pytest.skip("comfy-cli not installed (python3 -m venv ../.comfycli && ../.comfycli/bin/pip install comfy-cli)")
    run = subprocess.run([str(converter.parent / "comfy"), "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "validation checks passed" in output, output
    assert "Warning" not in output, output


def test_animate(comfy):
    entry, events = comfy.run(small(api_workflow("animate")), "workflow animate")
    [video] = comfy.download(entry, "11")
    frames = frames_of(video)
    assert frames.shape == (SMALL["frames"], SMALL["size"], SMALL["size"], 3)
    [chart] = comfy.download(entry, "13")
    assert Image.open(chart).size[1] == 256
    assert texts(entry, "6")[0].startswith("shaking:")
    assert texts(entry, "12")[0].startswith("intensity ")
    progress = {}
    for event in events:
        if event["type"] == "progress":
            progress.setdefault(event["data"]["node"], []).append((event["data"]["value"], event["data"]["max"]))
    for node in ("8", "9"):  # prior inversion and sampler: from the first step to the last
        assert progress[node][0] == (1, SMALL["steps"]) and progress[node][-1] == (SMALL["steps"], SMALL["steps"])


def test_the_sampler_sends_live_previews_when_the_user_asks_for_them(comfy):
    """KSampler's mechanism: ProgressBar updates carry a JPEG of the middle frame, sent as binary
    websocket messages; with the preview method "none" (the server's default) none are sent."""
    workflow = small(api_workflow("animate"))
    workflow["9"]["inputs"]["seed"] = 101  # not a cached result
    comfy.events.binary.clear()
    comfy.run(workflow, "workflow animate, no previews")
    assert comfy.events.binary == []
    workflow["9"]["inputs"]["seed"] = 102
    comfy.run(workflow, "workflow animate, latent2rgb previews", {"preview_method": "latent2rgb"})
    images = [message for message in comfy.events.binary if b"\xff\xd8\xff" in message[:64]]
    assert len(images) >= SMALL["steps"], [message[:16] for message in comfy.events.binary]
    jpeg = images[-1][images[-1].index(b"\xff\xd8\xff"):]
    width, height = Image.open(io.BytesIO(jpeg)).size
    assert width == height  # one square frame (ComfyUI scales previews up to its preview size)


def test_a_batch_of_two_photos_and_two_prompt_lines_gives_two_videos_saying_which_is_which(comfy):
    """The animate graph fed a batch of 2 photos (Image Batch of the photo and its negative) and 2 prompt
    lines: photo k with prompt k, a prior per photo, and VAE Decode and Save Animated WEBP run once per
    video, so 2 files come out, numbered in the order of the sampler's videos output."""
    workflow = small(api_workflow("animate"))
    workflow["20"] = {"class_type": "ImageInvert", "inputs": {"image": ["4", 0]}}
    workflow["21"] = {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["20", 0]}}
    for node, name in (("5", "pixels"), ("8", "photo"), ("9", "photo")):
        workflow[node]["inputs"][name] = ["21", 0]
    workflow["6"]["inputs"]["text"] = "shaking head\nnodding"
    workflow["9"]["inputs"]["seed"] = 201  # not a cached result
    workflow["11"]["inputs"]["filename_prefix"] = "LivePhoto/batch"
    entry, _ = comfy.run(workflow, "workflow animate, a batch of 2 photos x 2 prompt lines")
    videos = comfy.download(entry, "11")
    assert len(videos) == 2 and videos[0].name < videos[1].name
    for video in videos:
        assert frames_of(video).shape == (SMALL["frames"], SMALL["size"], SMALL["size"], 3)
    assert texts(entry, "9") == ['video 1: photo 1, prompt 1 "shaking head"\nvideo 2: photo 2, prompt 2 "nodding"']
    assert len(texts(entry, "12")) == 2  # Estimate Motion Intensity ran once per video
    assert len(comfy.download(entry, "13")) == 2  # a weights chart per prompt line


def webp_durations(path: Path) -> list[int]:
    """Each frame's display time in ms, as the file stores it (ComfyUI writes int(1000 / fps))."""
    durations = []
    with Image.open(path) as image:
        for frame in ImageSequence.Iterator(image):
            frame.load()  # Pillow reads a WebP frame's duration when it decodes the frame
            durations.append(frame.info["duration"])
    return durations


def test_animate_smooth_doubles_the_frames_and_the_frame_rate(comfy):
    """animate_smooth: the animate graph, then ComfyUI's FrameInterpolate (multiplier 2, a random FILM model)
    before Save Animated WEBP, whose fps is the sampler's fps times the multiplier. Beside it the test saves
    the frames before interpolation (with the sampler's fps), both lossless: F frames become (F-1)*2+1, the
    originals at the even places, bit for bit, and each frame shows half as long."""
    workflow = lossless(small(api_workflow("animate_smooth")), "LivePhoto/smooth")
    workflow["100"] = {"class_type": "SaveAnimatedWEBP", "inputs": {
        "images": ["10", 0], "filename_prefix": "LivePhoto/smooth_source", "fps": ["9", 1], "lossless": True,
        "quality": 90, "method": "default"}}
    entry, _ = comfy.run(workflow, "workflow animate_smooth (lossless)")
    [smooth_file], [source_file] = comfy.download(entry, "11"), comfy.download(entry, "100")
    smooth, source = frames_of(smooth_file), frames_of(source_file)
    count = SMALL["frames"]
    assert source.shape == (count, SMALL["size"], SMALL["size"], 3)
    assert smooth.shape == (2 * count - 1, SMALL["size"], SMALL["size"], 3)
    assert np.array_equal(smooth[::2], source)
    for index in range(1, 2 * count - 1, 2):  # new frames, not copies of a neighbour
        assert not np.array_equal(smooth[index], smooth[index - 1]) and not np.array_equal(smooth[index], smooth[index + 1])
    trained_fps = 8  # LivePhotoConfig.fps, the sampler's fps output for the random checkpoint
    assert webp_durations(source_file) == [int(1000 / trained_fps)] * count
    assert webp_durations(smooth_file) == [int(1000 / (2 * trained_fps))] * (2 * count - 1)


def test_animate_smooth_interpolates_each_video_of_a_batch_on_its_own(comfy):
    """Two photos (the photo and its negative, as in the batch test above): two files of 2F-1 frames, each
    with its own video's frames at the even places. Interpolating the two as one batch would give one file
    of 4F-3 frames, with frames made across the seam."""
    workflow = lossless(small(api_workflow("animate_smooth")), "LivePhoto/smooth_batch")
    workflow["20"] = {"class_type": "ImageInvert", "inputs": {"image": ["4", 0]}}
    workflow["21"] = {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["20", 0]}}
    for node, name in (("5", "pixels"), ("8", "photo"), ("9", "photo")):
        workflow[node]["inputs"][name] = ["21", 0]
    workflow["9"]["inputs"]["seed"] = 202  # not a cached result
    workflow["100"] = {"class_type": "SaveAnimatedWEBP", "inputs": {
        "images": ["10", 0], "filename_prefix": "LivePhoto/smooth_batch_source", "fps": ["9", 1], "lossless": True,
        "quality": 90, "method": "default"}}
    entry, _ = comfy.run(workflow, "workflow animate_smooth, a batch of 2 photos (lossless)")
    smooth = [frames_of(path) for path in comfy.download(entry, "11")]
    sources = [frames_of(path) for path in comfy.download(entry, "100")]
    assert len(smooth) == len(sources) == 2
    for video, source in zip(smooth, sources):
        assert video.shape == (2 * SMALL["frames"] - 1, SMALL["size"], SMALL["size"], 3)
        assert np.array_equal(video[::2], source)
    assert not np.array_equal(sources[0], sources[1])


def test_intensity_sweep(comfy):
    entry, _ = comfy.run(small(api_workflow("intensity_sweep")), "workflow intensity_sweep")
    [video] = comfy.download(entry, "22")
    assert frames_of(video).shape == (SMALL["frames"], SMALL["size"], 3 * SMALL["size"] + 2 * 8, 3)
    for node in ("11", "15", "19"):  # the measured intensity of each clip
        assert texts(entry, node)[0].startswith("intensity ")


def test_long_loop(comfy):
    entry, events = comfy.run(small(api_workflow("long_loop")), "workflow long_loop")
    [video] = comfy.download(entry, "11")
    frames = frames_of(video)
    assert frames.shape == (SMALL["long_frames"], SMALL["size"], SMALL["size"], 3)
    assert texts(entry, "12")[0].startswith("intensity ")


def test_measure_video(comfy):
    entry, _ = comfy.run(api_workflow("measure_video"), "workflow measure_video")
    [text] = texts(entry, "3")
    assert "8 frames" in text and "built-in thresholds" in text and int(text.split()[1]) >= 5


def test_text_weights(comfy):
    entry, _ = comfy.run(api_workflow("text_weights"), "workflow text_weights")
    [chart] = comfy.download(entry, "4")
    assert Image.open(chart).size[1] == 256
    weights = texts(entry, "3")[0].split()
    assert [w.split(":")[0] for w in weights][:3] == ["a", "woman", "slowly"]
    assert all(0 < float(w.split(":")[1]) < 1 for w in weights)


def test_bad_inputs_are_refused_with_a_message_that_names_the_fix(comfy):
    workflow = small(api_workflow("animate"))
    del workflow["13"]  # the chart preview does not depend on the sampler: ComfyUI would run it alone
    workflow["9"]["inputs"]["intensity"] = 11
    status, body = comfy.rw.http_json(comfy.url, "/prompt", {"prompt": workflow, "client_id": comfy.client_id})
    assert status == 400
    [error] = body["node_errors"]["9"]["errors"]  # one message, on the intensity widget
    assert error["type"] == "custom_validation_failed" and error["extra_info"]["input_name"] == "intensity"
    assert "from 1 (still) to 10 (most motion); got 11" in error["details"]

    workflow = small(api_workflow("animate"))
    workflow["6"]["inputs"]["text"] = " ".join(["a cat shaking its head"] * 60)  # 300 tokens
    entry, _ = comfy.wait(comfy.submit(workflow))
    [(_, failure)] = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert failure["node_id"] == "6" and failure["exception_type"].endswith("InvalidInputError")
    assert "is 300 tokens long" in failure["exception_message"] and "shorten it" in failure["exception_message"]


def lossless(workflow: dict, prefix: str) -> dict:
    for node in workflow.values():
        if node["class_type"] == "SaveAnimatedWEBP":
            node["inputs"].update(lossless=True, filename_prefix=prefix)
    return workflow


def test_a_lora_on_the_model_changes_the_frames(comfy):
    plain = lossless(small(api_workflow("animate")), "LivePhoto/plain")
    with_lora = lossless(small(api_workflow("animate")), "LivePhoto/lora")
    with_lora["100"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "lora_name": "random_lora.safetensors", "strength_model": 1.0,
        "strength_clip": 0.0}}
    with_lora["2"]["inputs"]["model"] = ["100", 0]
    frames = []
    for name, workflow in (("plain", plain), ("with a LoRA", with_lora)):
        entry, _ = comfy.run(workflow, f"animate {name} (lossless)")
        frames.append(frames_of(comfy.download(entry, "11")[0]))
        comfy.free()  # at most one converted model in RAM (this machine has 24 GB)
    assert np.abs(frames[0] - frames[1]).max() > 10


def test_cancel_stops_within_one_step_and_the_model_stays_usable(comfy):
    workflow = small(api_workflow("animate"))
    del workflow["8"], workflow["9"]["inputs"]["prior"]  # no prior: the sampler alone, for many steps
    workflow["9"]["inputs"].update(steps=300, seed=7)
    prompt_id = comfy.submit(workflow)
    pressed = {}

    def cancel_after_two_sampler_steps(event):
        data = event["data"]
        if event["type"] == "progress" and data["node"] == "9" and data["value"] >= 2 and not pressed:
            comfy.rw.http_json(comfy.url, "/interrupt", {})
            pressed["at"], pressed["step"] = time.monotonic(), data["value"]

    entry, events = comfy.wait(prompt_id, on_event=cancel_after_two_sampler_steps)
    stopped = time.monotonic() - pressed["at"]
    report("cancel: interrupt -> stopped", stopped)
    assert events[-1]["type"] == "execution_interrupted", [e["type"] for e in events]
    last_step = max(e["data"]["value"] for e in events if e["type"] == "progress" and e["data"]["node"] == "9")
    assert last_step <= pressed["step"] + 1 < 300
    workflow["9"]["inputs"].update(steps=2, seed=8)
    entry, _ = comfy.run(workflow, "animate after a cancel")
    assert frames_of(comfy.download(entry, "11")[0]).shape[0] == SMALL["frames"]


def resident_mib(pid: int) -> float:
    """A process's resident memory (RSS) in MiB: psutil where installed, else /proc/<pid>/status."""
    try:
        import psutil
    except ImportError:
        line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024
    return psutil.Process(pid).memory_info().rss / 2**20


RSS_RUNS, RSS_WARMUP, RSS_GROWTH_BOUND_MIB = 20, 10, 300


def test_twenty_sampler_runs_in_a_row_keep_the_server_memory_bounded(comfy):
    """The sampler run 20 times on one server (a new seed each time, so it really runs; the loaders stay
    cached, as they do for users): after the first 10 runs, the rest grow the server's RSS by less than
    RSS_GROWTH_BOUND_MIB in total. A leak of one latent batch, a model copy or a cache entry per run shows."""
    workflow = small(api_workflow("animate"))
    del workflow["8"], workflow["9"]["inputs"]["prior"], workflow["13"]  # the sampler alone, no chart
    workflow["9"]["inputs"].update(frames=2, steps=1)
    pid = comfy.server.process.pid
    rss = [resident_mib(pid)]  # before: the server with whatever the earlier tests left loaded
    executed = []
    for run in range(RSS_RUNS):
        workflow["9"]["inputs"]["seed"] = 1000 + run
        entry, events = comfy.run(workflow, f"rss run {run + 1}")
        executed.append(any(e["type"] == "executing" and e["data"]["node"] == "9" for e in events))
        rss.append(resident_mib(pid))
    growth = rss[-1] - rss[RSS_WARMUP]
    print(f"\n[rss] MiB before and after each run: {[round(value) for value in rss]}")
    print(f"[rss] runs {RSS_WARMUP + 1}-{RSS_RUNS}: {growth:+.0f} MiB (bound {RSS_GROWTH_BOUND_MIB}); "
          f"peak {max(rss):.0f} MiB", flush=True)
    assert all(executed), "a run was answered from ComfyUI's cache: the sampler did not run 20 times"
    assert frames_of(comfy.download(entry, "11")[0]).shape[0] == 2
    assert growth < RSS_GROWTH_BOUND_MIB, rss


def test_a_missing_dependency_is_one_log_line_and_the_server_runs(tmp_path):
    """diffusers made unimportable for the server: ComfyUI starts, logs one LivePhoto line, lists no nodes."""
    fake = tmp_path / "fake_site" / "diffusers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("No module named \'diffusers\' (hidden by the test)")\n')
    rw = harness()
    run_dir = tmp_path / "run"
    environment = dict(os.environ)
    os.environ["PYTHONPATH"] = str(fake.parent)
    try:
        server = rw.Server(str(HOME / "ComfyUI"), str(HOME / "venv" / "bin" / "python"), [str(ROOT)], None, [], [],
                           str(run_dir), None)
    finally:
        os.environ.clear()
        os.environ.update(environment)
    try:
        server.wait_ready(180)
        _, info = rw.http_json(server.base_url, "/object_info")
        log = server.log_tail(400)
    finally:
        server.stop()
    assert not [name for name, entry in info.items() if entry.get("category") == "LivePhoto"]
    assert "LoadImage" in info
    lines = [line for line in log.splitlines() if "LivePhoto" in line or "IMPORT FAILED" in line]
    assert len(lines) == 1 and "diffusers" in lines[0] and "requirements.txt" in lines[0], lines


def test_the_frontend_opens_each_template_through_the_template_route(models_dir, inputs, tmp_path):
    """ComfyUI's own web frontend in headless Chromium (Debian's chromium; the harness' browser_check.py)
    fetches each template from the pack's template route, as its template browser does, and loads it:
    every node type present, every node of the file in the graph, no dialog, no node outlined as missing its
    model or input file (models_dir and inputs hold every file the templates name). Screenshots land in the
    test's folder; with LIVEPHOTO_THUMBNAILS=workflows they also refresh the templates' thumbnails."""
    if not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chromium (apt-get install -y chromium)")
    workflows = sorted(UI_DIR.glob("*.json"))
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "browser_templates.py"), *map(str, workflows),
         "--pack", str(ROOT), "--out", str(tmp_path), "--window", "2000x1000"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "COMFYUI_HOME": str(HOME), "PYTHONPATH": str(HARNESS), "LIVEPHOTO_MODELS_DIR": str(models_dir),
             "LIVEPHOTO_INPUTS": os.pathsep.join(map(str, inputs))},
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    report_json = json.loads((tmp_path / "report.json").read_text())
    assert [w["ok"] for w in report_json["workflows"]] == [True] * len(workflows)
    for path, loaded in zip(workflows, report_json["workflows"]):
        assert not loaded["missing"] and not loaded["outlined"], path.name
        assert loaded["nodes_in_graph"] == len(json.loads(path.read_text())["nodes"]), path.name
        assert Path(loaded["screenshot"]).stat().st_size > 10_000, path.name
    print(f"\n[screenshots] {tmp_path}", flush=True)


def test_a_workflow_saved_by_the_frontend_opens_again_and_runs_to_a_video(comfy, tmp_path):
    """Issue 12: workflows saved by the current version keep loading. ComfyUI's frontend (headless Chromium,
    on the test's server) opens the animate template through the template route and saves it as its Save
    does (tests/browser_templates.py, LIVEPHOTO_SAVED); the saved file is opened again and the prompt the
    Queue button sends for it is queued here: it is the API twin, node for node, and it renders a video."""
    if not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chromium (apt-get install -y chromium)")
    # As browser_check does for a server it starts itself: a fresh user would get the template browser
    # opened over the graph on the first visit.
    status, _ = comfy.rw.http_json(comfy.url, "/settings/Comfy.TutorialCompleted", True)
    assert status == 200
    saved_dir = tmp_path / "saved"
    saved_dir.mkdir()
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "browser_templates.py"), str(UI_DIR / "animate.json"),
         "--url", comfy.url, "--out", str(tmp_path / "browser"), "--window", "2000x1000"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(HARNESS), "LIVEPHOTO_SAVED": str(saved_dir)},
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    shipped = json.loads((UI_DIR / "animate.json").read_text())
    saved = json.loads((saved_dir / "animate.json").read_text())
    assert saved != shipped  # the frontend's own serialisation (its graph id, its view, the sockets it adds)
    assert sorted((n["id"], n["type"]) for n in saved["nodes"]) == sorted((n["id"], n["type"]) for n in shipped["nodes"])
    assert sorted(saved["links"]) == sorted(shipped["links"])
    prompt = json.loads((saved_dir / "animate_api.json").read_text())
    assert prompt == api_workflow("animate")
    workflow = small(prompt)
    workflow["9"]["inputs"]["seed"] = 301  # not a cached result
    entry, _ = comfy.run(workflow, "animate, saved by the frontend and opened again")
    [video] = comfy.download(entry, "11")
    assert frames_of(video).shape == (SMALL["frames"], SMALL["size"], SMALL["size"], 3)
    print(f"\n[saved workflow] {saved_dir / 'animate.json'}", flush=True)


# --- LivePhoto-Wan2.1: ComfyUI's umT5 and Wan VAE against the core's, and the workflow on a server ----------

TINY_UMT5_PACK = ROOT / "tests" / "comfyui_tiny_umt5"
# Built in ComfyUI's venv (it has sentencepiece): a tiny umT5 in the layout of ComfyUI's umT5 files (transformers'
# UMT5EncoderModel keys + the tokenizer's sentencepiece model as the "spiece_model" tensor), the size of the test
# pack's TINY_UMT5, and a tiny Wan 2.1 VAE in the original layout that Load VAE reads (ComfyUI's own WanVAE class).
WAN_TINY_FILES_SCRIPT = r'''
import io, random, sys
sys.path.insert(0, ".")  # the ComfyUI work tree
text_path, vae_path = sys.argv[1:3]
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]
import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import UMT5Config, UMT5EncoderModel
import comfy.ldm.wan.vae

words = ("the a cat dog kitten dances sways left right moves slowly red circle blue sky waves water tree wind blows "
         "hair smiles turns head camera pans bright tones overexposed static blurred details worst quality low").split()
rng = random.Random(0)
proto = io.BytesIO()
spm.SentencePieceTrainer.train(
    sentence_iterator=iter(" ".join(rng.choice(words) for _ in range(12)) + rng.choice(".,!") for _ in range(2000)),
    model_writer=proto, vocab_size=60, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
torch.manual_seed(0)
encoder = UMT5EncoderModel(UMT5Config(vocab_size=60, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                      relative_attention_num_buckets=32, feed_forward_proj="gated-gelu"))
state = {k: v.clone().contiguous() for k, v in encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
state["spiece_model"] = torch.frombuffer(bytearray(proto.getvalue()), dtype=torch.uint8)
save_file(state, text_path)
vae = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                               temperal_downsample=[False, True, True])
with torch.no_grad():
    for name, parameter in vae.named_parameters():  # ComfyUI's layers start uninitialised
        parameter.copy_(1 + 0.1 * torch.randn_like(parameter) if name.endswith("gamma") else 0.1 * torch.randn_like(parameter))
save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, vae_path)
'''

# In ComfyUI's venv: the same weights through ComfyUI's path (the CLIP object CLIPLoader builds for type wan, with
# CLIPTextEncode's tokenize + encode; comfy.sd.VAE as Load VAE builds it, with the Wan21 latent format) and through
# the core's (livephoto_core.wan.pipeline over a diffusers folder made from the same files).
WAN_CHAIN_CHECK = r'''
import importlib.util, json, sys
from pathlib import Path
sys.path.insert(0, ".")  # the ComfyUI work tree
repo, text_path, vae_path, folder = sys.argv[1:5]
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]
import numpy as np
import sentencepiece as spm
import torch
import comfy.latent_formats, comfy.sd
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import AutoTokenizer, PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

def load(name, path, package=False):
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=[str(Path(path).parent)] if package else None)
    module = importlib.util.module_from_spec(spec); sys.modules[name] = module; spec.loader.exec_module(module)
    return module
load("livephoto_pack", repo + "/__init__.py", package=True)
from livephoto_pack.livephoto_core.wan import pipeline
tiny = load("tiny_umt5_pack", repo + "/tests/comfyui_tiny_umt5/__init__.py", package=True)

folder, result = Path(folder), {}
state = load_file(text_path)
clip = tiny.tiny_wan_clip(state)
sp = spm.SentencePieceProcessor(model_proto=state.pop("spiece_model").numpy().tobytes())
# The vocabulary as a transformers tokenizer (the diffusers folder's tokenizer.json is umT5's sentencepiece model
# converted the same way): Unigram pieces and scores, "▁" word boundaries, </s> appended.
unigram = Tokenizer(Unigram([(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())], unk_id=2))
unigram.pre_tokenizer, unigram.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
unigram.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
PreTrainedTokenizerFast(tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
                        ).save_pretrained(folder / "tokenizer")
encoder = UMT5EncoderModel(UMT5Config(vocab_size=60, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                      relative_attention_num_buckets=32, feed_forward_proj="gated-gelu"))
encoder.load_state_dict(state, strict=False)  # encoder.embed_tokens is shared.weight, stored once
encoder.save_pretrained(folder / "text_encoder")
prompts = ["the kitten dances, swaying left and right", pipeline.DEFAULT_NEGATIVE.lower()]
ours = pipeline.encode_prompts(folder, prompts, torch.device("cpu"), torch.float32)
tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
result["text_same_token_ids"], result["text_shapes"], diffs = [], [], []
for prompt, embedding in zip(prompts, ours):
    tokens = clip.tokenize(prompt)
    ids = tokenizer(prompt).input_ids
    result["text_same_token_ids"].append([t for t, _ in tokens["umt5xxl"][0]][:len(ids)] == ids)
    cond = clip.encode_from_tokens_scheduled(tokens)[0][0]
    result["text_shapes"].append(list(cond.shape))
    diffs.append((cond - embedding).abs().max().item())
result["text_max_abs_diff"], result["text_scale"] = max(diffs), max(e.abs().max().item() for e in ours)

original = load_file(vae_path)
vae = comfy.sd.VAE(sd=dict(original))
ported = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                          temperal_downsample=[False, True, True]).eval()
ported.load_state_dict(convert_wan_vae_to_diffusers(dict(original)), strict=True)
latent_format = comfy.latent_formats.Wan21()
mean, std = pipeline.latent_normalisation(ported)
result["latent_format_max_abs_diff"] = max((latent_format.latents_mean - mean).abs().max().item(),
                                           (latent_format.latents_std - std).abs().max().item())
photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
ours = pipeline.encode_photo(ported, photo, 32, 48)
pixels = torch.from_numpy(np.asarray(photo.resize((48, 32), resample=Image.LANCZOS), dtype=np.float32) / 255)[None]
theirs = latent_format.process_in(vae.encode(pixels).float())
result["encode_shape"], result["encode_max_abs_diff"] = list(theirs.shape), (theirs - ours).abs().max().item()
result["encode_scale"] = ours.abs().max().item()
latents = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(1))
ours = pipeline.decode_frames(ported, latents)
theirs = vae.decode(latent_format.process_out(latents)).float()
result["decode_shape"] = list(theirs.shape)
result["decode_max_abs_diff"] = (theirs.reshape(ours.shape) - ours).abs().max().item()
result["decode_unclamped_fraction"] = ((ours > 0) & (ours < 1)).float().mean().item()
print("RESULT " + json.dumps(result))
'''


def tiny_wan_dit(base: Path, lora: Path) -> None:
    """A LivePhoto-Wan DiT of the released key layout (the fixture's key names) with Wan's 128-wide heads, so the
    loader needs no test setting: width 128 (one head), text width 32 (the tiny umT5's), 2 blocks, random weights;
    and a PEFT LoRA on two of its projections."""
    from safetensors.torch import load_file, save_file

    from livephoto_core.testing.tiny import randomize_
    from livephoto_core.wan.keys import model_state_dict
    from livephoto_core.wan.model import LivePhotoWan, transformer_config

    fixture = load_file(ROOT / "tests" / "fixtures" / "wan" / "tiny_base.safetensors")
    original_name = {converted: name for name, converted in zip(fixture, model_state_dict(dict.fromkeys(fixture)))}
    config = transformer_config(dim=128, num_heads=1, in_channels=16, out_channels=16, text_dim=32, freq_dim=256,
                                ffn_dim=256, num_layers=2, patch_size=(1, 2, 2))
    model = LivePhotoWan(config)
    randomize_(model, 3)
    with torch.no_grad():
        model.text_reweight.warmup.fill_(0.5)  # the re-weighting on, as in the released file
    save_file({original_name[k]: v.contiguous() for k, v in model.state_dict().items() if k in original_name}, str(base))
    generator = torch.Generator().manual_seed(4)
    save_file({f"blocks.{block}.self_attn.q.lora_{part}.default.weight": torch.randn(shape, generator=generator) * 0.05
               for block in (0, 1) for part, shape in (("A", (4, 128)), ("B", (128, 4)))}, str(lora))


@pytest.fixture(scope="module")
def wan_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan_files")
    files = {"text": folder / "umt5_tiny.safetensors", "vae": folder / "wan_vae_tiny.safetensors",
             "base": folder / "base.safetensors", "lora": folder / "lora.safetensors"}
    subprocess.run([str(HOME / "venv" / "bin" / "python"), "-c", WAN_TINY_FILES_SCRIPT, str(files["text"]),
                    str(files["vae"])], cwd=HOME / "ComfyUI", check=True)
    tiny_wan_dit(files["base"], files["lora"])
    return files


def test_comfyuis_umt5_and_wan_vae_compute_what_the_core_computes(wan_files, tmp_path):
    """The chain decision (docs/comfyui.md): on the same random weights, CLIPTextEncode's umT5 conditioning equals the
    core's prompt embeddings (512 tokens, zero past the end) and Load VAE's Wan VAE, with ComfyUI's Wan21 latent
    format, encodes and decodes as the core's diffusers AutoencoderKLWan with its normalisation."""
    started = time.monotonic()
    run = subprocess.run(
        [str(HOME / "venv" / "bin" / "python"), "-c", WAN_CHAIN_CHECK, str(ROOT), str(wan_files["text"]),
         str(wan_files["vae"]), str(tmp_path)], cwd=HOME / "ComfyUI", capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
    report("umT5 and Wan VAE comparison", time.monotonic() - started)
    print(f"[wan chain] {result}")
    assert result["text_same_token_ids"] == [True, True] and result["text_shapes"] == [[1, 512, 32]] * 2
    assert result["text_max_abs_diff"] < 1e-5 < result["text_scale"]
    assert result["latent_format_max_abs_diff"] == 0
    assert result["encode_shape"] == [1, 16, 1, 4, 6] and result["encode_max_abs_diff"] < 1e-5 < result["encode_scale"]
    assert result["decode_shape"] == [1, 9, 32, 48, 3] and result["decode_max_abs_diff"] < 1e-5
    assert result["decode_unclamped_fraction"] > 0.2  # the comparison is not of saturated pixels alone


def test_livephoto_wan_workflow_on_a_server(wan_files, inputs, tmp_path):
    """workflows/livephoto_wan.json on a headless server at toy size: Load CLIP swapped for the test pack's tiny
    umT5 loader (the same CLIP object), 5 frames of 32x32, 2 steps; then an SD-1.5 file picked as the base is
    refused when the prompt is queued, in one line."""
    models = tmp_path / "models"
    for name, target in {"diffusion_models/base.safetensors": wan_files["base"], "loras/lora.safetensors": wan_files["lora"],
                         "text_encoders/umt5_tiny.safetensors": wan_files["text"],
                         "vae/wan_2.1_vae.safetensors": wan_files["vae"]}.items():
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        (models / name).symlink_to(target)
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
               "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(32, 768)},
              str(models / "diffusion_models" / "v1-5-pruned-emaonly.safetensors"))
    workflow = api_workflow("livephoto_wan")
    workflow["2"] = {"class_type": "LoadTinyUMT5", "inputs": {"clip_name": "umt5_tiny.safetensors"}}
    workflow["7"]["inputs"].update(frames=5, width=32, height=32, steps=2)
    workflow["8"]["inputs"]["lossless"] = True
    rw = harness()
    run_dir = tmp_path / "run"
    server = rw.Server(str(HOME / "ComfyUI"), str(HOME / "venv" / "bin" / "python"), [str(ROOT), str(TINY_UMT5_PACK)],
                       str(models), [str(p) for p in inputs], [], str(run_dir), None)
    try:
        report("server start (Wan)", server.wait_ready(180))
        server.check_packs_loaded()
        comfy = Comfy(server, rw)
        entry, _ = comfy.run(workflow, "workflow livephoto_wan (tiny)")
        [video] = comfy.download(entry, "8")
        frames = frames_of(video)
        assert frames.shape == (5, 32, 32, 3) and frames.std() > 1
        assert webp_durations(video) == [40] * 5  # the sampler's fps output, 25, reached Save Animated WEBP
        settings = json.loads(texts(entry, "7")[0])
        assert settings["intensity"] == 4 and settings["lora"] == "lora.safetensors" and settings["lora_alpha"] == 1.2

        workflow["1"]["inputs"]["base"] = "v1-5-pruned-emaonly.safetensors"
        status, body = rw.http_json(server.base_url, "/prompt", {"prompt": workflow, "client_id": comfy.client_id})
        assert status == 400
        # ComfyUI attaches a validate_inputs message to each input it names (base and lora): one message.
        [details] = {error["details"].split(" - ", 1)[1] for error in body["node_errors"]["1"]["errors"]}
        assert "v1-5-pruned-emaonly.safetensors is an SD-1.5" in details and "\n" not in details
        assert "'base' needs the LivePhoto-Wan2.1 base.safetensors" in details
        comfy.events.close()
    finally:
        server.stop()
