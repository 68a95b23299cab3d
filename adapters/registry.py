"""Adapter registry: sub-folders of the adapters dir with a manifest.json (pure JSON + filesystem, no torch)."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.cache import atomic_write_bytes
from assistant.engine import AdapterInfo
from assistant.errors import BadInputFile

MANIFEST = "manifest.json"
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
ROUTE_EXAMPLES = "route-examples.jsonl"  # an adapter's own labelled texts for the router
#: Adapter and route names: a plain folder name that cannot climb out of its store.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

#: Keys every manifest must carry, with the JSON type each must have.
REQUIRED_KEYS: dict[str, type] = {
    "name": str,
    "route": str,
    "base_model": str,
    "base_checksum": str,
    "created": str,
    "metrics": dict,
}


def read_manifest(folder: Path) -> dict[str, Any]:
    """The parsed manifest.json of an adapter folder; BadInputFile names the file (and line) when it is broken."""
    path = Path(folder) / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputFile(str(path), None, "missing", "every adapter folder needs a manifest.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputFile(str(path), None, f"unreadable: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputFile(str(path), exc.lineno, f"not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise BadInputFile(str(path), None, f"must hold a JSON object, not {type(data).__name__}")
    return data


def write_manifest(folder: Path, **fields: Any) -> Path:
    """Write `folder`/manifest.json atomically and return its path.

    `name` defaults to the folder name, `created` to now (UTC, ISO 8601), `metrics` to {};
    `route`, `base_model` and `base_checksum` must be given. Extra keys are kept as they are.
    The file is replaced as a whole: to update one key, pass `**read_manifest(folder)` plus it.
    """
    folder = Path(folder)
    manifest: dict[str, Any] = {
        "name": folder.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": {},
    }
    manifest.update(fields)
    problems = _key_problems(manifest)
    if manifest["name"] != folder.name:
        problems.append(f"name {manifest['name']!r} differs from the folder name {folder.name!r}")
    if problems:
        raise ValueError(f"{folder / MANIFEST}: " + "; ".join(problems))
    # Required keys first so a human reading the file sees the identity before the details.
    ordered = {k: manifest[k] for k in REQUIRED_KEYS} | manifest
    data = json.dumps(ordered, ensure_ascii=False, indent=2) + "\n"
    path = folder / MANIFEST
    atomic_write_bytes(path, data.encode("utf-8"))
    return path


def _key_problems(manifest: dict[str, Any]) -> list[str]:
    problems = []
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        problems.append(f"missing key(s): {', '.join(missing)}")
    for key, kind in REQUIRED_KEYS.items():
        if key in manifest and not isinstance(manifest[key], kind):
            problems.append(f"{key!r} must be a JSON {'object' if kind is dict else 'string'}")
    for key in ("name", "route"):
        if isinstance(manifest.get(key), str) and not manifest[key].strip():
            problems.append(f"{key!r} is empty")
    return problems


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weight files of an adapter folder (what `size_bytes` counts)."""
    return sorted(p for p in Path(folder).glob("*.safetensors") if p.is_file())


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is damaged (torn header, size not what its header declares), or None.

    Reads the header only: cheap enough for every listing, and it catches a truncated or padded file.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                return f"{path.name} is truncated (header of {header_len} bytes in a {size}-byte file)"
            header = json.loads(handle.read(header_len))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"{path.name} is unreadable: {exc}"
    if not isinstance(header, dict):
        return f"{path.name} has no tensor table"
    ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + header_len + max(ends, default=0)
    if size != expected:
        return f"{path.name} is damaged: {size} bytes where its header declares {expected}"
    return None


def _folder_problems(folder: Path) -> list[str]:
    problems = []
    config = folder / CONFIG
    if not config.is_file():
        problems.append(f"missing {CONFIG}")
    else:
        try:
            if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
                problems.append(f"{config}: must hold a JSON object")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{config}: not valid JSON ({exc})")
    if not (folder / WEIGHTS).is_file():
        # A pickled adapter_model.bin is refused on purpose: adapters are loaded as tensors only.
        pickled = (folder / "adapter_model.bin").exists()
        legacy = " (adapter_model.bin is not accepted: re-save with safetensors)" if pickled else ""
        problems.append(f"missing weights {WEIGHTS}{legacy}")
    else:
        damaged = safetensors_problem(folder / WEIGHTS)
        if damaged:
            problems.append(f"{damaged}; retrain it or restore the folder")
    return problems


