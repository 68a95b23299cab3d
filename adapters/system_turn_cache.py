"""Keys/values of the system turn, encoded once per adapter and copied for every answer that starts with it."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from assistant.errors import GenerationFailed

#: (adapter or None for the plain base, the system turn's token ids)
SystemTurnKey = tuple[str | None, tuple[int, ...]]


class SystemTurnCache(Mapping[SystemTurnKey, Any]):
    """Every question starts with the same ~200-token system prompt, so its keys/values are kept.

    One entry per (adapter, token ids), at most `max_entries` (a few MB each): a changed system
    prompt evicts the oldest. Reading it is a read-only mapping view of what is kept.
    """

    def __init__(self, encode: Callable[[list[int]], Any], max_entries: int = 16) -> None:
        self._encode = encode  # ids -> past_key_values, through whichever adapter is active
        self._max_entries = max_entries
        self._entries: dict[SystemTurnKey, Any] = {}

    def past_for(self, ids: list[int], shared: int, adapter: str | None) -> tuple[Any, int]:
        """A private copy of the keys/values of `ids[:shared]` under `adapter`, and how many ids it covers.

        Encoded on first use; (None, 0) when there is no intact system turn (`shared` is 0). The
        caller has `adapter` active and holds the engine lock.
        """
        if not shared:
            return None, 0
        key = (adapter, tuple(ids[:shared]))
        cached = self._entries.get(key)
        if cached is None:
            try:
                cached = self._encode(ids[:shared])
            except (RuntimeError, ValueError, AssertionError) as exc:
                raise GenerationFailed(f"encoding the system prompt failed: {exc}") from exc
            if len(self._entries) >= self._max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = cached
        return copy.deepcopy(cached), shared  # decoding appends to the cache in place

    def clear(self) -> None:
        """Forget every kept entry (they are encoded again on next use)."""
        self._entries.clear()

    def __getitem__(self, key: SystemTurnKey) -> Any:
        return self._entries[key]

    def __iter__(self) -> Iterator[SystemTurnKey]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
