"""`train identity`: export the identity pairs, or retrain installed adapters with the current identity mixed in.

Decision: identity is not a separate adapter. A separate `identity` route would compete with the
seed data, which labels 你是谁 / 介绍一下你自己 as caregiving, and the router would have to be
right every time. Instead every adapter learns the identity pairs next to its own data, and the
general route answers from the identity system prompt. Refreshing identity therefore means
retraining each adapter from the data file and recipe its manifest records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from adapters.registry import ROUTE_EXAMPLES, read_manifest, scan_adapters
from assistant.config import REPO_ROOT, Settings
from assistant.errors import UsageError
from data.sft import write_sft_file
from training.adapter_job import AdapterJob
from training.config import build_config
from training.identity_data import expand_identity, sample_identity
from training.router_refit import read_route_examples


def export_identity(path: Path, count: int | None = None, seed: int = 0) -> int:
    """Write the expanded identity pairs (all, or a balanced sample) as {"messages": [...]} lines."""
    pairs = expand_identity()
    if count is not None:
        pairs = sample_identity(pairs, count, seed)
    return write_sft_file(path, (p.as_sample() for p in pairs))


def identity_jobs(
    args: Any, settings: Settings, overrides: dict[str, Any], log: Callable[[str], None]
) -> Iterator[AdapterJob]:
    """One retraining job per target adapter, rebuilt from what its manifest recorded."""
    installed = {a.name: a for a in scan_adapters(settings.adapter_dirs)[0]}
    if args.into == "all":
        names = [n for n in sorted(installed) if "data" in read_manifest(Path(installed[n].path))]
        if not names:
            raise UsageError(
                f"no adapter in {', '.join(map(str, settings.adapter_dirs))} was trained by `train adapter`",
                "train one first (python main.py train adapter ...), or --export the identity pairs",
            )
    elif args.into not in installed:
        raise UsageError(f"no installed adapter named {args.into!r}", "see `python main.py adapters`")
    else:
        names = [args.into]
    for name in names:
        folder = Path(installed[name].path)
        manifest = read_manifest(folder)
        data = manifest.get("data") or {}
        if not isinstance(data, dict) or not data.get("file"):
            raise UsageError(f"adapter {name!r} does not record its training data", "retrain it with `train adapter`")
        data_file = Path(data["file"])
        data_file = data_file if data_file.is_absolute() else REPO_ROOT / data_file
        recorded = {k: v for k, v in (manifest.get("config") or {}).items() if k != "config_file"}
        if args.train_config:
            from training.config import load_train_config

            config = load_train_config(args.train_config)
        else:
            config = build_config(recorded, f"{folder}/manifest.json")
        config = config.with_overrides(**{**overrides, "identity": True})
        examples = folder / ROUTE_EXAMPLES
        texts = tuple(read_route_examples(examples, manifest["route"])) if examples.is_file() else None
        log(f"refreshing identity in adapter {name!r} (data {data_file}, route {manifest['route']!r})")
        yield AdapterJob(
            name=name,
            data_file=data_file,
            config=config,
            route=manifest["route"] if texts is not None else None,
            route_texts=texts,
            force=args.force,
            resume=args.resume,
            config_file=str((manifest.get("config") or {}).get("config_file", "")),
            progress=not args.no_progress,
        )
