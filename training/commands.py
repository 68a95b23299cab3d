"""`train adapter | identity | router`: argument parsing here, heavy imports only inside `run` (fast --help)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assistant.config import Settings
from assistant.errors import UsageError

COMMANDS = ("train",)


def log(message: str) -> None:
    """Progress and diagnostics go to stderr."""
    print(message, end="" if message.endswith(("\r", "\n")) else "\n", file=sys.stderr, flush=True)


def _recipe_options(parser: argparse.ArgumentParser) -> None:
    """--recipe is the training recipe (YAML); --config stays the app's settings file, as in every command."""
    parser.add_argument(
        "--recipe",
        dest="train_config",
        type=Path,
        metavar="FILE.yaml",
        help="training recipe (default: training/configs/default.yaml; see training/configs/)",
    )
    g = parser.add_argument_group("recipe overrides")
    g.add_argument("--epochs", type=float, help="passes over the training data")
    g.add_argument("--max-steps", type=int, help="cap on optimizer steps (0 = epochs decide)")
    g.add_argument("--lr", dest="learning_rate", type=float, help="peak learning rate")
    g.add_argument("--r", type=int, help="LoRA rank")
    g.add_argument("--batch-size", type=int, help="samples per forward pass")
    g.add_argument("--grad-accumulation", type=int, help="forward passes per optimizer step")
    g.add_argument("--max-length", type=int, help="tokens per sample")
    g.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any recipe key (repeatable), e.g. --set patience=5"
    )
    g.add_argument("--no-probe", action="store_true", help="skip the identity probe after training")
    g.add_argument("--samples", dest="samples_file", help="held-out JSONL answered base vs adapter into samples.md")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint (after a crash/Ctrl-C)"
    )
    parser.add_argument("--force", action="store_true", help="train even if routing accuracy drops > 2 points")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `train adapter|identity|router`."""
    train = subparsers.add_parser("train", help="train adapters (QLoRA), identity answers, the router")
    sub = train.add_subparsers(dest="train_command", metavar="WHAT", required=True)

    adapter = sub.add_parser(
        "adapter",
        help="fine-tune a LoRA adapter (QLoRA) from a JSONL file",
        description="Train adapters/NAME from JSON Lines ({'messages': [...]} or {'prompt', 'response'}), "
        "with identity pairs mixed in, validation + early stopping, checkpoints, a loss plot and a manifest.",
    )
    add_common(adapter)
    adapter.add_argument("--name", required=True, help="adapter name (folder adapters/NAME)")
    adapter.add_argument("--data", required=True, type=Path, help="training data, JSON Lines")
    adapter.add_argument("--route", help="teach the router this route (default: no routing; route = NAME)")
    adapter.add_argument("--route-examples", type=Path, help="texts for --route (default: the data's prompts)")
    adapter.add_argument("--no-identity", action="store_true", help="do not mix the identity pairs in")
    adapter.add_argument(
        "--knowledge",
        type=Path,
        metavar="DIR",
        help="knowledge entries (Markdown, see data/knowledge/README.md): grounded data lines get their passages "
        "from here, and the entries ship in the adapter's knowledge/ folder",
    )
    _recipe_options(adapter)

    identity = sub.add_parser(
        "identity",
        help="refresh identity answers in installed adapters (or export the identity pairs)",
        description="Identity facts live in data/identity.yaml and expand through data/identity_templates.yaml. "
        "Identity is mixed into every adapter's training; this command retrains the adapters named by --into "
        "(default: all trained by `train adapter`) from their recorded data and recipe with the current "
        "identity pairs. The general route gets identity from the system prompt, so needs no training.",
    )
    add_common(identity)
    identity.add_argument("--into", default="all", metavar="NAME", help="adapter to refresh, or 'all' (default)")
    identity.add_argument("--export", type=Path, metavar="FILE", help="write the identity pairs as JSONL and stop")
    identity.add_argument("--count", type=int, help="with --export: a balanced sample of N pairs (default all)")
    _recipe_options(identity)

    router = sub.add_parser("router", help="(re)fit the routing classifier and print its cross-validated accuracy")
    add_common(router)
    router.add_argument(
        "--data",
        action="append",
        type=Path,
        metavar="FILE",
        help="labelled file or folder (repeatable; default: the routing data + every adapter's route examples)",
    )


def _overrides(args: Any) -> dict[str, Any]:
    from training.config import parse_set

    out: dict[str, Any] = {
        k: getattr(args, k, None)
        for k in ("epochs", "max_steps", "learning_rate", "r", "batch_size", "grad_accumulation", "max_length")
    }
    if getattr(args, "samples_file", None):
        out["samples_file"] = args.samples_file
    if getattr(args, "no_probe", False):
        out["probe"] = False
    if getattr(args, "no_identity", False):
        out["identity"] = False
    out.update(parse_set(getattr(args, "set", None)))
    return out


def _recipe(args: Any) -> tuple[Any, str]:
    from training.adapter_job import relative_to_repo
    from training.config import DEFAULT_CONFIG, load_train_config

    path = args.train_config or DEFAULT_CONFIG
    return load_train_config(path).with_overrides(**_overrides(args)), relative_to_repo(path)


def run_train_adapter(args: Any, settings: Settings) -> int:
    from training.adapter_job import AdapterJob

    config, config_file = _recipe(args)
    if args.route_examples and not args.route:
        raise UsageError("--route-examples needs --route")
    job = AdapterJob(
        name=args.name,
        data_file=args.data,
        config=config,
        route=args.route,
        route_examples=args.route_examples,
        knowledge=args.knowledge,
        force=args.force,
        resume=args.resume,
        config_file=config_file,
        progress=not args.no_progress,
    )
    return _run_job(job, settings)


def _run_job(job: Any, settings: Settings) -> int:
    from training.adapter_job import run_adapter_job
    from training.distributed import is_main
    from training.sft import Interrupted

    try:
        manifest = run_adapter_job(job, settings, log)
    except Interrupted:
        return 130
    if not is_main():  # under torchrun rank 0 reports the job
        return 0
    probe = manifest.get("metrics", {}).get("identity_probe", {})
    val = manifest.get("val_loss", {})
    log(
        f"adapter {manifest['name']!r} (route {manifest['route']!r}): validation loss base {val.get('base')} -> "
        f"adapter {val.get('adapter')}; identity probe {probe or 'skipped'}"
    )
    return 0


def run_train_identity(args: Any, settings: Settings) -> int:
    from training.identity_commands import export_identity, identity_jobs

    if args.export:
        count = export_identity(args.export, args.count)
        log(f"wrote {count} identity pairs to {args.export}")
        return 0
    status = 0
    for job in identity_jobs(args, settings, _overrides(args), log):
        status = max(status, _run_job(job, settings))
        if status == 130:
            break
    return status


def run_train_router(args: Any, settings: Settings) -> int:
    from adapters.wiring import build_encoder, routing_files
    from data.labels import load_labelled
    from training.router_refit import refit_and_store

    files = args.data or routing_files(settings)
    examples = load_labelled(files)
    if len({e.label for e in examples}) < 2:
        raise UsageError("the router needs examples of at least two routes", "add labelled files with --data")
    log(f"fitting the router on {len(examples)} examples from {len(files)} file(s)/folder(s)")
    result, folder = refit_and_store(build_encoder(settings), files, log, settings.router_head)
    print(f"router: {len(examples)} examples, routes {', '.join(result.cv_report.labels)}")
    print("cross-validated (5-fold, abstention thresholds included):")
    print(result.cv_report.format())
    log(f"stored in {folder}")
    if args.data:
        log(
            "note: the app fits its router on its configured routing data plus the adapters' route examples; "
            "this router is used only if --data names exactly those files"
        )
    return 0


def run(args: Any, settings: Settings) -> int:
    """Dispatch `train WHAT`."""
    handlers = {"adapter": run_train_adapter, "identity": run_train_identity, "router": run_train_router}
    handler = handlers.get(args.train_command)
    if handler is None:
        raise UsageError(f"unknown train command {args.train_command!r}")
    return handler(args, settings)
