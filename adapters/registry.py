"""Adapter registry: sub-folders of the adapters dir with a manifest.json (pure JSON + filesystem, no torch)."""

from __future__ import annotations

import json
from collections.abc import Iterable
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
    return problems


def scan_adapters(adapters_dir: Path) -> tuple[list[AdapterInfo], list[str]]:
    """Valid adapters under `adapters_dir` (sorted by name) and one human-readable problem per skipped folder.

    Folders without a manifest.json (source packages, unfinished training runs) are not adapters
    and are passed over silently; hidden folders (atomic-write temporaries) too.
    """
    adapters_dir = Path(adapters_dir)
    if not adapters_dir.is_dir():
        return [], [f"{adapters_dir}: adapters folder does not exist"]
    found: list[AdapterInfo] = []
    problems: list[str] = []
    routes: dict[str, str] = {}
    for folder in sorted(p for p in adapters_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / MANIFEST).is_file():
            continue
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


def route_example_files(adapters: Iterable[AdapterInfo]) -> list[Path]:
    """Each adapter's route-examples.jsonl, for those that have one (the router fits on them)."""
    return [Path(a.path) / ROUTE_EXAMPLES for a in adapters if (Path(a.path) / ROUTE_EXAMPLES).is_file()]
