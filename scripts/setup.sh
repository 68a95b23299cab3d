#!/usr/bin/env bash
# Create .venv/ at the repo root and install the pinned dependencies; idempotent and unattended.
# torch is installed first, alone, pinned: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
want_dev=${1:-}
stamp=.venv/.installed
hash=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)-${want_dev}
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && grep -qx "$hash" "$stamp" 2>/dev/null; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "setup: installing torch 2.13.0 (CPU build on machines without CUDA wheels cached)" >&2
.venv/bin/pip install --progress-bar off -q "torch==2.13.0"
echo "setup: installing pinned dependencies" >&2
if [ "$want_dev" = dev ]; then
  .venv/bin/pip install --progress-bar off -q -r requirements.txt -r requirements-dev.txt
else
  .venv/bin/pip install --progress-bar off -q -r requirements.txt
fi
echo "$hash" > "$stamp"
