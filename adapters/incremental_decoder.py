"""Streaming text out of token ids pushed one at a time, never splitting a UTF-8 character."""

from __future__ import annotations

from typing import Any


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
