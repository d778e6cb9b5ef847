#!/usr/bin/env bash
# Shared by webui.sh and test.sh: create or reuse .venv, install torch and the project.
# Re-running is fast: a stamp file records the pyproject.toml hash that was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "ti-studio: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.ti-studio-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "ti-studio: installing torch (CUDA build)" >&2
        "${pip[@]}" torch
    else
        # A bare 'torch' requirement would pull a ~3 GB CUDA build; this pin takes the CPU build.
        echo "ti-studio: installing torch==2.13.0 (CPU build)" >&2
        "${pip[@]}" torch==2.13.0
    fi
fi
echo "ti-studio: installing the project and its test tools" >&2
"${pip[@]}" -e ".[test]"
echo "$want" > "$stamp"
