"""The transformers + peft Engine: one shared base, every registered LoRA attached by name, one lock."""

from __future__ import annotations

import copy
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
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

from adapters.chat_format import render_prompt_ids, render_turn_ids, with_system
from adapters.registry import read_manifest, scan_adapters
from assistant.engine import AdapterInfo, EngineInfo, GenerationParams, Message, StreamStats
from assistant.errors import AssistantError, GenerationFailed, UsageError

IM_END = "<|im_end|>"
_DEFAULT_CONTEXT = 2048  # used only when the model config names no max_position_embeddings


#: System-turn caches kept at once: one per adapter and system prompt in use.
_SYSTEM_KV_ENTRIES = 16


def _warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class IncrementalDecoder:
    """Turns token ids, pushed one at a time, into text pieces that never split a character.

    Byte-level BPE tokens can end inside a multi-byte UTF-8 character; decoding then ends in
    U+FFFD. Such a tail is held back until later tokens complete it, while the text before it
    goes out. Each step re-decodes only a short window of recent tokens, starting one piece
    earlier than the new text so tokenizers that drop a leading space on a lone token still
    get it right (the prefix/read offsets of TGI and vLLM). The pieces always join up to
    exactly `tokenizer.decode(all ids)`.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the window re-decoded each step
        self._read = 0  # tokens before this are fully emitted
        self._sent = 0  # characters after `_read`'s text already emitted (the stable part of a held tail)

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def push(self, token_id: int) -> str:
        """Add one token; return the newly stable text (often '', never a partial character)."""
        self._ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """Whatever is still held back, at the end of an answer."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        done = self._decode(self._ids[self._prefix : self._read])
        now = self._decode(self._ids[self._prefix :])
        if final or not now.endswith("\ufffd"):
            piece = now[len(done) + self._sent :]
            self._prefix, self._read, self._sent = self._read, len(self._ids), 0
            return piece
        # The trailing replacement characters may still become a real character; what
        # precedes them cannot change any more (UTF-8 is self-synchronizing).
        piece = now.rstrip("\ufffd")[len(done) + self._sent :]
        self._sent += len(piece)
        return piece


