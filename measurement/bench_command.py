"""The `bench` command: grammar here (torch-free, for `--help`), the measuring in measurement/bench/."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assistant.config import REPO_ROOT, Settings, cache_dir

COMMANDS = ("bench",)
DOCS_DIR = REPO_ROOT / "docs" / "benchmarks"


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `bench [--json] [--quick]`."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: router, generation vs llama.cpp, adapter memory, training cost",
        description="Measure, side by side in one run: router latency/throughput; time to first token and decode "
        "speed of the NF4 and bf16 base, with and without an adapter, and of llama.cpp on the same GGUF; memory of "
        "the base, adapters and merged models; QLoRA step time. Writes latest.json, latest.md, README-snippet.md "
        "and PNG charts.",
    )
    add_common(bench)
    bench.add_argument("--json", action="store_true", help="print the result JSON on stdout (else the Markdown table)")
    bench.add_argument(
        "--quick",
        action="store_true",
        help="under 3 minutes: 2 rounds, 64 new tokens, 2 adapters, no training; written to the cache "
        "folder, not docs/",
    )
    bench.add_argument(
        "--out",
        type=Path,
        help=f"output folder (default {DOCS_DIR.relative_to(REPO_ROOT)}/, or the cache folder with --quick)",
    )
    bench.add_argument("--repeats", type=int, help="generation rounds (default 5; 2 with --quick)")
    bench.add_argument("--new-tokens", type=int, help="tokens generated per run (default 128; 64 with --quick)")
    bench.add_argument("--adapters", type=int, help="adapters attached for the memory figures (default 10)")
    bench.add_argument("--train-steps", type=int, help="timed QLoRA steps (default 3; 0 skips training)")
    bench.add_argument("--train-seq-len", type=int, help="tokens per training sample (default 256)")


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
    return dataclasses.replace(options, **{k: v for k, v in overrides.items() if v is not None})


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
    out_dir = args.out or (cache_dir() / "bench-quick" if options.quick else DOCS_DIR)
    result = run_bench(settings, options, _log)
    for path in write_outputs(result, out_dir):
        _log(f"[bench] wrote {path}")
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(markdown(result))
    return 0
