#!/usr/bin/env bash
# Start the ti-studio web UI on 127.0.0.1:7860 (flags pass through: --model X --port N --listen).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup-venv.sh
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python app.py "$@"
