"""The project's import graph, read from the source with `ast`, and the one-way rule between its rooms."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

#: Each room and the rooms it may import (itself included). Lower rooms never import higher ones;
#: only main.py wires the shells (TUI, HTTP server) in, and nothing imports main.py.
ALLOWED: dict[str, frozenset[str]] = {
    "data": frozenset({"data"}),
    "assistant": frozenset({"assistant", "data"}),
    "assistant.tui": frozenset({"assistant.tui", "assistant", "data"}),
    "assistant.server": frozenset({"assistant.server", "assistant", "data"}),
    "adapters": frozenset({"adapters", "assistant", "data"}),
    "training": frozenset({"training", "adapters", "assistant", "data"}),
    "measurement": frozenset({"measurement", "training", "adapters", "assistant", "data"}),
    "main": frozenset(
        {"main", "measurement", "training", "adapters", "assistant.tui", "assistant.server", "assistant", "data"}
    ),
}
ROOMS = ("data", "assistant", "adapters", "training", "measurement")


def room_of(module: str) -> str | None:
    """The room a dotted module name belongs to (None: not ours: stdlib or third party)."""
    if module == "main" or module.startswith("main."):
        return "main"
    for shell in ("assistant.tui", "assistant.server"):
        if module == shell or module.startswith(shell + "."):
            return shell
    top = module.split(".")[0]
    return top if top in ROOMS else None


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, at any depth (function-local imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(root, path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from pkg import mod` imports pkg.mod when mod is a module: count it under its own room.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


@dataclass(frozen=True)
class BackEdge:
    """An import that points the wrong way."""

    file: str
    line: int
    importer: str
    imported: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.importer} imports {self.imported}"


def back_edges(root: Path) -> list[BackEdge]:
    """Every import under `root` (tests and the venv excepted) that the room rule forbids."""
    bad: list[BackEdge] = []
    files = [root / "main.py", *(p for r in ROOMS for p in sorted((root / r).rglob("*.py")))]
    for path in files:
        if not path.is_file():
            continue
        importer = module_name(root, path)
        own = room_of(importer)
        if own is None:
            continue
        for line, target in imports_of(root, path):
            theirs = room_of(target)
            if theirs is not None and theirs not in ALLOWED[own]:
                bad.append(BackEdge(str(path.relative_to(root)), line, importer, target))
    return bad
