"""The transformers + peft Engine: one shared base, every registered LoRA attached by name, one lock."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from adapters.adapter_slots import AdapterSlots
from adapters.incremental_decoder import IncrementalDecoder
from adapters.prompt_fit import fit_to_context
from adapters.system_turn_cache import SystemTurnCache
from assistant.engine import AdapterInfo, EngineInfo, GenerationParams, Message, StreamStats
from assistant.errors import GenerationFailed, UsageError
from assistant.stop_text import StopText

IM_END = "<|im_end|>"
_DEFAULT_CONTEXT = 2048  # used only when the model config names no max_position_embeddings


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
    ) -> None:
        self._tokenizer = tokenizer
        self._info = info
        self._system_prompt = system_prompt
        self._lock = threading.Lock()
        self._owner: int | None = None  # thread id holding the lock, to refuse re-entry
        config = getattr(model, "config", None)
        self._context = int(context_length or getattr(config, "max_position_embeddings", 0) or _DEFAULT_CONTEXT)
        self._generation_config = getattr(model, "generation_config", None)
        self._stop_ids = self._find_stop_ids(tokenizer, self._generation_config)
        model.eval()
        self._slots = AdapterSlots(model, adapter_dirs, base_checksum, info.base_model, warn)
        self._model: Any = self._slots.model
        self._device = getattr(model, "device", torch.device("cpu"))
        self._system_turns = SystemTurnCache(self._encode_prefix)
        self._warm_up(model)

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

    # -- loading ---------------------------------------------------------------------------

    @staticmethod
    def _find_stop_ids(tokenizer: Any, generation_config: Any) -> frozenset[int]:
        candidates: list[Any] = [tokenizer.eos_token_id, tokenizer.pad_token_id]
        if generation_config is not None:
            candidates.append(generation_config.eos_token_id)
        im_end = tokenizer.convert_tokens_to_ids(IM_END)
        # convert_tokens_to_ids answers unk (or None) for a token the vocabulary lacks.
        if isinstance(im_end, int) and tokenizer.convert_ids_to_tokens(im_end) == IM_END:
            candidates.append(im_end)
        stop: set[int] = set()
        for item in candidates:
            for token in item if isinstance(item, (list, tuple)) else [item]:
                if token is not None:
                    stop.add(int(token))
        return frozenset(stop)

    def _warm_up(self, model: Any) -> None:
        """One short forward pass (bitsandbytes repacks its 4-bit weights on the first one).

        base_model.warm_up also marks the model inference-only, which training checks.
        """
        from adapters.base_model import warm_up

        with self._lock, self._slots.scope(None):
            warm_up(model, self._tokenizer)

    # -- generation ------------------------------------------------------------------------

    def _processors(self, params: GenerationParams) -> LogitsProcessorList:
        """The model's own repetition penalty (and top-k/top-p when sampling), as generate() would."""
        config = self._generation_config
        processors = LogitsProcessorList()
        penalty = getattr(config, "repetition_penalty", None)
        if penalty is not None and penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(float(penalty)))
        if params.temperature > 0:
            processors.append(TemperatureLogitsWarper(float(params.temperature)))
            top_k = getattr(config, "top_k", None)
            if top_k:
                processors.append(TopKLogitsWarper(int(top_k)))
            top_p = params.top_p if params.top_p is not None else getattr(config, "top_p", None)
            if top_p is not None and top_p < 1.0:
                processors.append(TopPLogitsWarper(float(top_p)))
        return processors

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
            self._tokenizer, messages, self._system_prompt, self._context, params.max_new_tokens, params.answer_prefix
        )
        stats.prompt_tokens, stats.truncated_prompt = len(prompt.ids), prompt.truncated
        if not self._acquire(cancel):
            stats.total_s = time.perf_counter() - start
            return
        try:
            with self._slots.scope(adapter):
                if params.answer_prefix:
                    yield params.answer_prefix  # the model's first words, already in its prompt
                past, done = self._system_turns.past_for(prompt.ids, prompt.system_len, adapter)
                yield from self._decode(prompt.ids, prompt.max_new, params, cancel, stats, start, past, done)
        finally:
            self._owner = None
            self._lock.release()
            stats.total_s = time.perf_counter() - start

    def _encode_prefix(self, ids: list[int]) -> Any:
        """Keys/values of `ids` through the active adapter (the caller holds the lock)."""
        with torch.inference_mode():
            head = torch.tensor([ids], device=self._device)
            return self._model(input_ids=head, use_cache=True, logits_to_keep=1).past_key_values

    def _decode(
        self,
        ids: list[int],
        max_new: int,
        params: GenerationParams,
        cancel: threading.Event,
        stats: StreamStats,
        start: float,
        past: Any = None,
        done: int = 0,
    ) -> Iterator[str]:
        """Manual decode loop over a KV cache: one forward per token, cancel checked between them.

        `past` already holds the keys/values of the first `done` ids (the system turn).
        """
        processors = self._processors(params)
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
        for step in range(max_new):
            if cancel.is_set():
                stats.finish_reason = "cancelled"
                return  # held-back bytes are dropped: a cancelled answer may end mid-character
            try:
                # inference_mode is thread-local, so it is entered per step rather than held
                # across yields, where the consumer's own code runs on this thread.
                with torch.inference_mode():
                    out = self._model(input_ids=step_input, past_key_values=past, use_cache=True, logits_to_keep=last)
                    past = out.past_key_values
                    logits = out.logits[:, -1, :].float()
                    if processors:
                        logits = processors(sequence, logits)  # type: ignore[arg-type]  # int64 tensor is a LongTensor
                    if params.temperature > 0:
                        token = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1, generator=generator)
                    else:
                        token = torch.argmax(logits, dim=-1, keepdim=True)
            except (RuntimeError, ValueError, AssertionError) as exc:
                raise GenerationFailed(f"generation failed at token {step}: {exc}") from exc
            if step == 0:
                stats.first_token_s = time.perf_counter() - start
            token_id = int(token)
            if token_id in self._stop_ids:
                stats.finish_reason = "stop"
                break
            stats.new_tokens += 1
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
