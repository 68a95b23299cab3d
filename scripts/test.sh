#!/usr/bin/env bash
# Set up the venv, lint and type-check, then run the tests (slow real-model tests too unless SKIP_SLOW=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
echo "== ruff" >&2
.venv/bin/ruff check .
echo "== mypy" >&2
.venv/bin/mypy assistant adapters training data measurement main.py
echo "== fast tests" >&2
.venv/bin/python -m pytest -m "not slow" -q "$@"
if [ "${SKIP_SLOW:-0}" != 1 ]; then
  echo "== preparing the bundled models for the slow tests" >&2
  .venv/bin/python main.py prepare
  if ! command -v tmux >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "== installing tmux for the terminal test" >&2
    (apt-get update -qq && apt-get install -y -qq tmux) >/dev/null 2>&1 || echo "tmux install failed; its test will skip" >&2
  fi
  echo "== slow tests (real bundled models)" >&2
  .venv/bin/python -m pytest -m slow -q "$@"
fi
