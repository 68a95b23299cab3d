#!/usr/bin/env bash
# Start the assistant on the embedded default models, setting everything up on first run.
# Any arguments go to main.py (e.g. `scripts/run.sh ask --json < questions.txt`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python main.py prepare
exec .venv/bin/python main.py "$@"
