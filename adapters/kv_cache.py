"""A transformers key/value cache that appends in place and hands out cropped copies of itself for reuse."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

#: Positions a buffer grows by at least, so decoding one token at a time rarely reallocates.
_GROWTH = 256


class GrowingLayer(DynamicLayer):
    """One layer's keys/values in buffers with spare room at the end.

    DynamicLayer concatenates on every update, copying the whole history once per decoded token;
    here a new token is written into the spare room, and `keys`/`values` are views of the filled part.
    `dtype` stores the states in another dtype than the model's (the CPU fast path keeps them in float32).
    """

    def __init__(self, capacity: int = 0, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self._capacity = capacity
        self._store_dtype = dtype
        self._length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype = self._store_dtype or key_states.dtype
        self.device = key_states.device
        batch, heads, _, dim = key_states.shape
        room = max(self._capacity, key_states.shape[-2])
        self._k = torch.empty(batch, heads, room, dim, dtype=self.dtype, device=self.device)
        self._v = torch.empty(batch, heads, room, value_states.shape[-1], dtype=self.dtype, device=self.device)
        self._length = 0
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions in place; returns views of every position so far."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self._k is not None and self._v is not None
        start, end = self._length, self._length + key_states.shape[-2]
        if end > self._k.shape[-2]:
            self._grow(end)
        self._k[:, :, start:end].copy_(key_states)
        self._v[:, :, start:end].copy_(value_states)
        self._length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def _grow(self, needed: int) -> None:
        assert self._k is not None and self._v is not None
        room = max(needed, self._k.shape[-2] + _GROWTH)
        for name in ("_k", "_v"):
            old: torch.Tensor = getattr(self, name)
            new = old.new_empty(*old.shape[:2], room, old.shape[-1])
            new[:, :, : self._length].copy_(old[:, :, : self._length])
            setattr(self, name, new)

    def get_seq_length(self) -> int:
        return self._length

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` positions (transformers' negative-count convention)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of positions to remove")
        self._length = max(0, self._length + tokens_to_remove)
        if self._k is not None and self._v is not None:
            self.keys, self.values = self._k[:, :, : self._length], self._v[:, :, : self._length]

    def reset(self) -> None:
        self._length = 0
        self._k = self._v = None
        self.keys = self.values = None
        self.is_initialized = False

    def copied(self, length: int, capacity: int) -> GrowingLayer:
        """A new layer holding a copy of the first `length` positions, with room for `capacity` in all."""
        layer = GrowingLayer(capacity, self._store_dtype)
        if self._k is not None and self._v is not None and length > 0:
            layer.lazy_initialization(self._k[:, :, :length], self._v[:, :, :length])
            layer.update(self._k[:, :, :length], self._v[:, :, :length])
        return layer

    @property
    def nbytes(self) -> int:
        """Bytes held, spare room included."""
        if self._k is None or self._v is None:
            return 0
        return self._k.numel() * self._k.element_size() + self._v.numel() * self._v.element_size()


class KVCache(Cache):
    """Keys/values of every layer of one sequence, passed to a transformers model as `past_key_values`."""

    def __init__(self, layers: int, capacity: int = 0, dtype: torch.dtype | None = None) -> None:
        self.growing = [GrowingLayer(capacity, dtype) for _ in range(layers)]
        super().__init__(layers=list(self.growing))

    @classmethod
    def _of(cls, layers: list[GrowingLayer]) -> KVCache:
        cache = cls(0)
        cache.growing, cache.layers = layers, list(layers)
        return cache

    @property
    def length(self) -> int:
        """Positions held (the same in every layer)."""
        return self.growing[0].get_seq_length() if self.growing else 0

    @property
    def nbytes(self) -> int:
        """Bytes held by all layers, spare room included."""
        return sum(layer.nbytes for layer in self.growing)

    def copy_prefix(self, length: int, capacity: int) -> KVCache:
        """A private copy of the first `length` positions with room for `capacity` positions (no later regrowth)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot copy {length} positions of a cache holding {self.length}")
        return KVCache._of([layer.copied(length, max(capacity, length)) for layer in self.growing])


def layer_count(model: Any) -> int:
    """How many decoder layers `model` (or the PeftModel around it) has."""
    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None)
    if count is None and config is not None:
        count = getattr(config.get_text_config(decoder=True), "num_hidden_layers", None)
    if not count:
        raise ValueError("the model config names no num_hidden_layers")
    return int(count)
