"""The transformers + peft Engine: one shared base, every registered LoRA attached by name, one lock."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from adapters.adapter_slots import AdapterSlots
from adapters.fast_forward import FastForward, build_fast_forward
from adapters.incremental_decoder import IncrementalDecoder
from adapters.kv_cache import KVCache, layer_count
from adapters.next_token import pick, processors_for, stop_ids
from adapters.prefix_cache import PrefixCache
from adapters.prompt_fit import FittedPrompt, fit_to_context, longest_token_chars
from assistant.engine import AdapterInfo, EngineInfo, GenerationParams, Message, StreamStats
from assistant.errors import GenerationFailed, UsageError
from assistant.stop_text import StopText

#: Prompt + answer tokens on CPU unless the settings say otherwise: 2 cores prefill this in a few
#: seconds, where the model's own 32k positions took a quarter of an hour on one pasted line.
CPU_CONTEXT = 2048
_DEFAULT_CONTEXT = 2048  # used only when the model config names no max_position_embeddings
DEFAULT_KV_CACHE_MB = 256


def _warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class TransformersEngine:
    """Engine over one in-memory transformers model with named peft LoRA adapters.

    `set_adapter` mutates the shared model, so choosing the adapter and generating happen
    under one lock; a stream holds it from its first piece until it is exhausted or closed,
    so callers must finish or `close()` each stream before starting the next on the same
    thread (doing otherwise raises GenerationFailed instead of deadlocking).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        info: EngineInfo,
        base_checksum: str,
        adapter_dirs: Path | Sequence[Path],
        system_prompt: str | None = None,
        warn: Callable[[str], None] = _warn_stderr,
        *,
        context_length: int | None = None,
        kv_cache_mb: int = DEFAULT_KV_CACHE_MB,
    ) -> None:
        self._tokenizer = tokenizer
        self._info = info
        self._system_prompt = system_prompt
        self._lock = threading.Lock()
        self._owner: int | None = None  # thread id holding the lock, to refuse re-entry
        self._context = self._context_for(model, info, context_length)
        self._token_chars = longest_token_chars(tokenizer)
        self._generation_config = getattr(model, "generation_config", None)
        self._stop_ids = stop_ids(tokenizer, self._generation_config)
        model.eval()
        self._slots = AdapterSlots(model, adapter_dirs, base_checksum, info.base_model, warn)
        self._model: Any = self._slots.model
        self._device = getattr(model, "device", torch.device("cpu"))
        self._layers = layer_count(model)
        self.prefixes = PrefixCache(kv_cache_mb * 2**20)
        self._warm_up(model)
        # Built after the warm-up: bitsandbytes repacks its 4-bit weights for the CPU on the first forward.
        self._fast, self.forward_path = build_fast_forward(self._model, self._slots.names())

    # -- Engine protocol -------------------------------------------------------------------

    def info(self) -> EngineInfo:
        """Describe the loaded base model."""
        return self._info

    def adapters(self) -> list[AdapterInfo]:
        """The adapters that loaded successfully."""
        return self._slots.loaded()

    def stream(
        self,
        messages: Sequence[Message],
        adapter: str | None,
        params: GenerationParams,
        cancel: threading.Event | None = None,
        stats: StreamStats | None = None,
    ) -> Generator[str, None, None]:
        """Yield answer text pieces; `adapter=None` means the plain base. Stops early when `cancel` is set.

        An unknown adapter raises UsageError here, before any iteration. The generator holds the
        engine lock while it runs: exhaust it or call its close().
        """
        names = self._slots.names()
        if adapter is not None and adapter not in names:
            raise UsageError(
                f"unknown adapter {adapter!r}",
                f"loaded adapters: {', '.join(names) or 'none'} (see `python main.py adapters`)",
            )
        return self._stream(
            list(messages),
            adapter,
            params,
            cancel if cancel is not None else threading.Event(),
            stats if stats is not None else StreamStats(),
        )

    @contextmanager
    def scoped_model(self, adapter: str | None) -> Iterator[Any]:
        """The shared model with `adapter` active (None: the plain base), held under the engine lock.

        For measurements that need raw forward passes (validation loss) on exactly the model that answers.
        """
        if adapter is not None and adapter not in self._slots.names():
            raise UsageError(f"unknown adapter {adapter!r}")
        with self._lock, self._slots.scope(adapter):
            yield self._model

    @property
    def context(self) -> int:
        """Prompt + answer tokens at most."""
        return self._context

    @property
    def fast_forward(self) -> FastForward | None:
        """The lean forward pass answers go through; None when this model needs transformers' own."""
        return self._fast

    @contextmanager
    def transformers_forward(self) -> Iterator[None]:
        """Answer through transformers' own forward meanwhile (the bench times both; kept keys/values are dropped)."""
        saved, self._fast = self._fast, None
        self.prefixes.clear()
        try:
            yield
        finally:
            self._fast = saved
            self.prefixes.clear()

    # -- loading ---------------------------------------------------------------------------

    @staticmethod
    def _context_for(model: Any, info: EngineInfo, asked: int | None) -> int:
        """The context to fit prompts to: the one asked for, else CPU_CONTEXT on CPU; never above the model's."""
        config = getattr(model, "config", None)
        model_max = int(getattr(config, "max_position_embeddings", 0) or _DEFAULT_CONTEXT)
        wanted = asked or (CPU_CONTEXT if info.device == "cpu" else model_max)
        return min(wanted, model_max)

    def _warm_up(self, model: Any) -> None:
        """One short forward pass (bitsandbytes repacks its 4-bit weights on the first one).

        base_model.warm_up also marks the model inference-only, which training checks.
        """
        from adapters.base_model import warm_up

        with self._lock, self._slots.scope(None):
            warm_up(model, self._tokenizer)

    # -- generation ------------------------------------------------------------------------

    def _acquire(self, cancel: threading.Event) -> bool:
        """Take the lock, giving up when `cancel` is set while waiting; refuse same-thread re-entry."""
        if self._owner == threading.get_ident():
            raise GenerationFailed(
                "a previous answer from this engine is still streaming on this thread",
                "exhaust or close() the previous stream first",
            )
        while not self._lock.acquire(timeout=0.05):
            if cancel.is_set():
                return False
        self._owner = threading.get_ident()
        return True

    def _stream(
        self,
        messages: list[Message],
        adapter: str | None,
        params: GenerationParams,
        cancel: threading.Event,
        stats: StreamStats,
    ) -> Generator[str, None, None]:
        start = time.perf_counter()
        prompt = fit_to_context(
            self._tokenizer,
            messages,
            self._system_prompt,
            self._context,
            params.max_new_tokens,
            params.answer_prefix,
            self._token_chars,
        )
        stats.prompt_tokens, stats.truncated_prompt = len(prompt.ids), prompt.truncated
        stats.kept_chars, stats.total_chars = prompt.kept_chars, prompt.total_chars
        if not self._acquire(cancel):
            stats.total_s = time.perf_counter() - start
            return
        try:
            # The fast forward takes the adapter by name; peft's own switching is for the transformers one.
            with self._slots.scope(adapter) if self._fast is None else nullcontext():
                if params.answer_prefix:
                    yield params.answer_prefix  # the model's first words, already in its prompt
                past, done = self._past_for(prompt, adapter)
                stats.cached_tokens = done
                yield from self._decode(prompt.ids, prompt.max_new, params, cancel, stats, start, past, done, adapter)
        finally:
            self._owner = None
            self._lock.release()
            stats.total_s = time.perf_counter() - start

    def _past_for(self, prompt: FittedPrompt, adapter: str | None) -> tuple[KVCache, int]:
        """Keys/values to start from (a copy of the longest kept prefix) and how many prompt ids they cover.

        When nothing kept covers the system turn, it is encoded alone and kept first, so every later
        prompt under this adapter starts from the same system keys/values.
        """
        capacity = len(prompt.ids) + prompt.max_new
        upto = max(prompt.newest_turn, prompt.system_len)
        past, done = self.prefixes.take(prompt.ids, adapter, capacity, upto)
        if done < prompt.system_len:
            system = prompt.ids[: prompt.system_len]
            try:
                self.prefixes.keep(system, self._encode(system, adapter), adapter)
            except (RuntimeError, ValueError, AssertionError) as exc:
                raise GenerationFailed(f"encoding the system prompt failed: {exc}") from exc
            past, done = self.prefixes.take(prompt.ids, adapter, capacity, upto)
        return (past if past is not None else KVCache(self._layers, capacity)), done

    def _encode(self, ids: list[int], adapter: str | None) -> KVCache:
        """Keys/values of `ids` through `adapter` (the caller holds the lock and has it active)."""
        past = KVCache(self._layers, len(ids))
        with torch.inference_mode():
            self._logits(torch.tensor([ids], device=self._device), past, adapter, 1)
        return past

    def _logits(self, ids: torch.Tensor, past: KVCache, adapter: str | None, last: Any) -> torch.Tensor:
        """Logits (1, vocab) of the position `last` indexes among `ids`, appending their keys/values to `past`."""
        if self._fast is not None:
            return self._fast(ids, past, adapter)
        out = self._model(input_ids=ids, past_key_values=past, use_cache=True, logits_to_keep=last)
        return out.logits[:, -1, :]  # type: ignore[no-any-return]

    def _decode(
        self,
        ids: list[int],
        max_new: int,
        params: GenerationParams,
        cancel: threading.Event,
        stats: StreamStats,
        start: float,
        past: KVCache,
        done: int,
        adapter: str | None,
    ) -> Iterator[str]:
        """Manual decode loop over a KV cache: one forward per token, cancel checked between them.

        `past` already holds the keys/values of the first `done` ids. However the answer ends
        (stop, length, cancel, the consumer closing the stream), the keys/values of the prompt and
        the answer so far are kept for the next request; after a failed forward they are not.
        """
        processors = processors_for(self._generation_config, params)
        decoder = IncrementalDecoder(self._tokenizer)
        stop = StopText(params.stop)
        generator = None
        if params.temperature > 0 and params.seed is not None:
            generator = torch.Generator(device=self._device).manual_seed(params.seed)
        stats.finish_reason = "length"
        sequence = torch.tensor([ids], device=self._device)
        step_input = sequence[:, done:]
        # Only the last position's logits are needed. An index tensor rather than the int 1:
        # the int makes a strided view of the prompt's hidden states, and with peft attached
        # the bf16 lm_head took a ~40x slower path on it (2-3 s per prefill on the 0.5B base).
        last: Any = torch.tensor([len(ids) - done - 1], device=self._device)
        seen = list(ids)  # prompt + answer ids; `past` holds the first past.length of them
        intact = True  # False while a forward pass is under way (its layers half updated)
        try:
            for step in range(max_new):
                if cancel.is_set():
                    stats.finish_reason = "cancelled"
                    return  # held-back bytes are dropped: a cancelled answer may end mid-character
                intact = False
                try:
                    # inference_mode is thread-local, so it is entered per step rather than held
                    # across yields, where the consumer's own code runs on this thread.
                    with torch.inference_mode():
                        logits = self._logits(step_input, past, adapter, last)
                        token = pick(logits, sequence, processors, params, generator)
                except (RuntimeError, ValueError, AssertionError) as exc:
                    raise GenerationFailed(f"generation failed at token {step}: {exc}") from exc
                intact = True
                if step == 0:
                    stats.first_token_s = time.perf_counter() - start
                token_id = int(token)
                if token_id in self._stop_ids:
                    stats.finish_reason = "stop"
                    break
                stats.new_tokens += 1
                seen.append(token_id)
                if processors:  # only the repetition penalty needs the growing sequence
                    sequence = torch.cat([sequence, token], dim=1)
                step_input, last = token, 1  # one position from here on: nothing to slice
                piece = stop.feed(decoder.push(token_id))
                if piece:
                    yield piece
                if stop.stopped:
                    stats.finish_reason = "stop"
                    return
            tail = stop.feed(decoder.flush()) + stop.flush()
            if tail:
                yield tail
        finally:
            if intact and past.length:
                self.prefixes.keep(seen[: past.length], past, adapter)
