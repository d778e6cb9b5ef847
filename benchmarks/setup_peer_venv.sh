#!/usr/bin/env bash
# A separate venv for diffusers' examples/textual_inversion/textual_inversion.py, which
# benchmarks/learning.py runs beside our trainer. That script imports torchvision (for one
# RandomHorizontalFlip), and PyPI's torchvision does not import beside the torch 2.13.0 CPU build
# our .venv uses, so the peer gets torch 2.14.1 + torchvision 0.29.1 (which pip takes from this
# machine's disk) and the same diffusers / transformers / accelerate as ours. tensorboard because
# the script's default --report_to is tensorboard.
#   bash benchmarks/setup_peer_venv.sh [VENV]   (default .peer-venv)
set -euo pipefail
venv="${1:-.peer-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pins=$(.venv/bin/python -m pip freeze 2>/dev/null | grep -i -E '^(diffusers|transformers|accelerate|safetensors|huggingface[-_]hub|tokenizers)==' || true)
"$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install -q ${pins:-diffusers transformers accelerate safetensors} tensorboard packaging tqdm pillow numpy
"$venv/bin/python" -c "import torchvision, diffusers, transformers, accelerate; print('peer venv ready:', diffusers.__version__, transformers.__version__)"
