"""No code runs from weight files, and nothing reaches the network."""

import ast
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    path
    for folder in ("livephoto_core", "nodes", "scripts", "benchmarks")
    for path in sorted((ROOT / folder).rglob("*.py"))
] + [ROOT / "__init__.py"]


def risky_calls(tree: ast.AST) -> list[str]:
    """torch.load without weights_only=True, any pickle import, builtin eval/exec, remote code."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(name and name.split(".")[0] in ("pickle", "cPickle", "dill", "marshal") for name in names):
                found.append(f"line {node.lineno}: imports a pickle module")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("eval", "exec", "__import__"):
            found.append(f"line {node.lineno}: {func.id}()")
        name = ast.unparse(func)
        keywords = {k.arg: k.value for k in node.keywords}
        if name.endswith("torch.load"):
            value = keywords.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                found.append(f"line {node.lineno}: {name} without weights_only=True")
        remote = keywords.get("trust_remote_code")
        if remote is not None and not (isinstance(remote, ast.Constant) and remote.value is False):
            found.append(f"line {node.lineno}: trust_remote_code")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_loading_in_the_code(path):
    assert risky_calls(ast.parse(path.read_text(), str(path))) == []


def test_the_scan_catches_what_it_looks_for():
    bad = "import pickle\nimport torch\ntorch.load('x')\ntorch.load('y', weights_only=False)\neval('1')\n" \
          "m.from_pretrained('z', trust_remote_code=True)\nexec('pass')\n"
    assert len(risky_calls(ast.parse(bad))) == 6
    good = "import torch\ntorch.load('x', weights_only=True)\nmodel.eval()\n"
    assert risky_calls(ast.parse(good)) == []


def test_pipeline_runs_with_the_network_blocked(tiny_files, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)

    from livephoto_core.loading.assemble import load_pipeline

    pipe = load_pipeline(tiny_files / "livephoto.safetensors", base=tiny_files / "base.safetensors",
                         dinov2=tiny_files / "dinov2", tokenizer=tiny_files / "tokenizer")
    photo = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    assert pipe(photo, "the red circle moves left", num_frames=2, num_inference_steps=1, seed=0).frames.shape[0] == 2