def _adapter_folders(stores: Sequence[Path]) -> Iterable[Path]:
    """Candidate adapter folders, store by store; a name in an earlier store hides the same name later."""
    seen: set[str] = set()
    for store in stores:
        if not store.is_dir():
            continue
        for folder in sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (folder / MANIFEST).is_file() and folder.name not in seen:
                seen.add(folder.name)
                yield folder


def scan_adapters(stores: Path | Sequence[Path]) -> tuple[list[AdapterInfo], list[str]]:
    """Valid adapters in the given store(s), and one human-readable problem per skipped folder.

    Stores are searched in order and an adapter name found in an earlier store hides the same name
    in a later one (a user's retrained `caregiving` replaces the shipped one). Folders without a
    manifest.json are not adapters and are passed over silently; hidden folders (atomic-write
    temporaries) too. A store that does not exist holds no adapters; only when none exists is it a problem.
    """
    stores = [Path(stores)] if isinstance(stores, (str, Path)) else [Path(s) for s in stores]
    if not any(s.is_dir() for s in stores):
        return [], [f"{', '.join(map(str, stores))}: adapters folder does not exist"]
    found: list[AdapterInfo] = []
    problems: list[str] = []
    routes: dict[str, str] = {}
    for folder in _adapter_folders(stores):
        try:
            manifest = read_manifest(folder)
        except BadInputFile as exc:
            problems.append(f"adapter {folder.name!r} skipped: {exc}")
            continue
        issues = _key_problems(manifest)
        if isinstance(manifest.get("name"), str) and manifest["name"] != folder.name:
            issues.append(f"manifest name {manifest['name']!r} differs from the folder name {folder.name!r}")
        issues += _folder_problems(folder)
        if issues:
            problems.append(f"adapter {folder.name!r} skipped ({folder}): " + "; ".join(issues))
            continue
        route = manifest["route"]
        if route in routes:
            # Two adapters for one route would make routing ambiguous; the first by name wins.
            problems.append(
                f"adapter {folder.name!r} skipped: route {route!r} is already served by adapter {routes[route]!r}"
                " (remove or rename one of them)"
            )
            continue
        routes[route] = folder.name
        found.append(
            AdapterInfo(
                name=manifest["name"],
                route=route,
                path=str(folder),
                base_model=manifest["base_model"],
                created=manifest["created"],
                size_bytes=sum(p.stat().st_size for p in weight_files(folder)),
                metrics=dict(manifest["metrics"]),
            )
        )
    return found, problems


def install_target(store: Path, name: str) -> Path:
    """Where an adapter called `name` is installed in `store`, refusing anything that could touch code.

    The name must be a plain folder name, the store must hold no Python code, and an existing folder
    of that name must itself be an adapter (it has a manifest.json) or an unfinished training run
    (only checkpoints/): training replaces adapters, never anything else.
    """
    from assistant.errors import UsageError

    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"bad adapter name {name!r}", "use letters, digits, '-' and '_' (start with a letter or digit)"
        )
    store = Path(store)
    if (store / "__init__.py").exists() or any(store.glob("*.py")):
        raise UsageError(
            f"{store} holds Python code, not adapters",
            "install adapters into an adapter store (the default, or --adapters-dir DIR with only adapters in it)",
        )
    final = store / name
    unfinished = final.is_dir() and {p.name for p in final.iterdir()} <= {"checkpoints"}  # a run to --resume
    if final.exists() and not (final / MANIFEST).is_file() and not unfinished:
        raise UsageError(
            f"{final} exists and is not an adapter (no {MANIFEST})",
            "choose another --name, or move that folder away",
        )
    return final


def route_example_files(adapters: Iterable[AdapterInfo]) -> list[Path]:
    """Each adapter's route-examples.jsonl, for those that have one (the router fits on them)."""
    return [Path(a.path) / ROUTE_EXAMPLES for a in adapters if (Path(a.path) / ROUTE_EXAMPLES).is_file()]
