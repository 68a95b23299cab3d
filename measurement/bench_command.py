"""The `bench` command: grammar here (torch-free, for `--help`), the measuring in measurement/bench/."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assistant.config import REPO_ROOT, Settings, data_dir

COMMANDS = ("bench",)
DOCS_DIR = REPO_ROOT / "docs" / "benchmarks"


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `bench [--json] [--quick]`."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: router, generation vs llama.cpp, adapter memory, training cost",
        description="Measure, side by side in one run: router latency/throughput; time to first token and decode "
        "speed of the NF4 and bf16 base, with and without an adapter, and of llama.cpp on the same GGUF; whole "
        "answers per route as `ask` gives them next to llama.cpp on the same prompts, a 10-turn conversation's "
        "time to first token by turn, and a pasted 100,000-character line; memory of "
        "the base, adapters and merged models; QLoRA step time; with --vllm, `serve` on a vLLM server vs the local "
        "engine. Writes latest.json, latest.md, README-snippet.md "
        "and PNG charts into a new run folder (the committed report in docs/benchmarks/ only with --update-report).",
    )
    add_common(bench)
    bench.add_argument("--json", action="store_true", help="print the result JSON on stdout (else the Markdown table)")
    bench.add_argument(
        "--quick",
        action="store_true",
        help="under 3 minutes: 2 rounds, 64 new tokens, 2 adapters, no training",
    )
    where = bench.add_mutually_exclusive_group()
    where.add_argument(
        "--out", type=Path, help="output folder (default: a new run folder under the user data dir's bench-runs/)"
    )
    where.add_argument(
        "--update-report",
        action="store_true",
        help=f"write the committed report in {DOCS_DIR.relative_to(REPO_ROOT)}/ (what the README quotes)",
    )
    bench.add_argument("--repeats", type=int, help="generation rounds (default 5; 2 with --quick)")
    bench.add_argument("--new-tokens", type=int, help="tokens generated per run (default 128; 64 with --quick)")
    bench.add_argument("--adapters", type=int, help="adapters attached for the memory figures (default 10)")
    bench.add_argument("--train-steps", type=int, help="timed QLoRA steps (default 3; 0 skips training)")
    bench.add_argument("--train-seq-len", type=int, help="tokens per training sample (default 256)")
    bench.add_argument(
        "--vllm",
        action="store_true",
        help="also compare `serve` on a vLLM server with the local engine at 1, 4 and 8 clients (starts vLLM as "
        "`vllm start` does, or reuses the running one; ~15 min more; not with --quick)",
    )


def options_from(args: Any) -> Any:
    """The preset for --quick or full, with any explicitly given knob replaced."""
    from measurement.bench.runner import BenchOptions

    options = BenchOptions.quick_preset() if args.quick else BenchOptions.full()
    overrides = {
        "repeats": args.repeats,
        "new_tokens": args.new_tokens,
        "adapters": args.adapters,
        "train_steps": args.train_steps,
        "train_seq_len": args.train_seq_len,
    }
    for name, value in overrides.items():
        if value is not None and value < (0 if name == "train_steps" else 1):
            from assistant.errors import UsageError

            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    if getattr(args, "vllm", False):
        if args.quick:
            from assistant.errors import UsageError

            raise UsageError(
                "--vllm cannot be combined with --quick", "drop --quick: the vLLM comparison takes minutes"
            )
        options = dataclasses.replace(options, vllm=True)
    return dataclasses.replace(options, **{k: v for k, v in overrides.items() if v is not None})


def output_folder(args: Any, quick: bool) -> Path:
    """--out, the committed report with --update-report, else a fresh run folder named by its UTC start time."""
    if args.out:
        return Path(args.out)
    if args.update_report:
        return DOCS_DIR
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    return data_dir() / "bench-runs" / f"{stamp}{'-quick' if quick else ''}"


_STARTED = [time.perf_counter()]


def _log(message: str) -> None:
    """Progress on stderr, stamped with the seconds since the run began (where a slow run spends its time)."""
    stamp = f"[bench {time.perf_counter() - _STARTED[0]:6.1f}s]"
    print(message.replace("[bench]", stamp, 1), file=sys.stderr, flush=True)


def run(args: Any, settings: Settings) -> int:
    """Run the benchmark, write the files, print JSON or Markdown."""
    from measurement.bench.report import markdown, write_outputs
    from measurement.bench.runner import run_bench

    options = options_from(args)
    _STARTED[0] = time.perf_counter()
    out_dir = output_folder(args, options.quick)
    result = run_bench(settings, options, _log)
    for path in write_outputs(result, out_dir):
        _log(f"[bench] wrote {path}")
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(markdown(result))
    return 0
