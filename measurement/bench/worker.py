"""Run a bench part in a fresh Python process: clean RSS figures, and no model that has served inference."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assistant.config import REPO_ROOT, Settings

PartFn = Callable[[Settings, dict[str, Any], Callable[[str], None]], dict[str, Any]]


def settings_to_json(settings: Settings) -> dict[str, Any]:
    """Settings as plain JSON (paths as strings)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = [str(v) for v in value]
        out[f.name] = value
    return out


def settings_from_json(data: dict[str, Any]) -> Settings:
    """The inverse of settings_to_json."""
    values = dict(data)
    values["adapter_dirs"] = tuple(Path(p) for p in values["adapter_dirs"])
    values["routing_data"] = tuple(Path(p) for p in values["routing_data"])
    return Settings(**values)


def run_part(
    module: str, settings: Settings, options: dict[str, Any], log: Callable[[str], None], timeout_s: float = 3600
) -> dict[str, Any]:
    """Run `python -m module` with settings+options on stdin; its last stdout line is the JSON result.

    Its stderr (progress) goes straight to ours. A failed part becomes {"skipped": why}, so one
    broken measurement does not lose the others.
    """
    payload = json.dumps({"settings": settings_to_json(settings), "options": options})
    try:
        done = subprocess.run(
            [sys.executable, "-m", module],
            input=payload,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"{module} took longer than {timeout_s:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        log(f"[bench] {module} failed with exit code {done.returncode} (its error is above)")
        return {"skipped": f"{module} failed (exit {done.returncode})"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def worker_main(part: PartFn) -> None:
    """Entry point of a part's module: read the payload, run, print the JSON result as the last line."""
    from adapters.offline import force_offline

    force_offline()
    payload = json.loads(sys.stdin.read())
    settings = settings_from_json(payload["settings"])

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = part(settings, payload.get("options", {}), log)
    print(json.dumps(result))
