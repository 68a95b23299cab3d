"""The architecture's one-way dependencies: rooms import downwards only; the core imports neither torch nor Textual."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.import_graph import back_edges, room_of

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
    "adapters.wiring",
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


def test_imports_point_one_way_between_rooms() -> None:
    edges = back_edges(REPO)
    assert not edges, "imports against the room rule (see README, Layout):\n" + "\n".join(map(str, edges))


def test_the_scan_catches_a_planted_back_edge(tmp_path: Path) -> None:
    """The same scan on a copy of the tree with one function-local import of main.py planted in the core."""
    for room in ("main.py", "data", "assistant", "adapters", "training", "measurement"):
        source = REPO / room
        if source.is_dir():
            shutil.copytree(source, tmp_path / room, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / room)
    assert back_edges(tmp_path) == []
    victim = tmp_path / "assistant" / "router.py"
    victim.write_text(victim.read_text(encoding="utf-8") + "\n\ndef _x():\n    from main import log\n", "utf-8")
    model_side = tmp_path / "adapters" / "registry.py"
    model_side.write_text(model_side.read_text(encoding="utf-8") + "\nfrom measurement import eval_adapter\n", "utf-8")

    found = back_edges(tmp_path)

    assert {(e.importer, e.imported) for e in found} == {
        ("assistant.router", "main"),
        ("assistant.router", "main.log"),
        ("adapters.registry", "measurement"),
        ("adapters.registry", "measurement.eval_adapter"),
    }
    assert all(e.line > 1 for e in found)


def test_room_of_tells_the_tui_from_the_core() -> None:
    assert room_of("assistant.tui.app") == "assistant.tui"
    assert room_of("assistant.session") == "assistant"
    assert room_of("numpy") is None and room_of("main") == "main"


def test_help_is_fast_and_loads_no_model() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "main.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "ask" in result.stdout and "route" in result.stdout
    assert "torch" not in {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
