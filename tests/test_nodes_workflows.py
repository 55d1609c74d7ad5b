"""The shipped workflows: each UI-format file in workflows/ and its API-format twin in tests/workflows/
describe the same graph.

Without ComfyUI this compares them structurally: node ids and types, every link, and every widget
value by name (the UI file lists its widget inputs in order; the values follow, plus the
"control after generate" value after a seed). Our own nodes' widget order must also match their
schemas. With a real ComfyUI, test_comfyui_server.py converts each UI file with comfy-cli's
converter against the server's /object_info and compares the result with the twin exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from comfy_stubs import stubbed_comfyui

ROOT = Path(__file__).resolve().parent.parent
UI_DIR, API_DIR = ROOT / "workflows", ROOT / "tests" / "workflows"
UI_ONLY_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # the frontend never sends these
UI_ONLY_WIDGETS = {"upload"}  # LoadImage's / LoadVideo's upload button
CONTROL_AFTER_GENERATE = {"fixed", "increment", "decrement", "randomize"}
# ComfyUI's own widgets with a "control after generate" value in the UI file (the stand-ins have no
# core nodes to read it from): PrimitiveInt's value (comfy_extras/nodes_primitive.py).
CORE_CONTROLLED = {("PrimitiveInt", "value")}
NAMES = sorted(path.stem for path in UI_DIR.glob("*.json"))


def api_from_ui(ui: dict, controlled: set[tuple[str, str]]) -> dict:
    """What the UI file says the API prompt is: {id: (class_type, inputs)}."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in UI_ONLY_TYPES or node.get("mode", 0) in (2, 4):
            continue
        inputs = {}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                link_id, origin, origin_slot, target, target_slot, _ = links[socket["link"]]
                assert target == node["id"] and node["inputs"][target_slot]["name"] == socket["name"], link_id
                inputs[socket["name"]] = [str(origin), origin_slot]
        values = list(node.get("widgets_values") or [])
        for name in [s["name"] for s in node.get("inputs", []) if "widget" in s]:
            value = values.pop(0)
            if (node["type"], name) in controlled:
                assert values.pop(0) in CONTROL_AFTER_GENERATE
            if name not in UI_ONLY_WIDGETS and name not in inputs:
                inputs[name] = value
        assert not values, f"node {node['id']} has widget values left over: {values}"
        prompt[str(node["id"])] = (node["type"], inputs)
    return prompt


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    with stubbed_comfyui(tmp_path_factory.mktemp("models")) as stubs:
        yield {node_id: node.define_schema() for node_id, node in stubs.nodes.items()}


def test_every_ui_workflow_has_an_api_twin_and_back():
    assert NAMES == ["animate", "animate_smooth", "intensity_sweep", "livephoto_wan", "long_loop", "measure_video",
                     "text_weights"]
    assert sorted(path.name.removesuffix("_api.json") for path in API_DIR.glob("*_api.json")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_workflows_describe_the_same_graph(name, schemas):
    ui = json.loads((UI_DIR / f"{name}.json").read_text())
    api = json.loads((API_DIR / f"{name}_api.json").read_text())
    controlled = CORE_CONTROLLED | {
        (node_id, socket.id) for node_id, schema in schemas.items() for socket in schema.inputs
        if socket.options.get("control_after_generate")
    }
    expected = {node_id: (node["class_type"], node["inputs"]) for node_id, node in api.items()}
    assert api_from_ui(ui, controlled) == expected


@pytest.mark.parametrize("name", NAMES)
def test_our_nodes_in_the_ui_files_list_their_widgets_in_schema_order(name, schemas):
    ui = json.loads((UI_DIR / f"{name}.json").read_text())
    for node in ui["nodes"]:
        schema = schemas.get(node["type"])
        if schema is None:
            continue
        widgets = [socket.id for socket in schema.inputs if getattr(socket, "is_widget", False)]
        assert [s["name"] for s in node["inputs"] if "widget" in s] == widgets, node["type"]
