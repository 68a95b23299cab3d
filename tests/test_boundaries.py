"""The architecture's one-way dependencies: the core imports neither torch nor Textual."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

CORE_MODULES = [
    "assistant.config",
    "assistant.errors",
    "assistant.engine",
    "assistant.encoders",
    "assistant.router",
    "assistant.router_fit",
    "assistant.session",
    "assistant.scripting",
    "assistant.cli",
    "assistant.metrics",
    "data.labels",
    "data.identity",
    "adapters.registry",
]


def test_core_does_not_import_torch_or_textual() -> None:
    code = (
        "import sys, importlib\n"
        f"for m in {CORE_MODULES!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in ('torch', 'textual', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_data_and_adapters_never_import_the_assistant_shells() -> None:
    for folder in ("data", "adapters", "training"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "assistant.tui" not in text and "assistant.session" not in text, path


def test_help_is_fast_and_loads_no_model() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "main.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "ask" in result.stdout and "route" in result.stdout
    assert "torch" not in {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
