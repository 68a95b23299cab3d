"""The llama.cpp peer (llama-cpp-python, optional extra `peer`): same GGUF, same prompt ids, same threads."""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path
from typing import Any

from measurement.bench.generation import Timing, decode_rate

INSTALL_HINT = "pip install -e '.[peer]'  (llama-cpp-python compiles from source, ~6 min)"


def llama_cpp_version() -> str | None:
    """The installed llama-cpp-python version, or None when the optional extra is missing."""
    try:
        importlib.metadata.version("llama-cpp-python")
        import llama_cpp  # noqa: F401 - the wheel may be installed but broken (missing shared library)
    except (importlib.metadata.PackageNotFoundError, ImportError, OSError):
        return None
    return importlib.metadata.version("llama-cpp-python")


class LlamaCppPeer:
    """One llama.cpp model; `run` times greedy generation of exactly N tokens (end-of-turn ignored)."""

    def __init__(self, gguf: Path, threads: int, n_ctx: int = 1024) -> None:
        from llama_cpp import Llama

        started = time.perf_counter()
        self._llm: Any = Llama(
            model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        self.load_s = time.perf_counter() - started
        self.threads = threads
        self.ids: list[int] = []

    def set_threads(self, threads: int) -> None:
        """Change the decode and prefill thread count (for the thread sweep)."""
        self._llm._ctx.set_n_threads(threads, threads)
        self.threads = threads

    def run(self, new_tokens: int) -> Timing:
        """Prefill `self.ids` from scratch and generate `new_tokens` greedily."""
        llm = self._llm
        llm.reset()  # forget the previous run: no prompt-prefix reuse, prefill is measured every time
        started = time.perf_counter()
        first = 0.0
        made = 0
        # Llama.generate never stops on its own (create_completion is what checks end-of-turn), so
        # every run decodes exactly `new_tokens`, like a fixed-length benchmark should.
        generator = llm.generate(self.ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True)
        try:
            for _ in generator:
                made += 1
                if made == 1:
                    first = time.perf_counter() - started
                if made >= new_tokens:
                    break
        finally:
            generator.close()
        total = time.perf_counter() - started
        return Timing(first, total, made, decode_rate(made, new_tokens, first, total))

    def answer(self, ids: list[int], new_tokens: int) -> tuple[float, int]:
        """Seconds and tokens for a greedy answer to `ids`, as llama.cpp's server gives one.

        The prefix `ids` share with the previous prompt stays in llama.cpp's KV cache (the same
        reuse our engine gets from its prefix cache); the rest is prefilled, then `new_tokens` decoded.
        """
        started = time.perf_counter()
        made = len(self.greedy_ids(ids, new_tokens, keep_prefix=True))
        return time.perf_counter() - started, made

    def greedy_ids(self, ids: list[int], new_tokens: int, keep_prefix: bool) -> list[int]:
        """The first `new_tokens` greedy ids after `ids`: reusing the prefix kept from the previous call, or not."""
        if not keep_prefix:
            self._llm.reset()  # nothing reused: the whole prompt is prefilled in one pass
        out: list[int] = []
        generator = self._llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True)
        try:
            for token in generator:
                out.append(int(token))
                if len(out) >= new_tokens:
                    break
        finally:
            generator.close()
        return out
