"""The harness' browser_check.py, opening each workflow the way the template browser does.

browser_check loads a workflow file's JSON into ComfyUI's frontend with app.loadGraphData(). Here
the page fetches that JSON itself, from the pack's template route (GET /api/workflow_templates to
find the pack, then /api/workflow_templates/<pack>/<name>.json, as the frontend's template browser
does before its own app.loadGraphData call); the file only tells browser_check which node types to
expect. Same command line as browser_check.py; run with the harness folder on PYTHONPATH.

Beyond browser_check's checks, a template fails when the frontend outlines a node in red after loading it
(`node.has_errors`): frontend 1.49 does that, with no dialog, to a loader whose file is not in the server's
models folder and to Load Image without its image, so a template whose files are not all in place fails here.

Environment: LIVEPHOTO_MODELS_DIR (a models folder for the server, so that the frontend finds the
files the workflows name and flags nothing), LIVEPHOTO_INPUTS (files for its input folder, separated
by os.pathsep), LIVEPHOTO_THUMBNAILS (a folder: each screenshot is also written there as
NAME.jpg, the template browser's thumbnail; `workflows` refreshes the pack's own) and LIVEPHOTO_SAVED
(a folder: each opened template is saved there as the frontend's Save writes it, NAME.json, then that
file is opened again and what the frontend's Queue button would send for it is written as
NAME_api.json).
"""

import json
import os
import sys
from pathlib import Path

import browser_check
import run_workflow
from PIL import Image

THUMBNAIL_WIDTH = 640

FETCH_TEMPLATE = """const data = await (async () => {
  const name = %s;
  const index = await (await fetch(new URL('api/workflow_templates', document.baseURI))).json();
  const pack = Object.keys(index).find((key) => index[key].includes(name));
  if (!pack) throw new Error('no pack lists the template ' + name + ': ' + JSON.stringify(index));
  const response = await fetch(new URL('api/workflow_templates/' + pack + '/' + name + '.json', document.baseURI));
  if (!response.ok) throw new Error('the template route answered ' + response.status + ' for ' + name);
  return response.json();
})();"""

# The frontend's Save writes JSON.stringify(changeTracker.activeState), a copy of app.graph.serialize()
# (ChangeTracker.captureCanvasState); Queue sends app.graphToPrompt().output. The saved copy is opened
# again the way a user opens a saved file, so NAME_api.json is what the saved workflow queues.
SAVE_AND_REOPEN = """(async () => {
  const saved = JSON.parse(JSON.stringify(app.graph.serialize()));
  await app.loadGraphData(JSON.parse(JSON.stringify(saved)), true, true, %s);
  const prompt = await app.graphToPrompt();
  return { saved, prompt: prompt.output };
})()"""

# The nodes the frontend outlines in red: a model or input file the node names is not on the server.
OUTLINED = "app.graph.nodes.filter((node) => node.has_errors).map((node) => String(node.id) + ' ' + node.type)"

_load_file = browser_check.load_script
_check_one = browser_check.check_one


def load_from_template_route(workflow, name, types):
    script = _load_file(workflow, name, types)
    embedded = "const data = %s;" % json.dumps(workflow)
    if embedded not in script:
        raise SystemExit("browser_check.load_script changed: update tests/browser_templates.py")
    return script.replace(embedded, FETCH_TEMPLATE % json.dumps(Path(name).stem))


def check_and_save(page, path, workflow, out_dir, taken):
    """browser_check's check of one template; then, with LIVEPHOTO_SAVED set, its save and reopening."""
    report = _check_one(page, path, workflow, out_dir, taken)
    report["outlined"] = page.evaluate(OUTLINED)
    if report["outlined"]:
        problem = "node(s) outlined as missing a file: " + ", ".join(report["outlined"])
        report["problems"].append(problem)
        report["ok"] = False
        browser_check.log(f"{browser_check.show(os.path.abspath(path))}: {problem}")
    folder = os.environ.get("LIVEPHOTO_SAVED")
    if folder and report["ok"]:
        name = Path(path).stem
        result = page.evaluate(SAVE_AND_REOPEN % json.dumps(f"{name} (saved).json"), timeout=120)
        (Path(folder) / f"{name}.json").write_text(json.dumps(result["saved"], indent=1))
        (Path(folder) / f"{name}_api.json").write_text(json.dumps(result["prompt"], indent=1))
    return report


class ServerWithModels(run_workflow.Server):
    """browser_check's server, given the models folder and inputs named in the environment."""

    def __init__(self, comfyui_dir, python, packs, models_dir, inputs, *rest):
        models_dir = models_dir or os.environ.get("LIVEPHOTO_MODELS_DIR")
        inputs = list(inputs) + [p for p in os.environ.get("LIVEPHOTO_INPUTS", "").split(os.pathsep) if p]
        super().__init__(comfyui_dir, python, packs, models_dir, inputs, *rest)


def write_thumbnails(report_path: Path, folder: Path) -> None:
    for loaded in json.loads(report_path.read_text())["workflows"]:
        with Image.open(loaded["screenshot"]) as screenshot:
            height = round(screenshot.height * THUMBNAIL_WIDTH / screenshot.width)
            thumbnail = screenshot.convert("RGB").resize((THUMBNAIL_WIDTH, height), Image.LANCZOS)
        thumbnail.save(folder / (Path(loaded["workflow"]).stem + ".jpg"), quality=85)


browser_check.load_script = load_from_template_route
browser_check.check_one = check_and_save
run_workflow.Server = ServerWithModels

if __name__ == "__main__":
    code = browser_check.main()
    thumbnails = os.environ.get("LIVEPHOTO_THUMBNAILS")
    if code == 0 and thumbnails:
        out = Path(sys.argv[sys.argv.index("--out") + 1])
        write_thumbnails(out / "report.json", Path(thumbnails))
    sys.exit(code)