def fit_prompt(tokenizer: Any, convo: Sequence[Mapping[str, str]], budget: int) -> tuple[list[int], bool]:
    """Prompt ids of `convo` (system turn already in place) in at most `budget` tokens, and whether it was cut.

    Oldest turns go first; if the newest turn alone is still too long, its text is cut from
    the front (keeping the most recent text). The system turn always stays, and the chat
    template stays intact, so the model still sees well-formed turns.
    """
    turns = [{"role": m["role"], "content": m["content"]} for m in convo]

    def render(part: list[dict[str, str]]) -> list[int]:
        return render_prompt_ids(tokenizer, part, None)

    ids = render(turns)
    if len(ids) <= budget:
        return ids, False
    head = turns[:1] if turns and turns[0]["role"] == "system" else []
    rest = turns[len(head) :]
    while len(rest) > 1 and len(ids) > budget:
        rest = rest[1:]
        if len(rest) > 1 and rest[0]["role"] == "assistant":
            rest = rest[1:]  # resume on a user turn, as the conversation did
        ids = render(head + rest)
    if len(ids) > budget and rest:
        role, text = rest[-1]["role"], rest[-1]["content"]

        def fits(keep: int) -> list[int] | None:
            candidate = render([*head, {"role": role, "content": text[len(text) - keep :]}])
            return candidate if len(candidate) <= budget else None

        # Binary search for the longest tail of the text that fits; a token rarely spans more
        # than 32 characters, which bounds how much text is ever tokenized.
        lo, hi = 0, min(len(text), budget * 32)
        best = fits(0)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            candidate = fits(mid)
            if candidate is None:
                hi = mid - 1
            else:
                lo, best = mid, candidate
        if best is not None:
            ids = best
    if len(ids) > budget:  # even the system turn alone is too long: keep the newest tokens
        ids = ids[len(ids) - budget :]
    return ids, True


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
        self._base_checksum = base_checksum
        self._system_prompt = system_prompt
        self._warn = warn
        self._lock = threading.Lock()
        self._owner: int | None = None  # thread id holding the lock, to refuse re-entry
        self._active: str | None = None  # adapter last set with set_adapter; None = unknown
        # Keys/values of the system turn, per (adapter, token ids): every question starts with the
        # same ~200-token system prompt, so it is encoded once per adapter rather than per answer.
        self._system_kv: dict[tuple[str | None, tuple[int, ...]], Any] = {}
        config = getattr(model, "config", None)
        self._context = int(context_length or getattr(config, "max_position_embeddings", 0) or _DEFAULT_CONTEXT)
        self._generation_config = getattr(model, "generation_config", None)
        self._stop_ids = self._find_stop_ids(tokenizer, self._generation_config)
        model.eval()
        # Every adapter is attached before the first forward pass: only then is
        # disable_adapter() bit-exact with the plain base (bnb repacks on the first forward).
        self._peft: Any = None
        self._adapters: list[AdapterInfo] = []
        self._attach_adapters(model, adapter_dirs)
        self._model: Any = self._peft if self._peft is not None else model
        self._device = getattr(model, "device", torch.device("cpu"))
        self._warm_up(model)

    # -- Engine protocol -------------------------------------------------------------------

    def info(self) -> EngineInfo:
        """Describe the loaded base model."""
        return self._info

    def adapters(self) -> list[AdapterInfo]:
        """The adapters that loaded successfully."""
        return list(self._adapters)

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
        names = [a.name for a in self._adapters]
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
        if adapter is not None and adapter not in [a.name for a in self._adapters]:
            raise UsageError(f"unknown adapter {adapter!r}")
        with self._lock, self._adapter_scope(adapter):
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

    def _attach_adapters(self, model: Any, adapter_dirs: Path | Sequence[Path]) -> None:
        from peft import PeftModel

        found, problems = scan_adapters(adapter_dirs)
        for problem in problems:
            self._warn(problem)
        for adapter in found:
            try:
                trained_on = read_manifest(Path(adapter.path)).get("base_checksum", "")
            except AssistantError as exc:  # the folder changed since the scan
                self._warn(f"adapter {adapter.name!r} skipped: {exc}")
                continue
            if trained_on != self._base_checksum:
                self._warn(
                    f"adapter {adapter.name!r} skipped: it was trained on base {adapter.base_model!r} "
                    f"(checksum {str(trained_on)[:12]}), but the loaded base is {self._info.base_model!r} "
                    f"(checksum {self._base_checksum[:12]}); retrain it on this base or load that base"
                )
                continue
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(
                        model, adapter.path, adapter_name=adapter.name, is_trainable=False
                    )
                else:
                    self._peft.load_adapter(adapter.path, adapter_name=adapter.name, is_trainable=False)
            except Exception as exc:  # noqa: BLE001 - peft/safetensors raise many types; one bad adapter must not crash
                self._forget(model, adapter.name)
                self._warn(f"adapter {adapter.name!r} skipped: loading {adapter.path} failed: {exc}")
                continue
            self._adapters.append(adapter)
        if self._peft is not None:
            self._peft.eval()

    def _forget(self, model: Any, name: str) -> None:
        """Remove what a failed load left behind, so the base and the other adapters stay exact."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        try:
            if self._peft is not None:
                if name in self._peft.peft_config:
                    self._peft.delete_adapter(name)
            else:
                # PeftModel.from_pretrained injects LoRA layers into `model` before reading the
                # weights; adapter-less wrappers left behind compute exactly the base layer.
                for module in model.modules():
                    if isinstance(module, BaseTunerLayer):
                        module.delete_adapter(name)
                # It also leaves its config on the model, which the next PeftModel would adopt.
                configs = getattr(model, "peft_config", None)
                if isinstance(configs, dict):
                    configs.pop(name, None)
                    if not configs:
                        del model.peft_config
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort; the load warning says why
            self._warn(f"could not fully unload the failed adapter {name!r}: {exc}")
        self._active = None

    def _warm_up(self, model: Any) -> None:
        """One short forward pass (bitsandbytes repacks its 4-bit weights on the first one).

        base_model.warm_up also marks the model inference-only, which training checks.
        """
        from adapters.base_model import warm_up

        with self._lock, self._adapter_scope(None):
            warm_up(model, self._tokenizer)

    # -- generation ------------------------------------------------------------------------

    @contextmanager
    def _adapter_scope(self, adapter: str | None) -> Iterator[None]:
        """Make `adapter` (or the plain base for None) the one the next forwards go through."""
        if self._peft is None:
            yield
            return
        if adapter is None:
            with self._peft.disable_adapter():
                yield
            return
        if self._active != adapter:
            self._peft.set_adapter(adapter, inference_mode=True)
            self._active = adapter
        yield

    def _prompt_ids(
        self, messages: list[Message], max_new_tokens: int, answer_prefix: str = ""
    ) -> tuple[list[int], bool, int, int]:
        """Prompt ids (ending with the answer prefix's, if any) fitted to the context, whether they were
        cut, the new-token allowance, and how many leading ids are the system turn (0: none intact)."""
        # A max_new_tokens as large as the context would leave no room for any prompt at all.
        max_new = max_new_tokens if max_new_tokens < self._context else max(1, self._context // 2)
        prefix = self._tokenizer.encode(answer_prefix, add_special_tokens=False) if answer_prefix else []
        convo = with_system([m.as_dict() for m in messages], self._system_prompt)
        ids, truncated = fit_prompt(self._tokenizer, convo, self._context - max_new - len(prefix))
        system = render_turn_ids(self._tokenizer, convo[:1]) if convo and convo[0]["role"] == "system" else []
        shared = len(system) if 0 < len(system) < len(ids) and ids[: len(system)] == system else 0
        return ids + prefix, truncated, max_new, shared

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
            top_p = getattr(config, "top_p", None)
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
        ids, truncated, max_new, shared = self._prompt_ids(messages, params.max_new_tokens, params.answer_prefix)
        stats.prompt_tokens, stats.truncated_prompt = len(ids), truncated
        if not self._acquire(cancel):
            stats.total_s = time.perf_counter() - start
            return
        try:
            with self._adapter_scope(adapter):
                if params.answer_prefix:
                    yield params.answer_prefix  # the model's first words, already in its prompt
                past, done = self._system_cache(ids, shared, adapter)
                yield from self._decode(ids, max_new, params, cancel, stats, start, past, done)
        finally:
            self._owner = None
            self._lock.release()
            stats.total_s = time.perf_counter() - start

    def _system_cache(self, ids: list[int], shared: int, adapter: str | None) -> tuple[Any, int]:
        """A private copy of the system turn's keys/values for this adapter, and how many ids it covers.

        Computed on first use and kept (a few MB per adapter); (None, 0) when there is no intact
        system turn. Runs under the engine lock with the adapter already set.
        """
        if not shared:
            return None, 0
        key = (adapter, tuple(ids[:shared]))
        cached = self._system_kv.get(key)
        if cached is None:
            try:
                with torch.inference_mode():
                    head = torch.tensor([ids[:shared]], device=self._device)
                    cached = self._model(input_ids=head, use_cache=True, logits_to_keep=1).past_key_values
            except (RuntimeError, ValueError, AssertionError) as exc:
                raise GenerationFailed(f"encoding the system prompt failed: {exc}") from exc
            if len(self._system_kv) >= _SYSTEM_KV_ENTRIES:  # a changed system prompt: drop the oldest
                self._system_kv.pop(next(iter(self._system_kv)))
            self._system_kv[key] = cached
        return copy.deepcopy(cached), shared  # decoding appends to the cache in place

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
        sequence = torch.tensor([ids], device=self._device)
        step_input = sequence[:, done:]
        # Only the last position's logits are needed. An index tensor rather than the int 1:
        # the int makes a strided view of the prompt's hidden states, and with peft attached
        # the bf16 lm_head took a ~40x slower path on it (2-3 s per prefill on the 0.5B base).
        last: Any = torch.tensor([len(ids) - done - 1], device=self._device)
        for step in range(max_new):
            if cancel.is_set():
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
                        token = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)
                    else:
                        token = torch.argmax(logits, dim=-1, keepdim=True)
            except (RuntimeError, ValueError, AssertionError) as exc:
                raise GenerationFailed(f"generation failed at token {step}: {exc}") from exc
            if step == 0:
                stats.first_token_s = time.perf_counter() - start
            token_id = int(token)
            if token_id in self._stop_ids:
                break
            stats.new_tokens += 1
            if processors:  # only the repetition penalty needs the growing sequence
                sequence = torch.cat([sequence, token], dim=1)
            step_input, last = token, 1  # one position from here on: nothing to slice
            piece = decoder.push(token_id)
            if piece:
                yield piece
        tail = decoder.flush()
        if tail:
            yield tail
