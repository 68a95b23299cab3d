"""Keys/values of earlier prompts and answers, kept per adapter, so a request prefills only what none of them covers.

A conversation's next prompt starts with the previous prompt and answer; a fresh question starts with
the same system turn as every other. After each answer the engine keeps the keys/values of prompt +
answer under (adapter, token ids); the next request under that adapter copies the longest kept
prefix of its own ids and prefills the rest. Keys/values computed through one adapter are never
used for another (a route change starts from that adapter's own entries). Memory is bounded:
least recently used entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from adapters.kv_cache import KVCache


@dataclass
class _Entry:
    adapter: str | None
    ids: tuple[int, ...]
    past: KVCache  # covers exactly `ids`

    @property
    def nbytes(self) -> int:
        return self.past.nbytes


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids `a` and `b` have in common."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """Kept keys/values by (adapter, token ids), at most `limit_bytes` in all (least recently used evicted first).

    Not thread-safe: the engine uses it under its lock.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._entries: OrderedDict[tuple[str | None, tuple[int, ...]], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by every kept entry."""
        return sum(entry.nbytes for entry in self._entries.values())

    def kept(self) -> list[tuple[str | None, tuple[int, ...]]]:
        """(adapter, ids) of every entry, least recently used first."""
        return list(self._entries)

    def take(self, ids: Sequence[int], adapter: str | None, capacity: int, upto: int = 0) -> tuple[KVCache | None, int]:
        """A private copy of the longest kept prefix of `ids` under `adapter`, and how many ids it covers.

        At most `upto` ids are covered when given (the engine passes where the newest turn starts:
        that turn is always computed in one piece, as on its first asking, so a repeated question gets
        the same answer), and at least the last id is left to compute (its forward pass gives the next
        token's logits). The copy has room for `capacity` positions, so decoding into it never regrows.
        (None, 0) on a miss.
        """
        best: _Entry | None = None
        covered = 0
        limit = min(upto, len(ids) - 1) if upto > 0 else len(ids) - 1
        for entry in self._entries.values():
            if entry.adapter != adapter:
                continue
            n = min(shared_prefix(entry.ids, ids), limit)
            if n > covered:
                best, covered = entry, n
        if best is None:
            return None, 0
        self._entries.move_to_end((best.adapter, best.ids))
        return best.past.copy_prefix(covered, capacity), covered

    def keep(self, ids: Sequence[int], past: KVCache, adapter: str | None) -> None:
        """Keep `past`, which covers exactly `ids` under `adapter`; the caller must not touch it afterwards.

        Entries it extends are dropped (it serves every request they would); then the least recently
        used go until the total fits the limit. An entry larger than the limit alone is not kept.
        """
        key = (adapter, tuple(ids))
        if past.length != len(key[1]):
            raise ValueError(f"the keys/values cover {past.length} positions, not the {len(key[1])} ids given")
        if past.nbytes > self.limit_bytes:
            return
        for other in [k for k, e in self._entries.items() if e.adapter == adapter and _extends(key[1], e.ids)]:
            del self._entries[other]
        self._entries[key] = _Entry(adapter, key[1], past)
        self._entries.move_to_end(key)
        while self.nbytes > self.limit_bytes and len(self._entries) > 1:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()


def _extends(longer: tuple[int, ...], shorter: tuple[int, ...]) -> bool:
    return len(longer) >= len(shorter) and longer[: len(shorter)] == shorter
