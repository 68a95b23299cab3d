"""The `eval` command group (routing, adapter, identity); torch-free at import so `--help` stays fast."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assistant.config import Settings
from assistant.errors import UsageError
from measurement.eval_compare import register_compare, run_compare
from measurement.eval_identity import register_identity_eval, run_identity_eval
from measurement.eval_safety import register_safety_eval, run_safety_eval

COMMANDS = ("eval",)


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `eval routing|adapter|identity|safety`."""
    ev = subparsers.add_parser("eval", help="measure routing, an adapter against the base, identity and safety answers")
    sub = ev.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    routing = sub.add_parser("routing", help="routing quality on a labelled JSONL file")
    add_common(routing)
    routing.add_argument("file", type=Path, help='JSON Lines {"text": ..., "label": ...} (or seed-style `LABEL TEXT`)')
    routing.add_argument("--json", action="store_true", help="one JSON object on stdout")
    routing.add_argument("--show-errors", action="store_true", help="list the misrouted queries with their scores")

    adapter = sub.add_parser("adapter", help="validation loss/perplexity of an adapter vs the base on held-out data")
    add_common(adapter)
    adapter.add_argument("name", help="an installed adapter (see `python main.py adapters`)")
    adapter.add_argument(
        "--data",
        type=Path,
        required=True,
        help='held-out JSONL: {"prompt", "response"} or {"messages": [...]} per line',
    )
    adapter.add_argument(
        "--samples", type=int, default=3, help="answers shown side by side, adapter vs base (default 3)"
    )
    adapter.add_argument("--max-length", type=int, default=512, help="tokens per example for the loss (default 512)")
    adapter.add_argument("--limit", type=int, default=64, help="score at most N examples (default 64; 0 = all)")
    adapter.add_argument("--max-new-tokens", type=int, help="longest sample answer (default 128)")
    adapter.add_argument("--system", help="system prompt (default: the assistant's identity)")
    adapter.add_argument(
        "--knowledge",
        type=Path,
        metavar="DIR",
        help="knowledge entries for grounded data lines (as `train adapter --knowledge`)",
    )
    adapter.add_argument("--json", action="store_true", help="one JSON object on stdout")

    register_identity_eval(sub, add_common)
    register_safety_eval(sub, add_common)
    register_compare(sub, add_common)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_routing(args: Any, settings: Settings) -> int:
    """`eval routing FILE`: route every labelled line and score it."""
    from adapters.wiring import build_router
    from data.labels import load_labelled_file
    from measurement.eval_routing import evaluate_routing

    examples = load_labelled_file(args.file)  # BadInputFile (exit 2, file:line) on a malformed line
    if not examples:
        raise UsageError(f"{args.file}: no labelled examples", 'expected JSON lines {"text": ..., "label": ...}')
    router = build_router(settings)
    result = evaluate_routing(router, examples)
    if args.json:
        print(json.dumps({"file": str(args.file), **result.as_dict(args.show_errors)}, ensure_ascii=False))
    else:
        print(f"routing evaluation of {args.file} ({result.queries} queries)\n")
        print(result.format(args.show_errors))
    return 0


def run(args: Any, settings: Settings) -> int:
    """Dispatch `eval WHAT`."""
    what = args.eval_command
    if what == "routing":
        return run_routing(args, settings)
    if what == "adapter":
        from measurement.eval_adapter import run_adapter_eval  # torch: imported only when asked for

        return run_adapter_eval(args, settings, _log)
    if what == "identity":
        return run_identity_eval(args, settings)
    if what == "safety":
        return run_safety_eval(args, settings)
    if what == "compare":
        return run_compare(args, settings)
    raise UsageError(f"unknown eval command {what!r}")
