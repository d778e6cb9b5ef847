#!/usr/bin/env bash
# Run the whole test suite (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup-venv.sh
bash scripts/ensure-chromium.sh
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
