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
