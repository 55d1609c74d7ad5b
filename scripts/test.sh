#!/usr/bin/env bash
# The test suite as CI runs it (the README's test command; .ci/run calls this script).
#
# Installs the package with its test extras, then runs every test not marked slow. Where ComfyUI's
# source is at hand (COMFYUI_SOURCE, default ../shared/comfyui/ComfyUI-0.33.0-src.tar.gz beside the
# repository, as in CI) it also builds a CPU ComfyUI with the pack's requirements (the harness'
# setup.sh, no fetch), installs Chromium, exiftool and comfy-cli, and runs the real-server, browser
# and comfy-cli tests (marker `comfyui`), none of which may then skip. Without the source those
# tests skip, and the run says so.
set -euo pipefail
cd "$(dirname "$0")/.."

pip install torch==2.13.0 -e ".[test]"

source_tarball="${COMFYUI_SOURCE:-../shared/comfyui/ComfyUI-0.33.0-src.tar.gz}"
markers="not slow"
if [ -f "$source_tarball" ]; then
    harness="$(cd "$(dirname "$source_tarball")" && pwd)"
    missing=()
    command -v exiftool >/dev/null || missing+=(libimage-exiftool-perl)
    command -v chromium >/dev/null || missing+=(chromium)
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    export COMFYUI_HOME="${COMFYUI_HOME:-$(cd .. && pwd)/.comfyui}"
    export COMFYUI_HARNESS="$harness"
    bash "$harness/setup.sh" "$source_tarball" -r requirements.txt
    comfy_cli="$(cd .. && pwd)/.comfycli"
    [ -x "$comfy_cli/bin/python" ] || python3 -m venv "$comfy_cli"
    "$comfy_cli/bin/pip" install -q comfy-cli
    export COMFY_CLI_PYTHON="$comfy_cli/bin/python"
    export LIVEPHOTO_REQUIRE_COMFYUI=1  # every comfyui test must run: a skip fails
    markers="not slow or comfyui"
elif [ -n "${CI:-}" ] && [ "${CI}" != "false" ]; then
    echo "CI: ComfyUI's source $source_tarball is missing; the real-server tests cannot run" >&2
    exit 1
else
    echo "ComfyUI's source ($source_tarball) is not here: the real-ComfyUI tests will skip" >&2
fi
python -m pytest -m "$markers"

# The dependency floors: a second environment with every lower bound of pyproject's dependencies pinned
# exactly (read from pyproject, so the two cannot drift; torch stays 2.13.0), running the tests that
# exercise diffusers, transformers, accelerate, PyAV and Pillow. Built once in ../.floorenv, then reused
# (pip only checks the pins). A failure here fails the run.
floor_env="${LIVEPHOTO_FLOOR_ENV:-$(cd .. && pwd)/.floorenv}"
[ -x "$floor_env/bin/python" ] || python3 -m venv "$floor_env"
mapfile -t floor_pins < <(python - <<'PY'
import re, tomllib
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+).*", requirement).groups()
    print("torch==2.13.0" if name == "torch" else f"{name}=={floor}")
PY
)
[ ${#floor_pins[@]} -gt 0 ] || { echo "cannot read the dependency floors from pyproject.toml" >&2; exit 1; }
echo "dependency floors ($floor_env): ${floor_pins[*]}" >&2
"$floor_env/bin/pip" install -q --disable-pip-version-check "${floor_pins[@]}" -e ".[test]"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$floor_env/bin/python" -m pytest -q -p no:cacheprovider -m "not slow and not comfyui" \
    tests/test_loading_assemble.py tests/test_loading_detect.py tests/test_loading_dinov2.py \
    tests/test_loading_files.py tests/test_loading_motion_module.py tests/test_loading_sd15.py \
    tests/test_loading_tokenizer.py tests/test_word_tokenizer.py tests/test_model.py tests/test_sampling.py \
    tests/test_pipeline.py tests/test_demo_model.py tests/test_training.py tests/test_video.py \
    tests/test_images.py tests/test_phone.py
