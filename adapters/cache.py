"""Cache folders under the user's XDG cache dir, written atomically and rebuilt when broken."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from assistant.config import cache_dir

COMPLETE_MARKER = ".complete.json"


def cache_path(*parts: str) -> Path:
    """A path inside the app's cache dir (not created)."""
    return cache_dir().joinpath(*parts)


def sha256_file(path: Path, chunk: int = 1 << 20, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, streaming; `progress` gets the bytes read per chunk."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


def is_complete(folder: Path, expect: dict[str, object] | None = None) -> bool:
    """True when `folder` was finished by `atomic_dir` (and its recorded facts match `expect`)."""
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        facts = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(facts.get(k) == v for k, v in (expect or {}).items())


@contextmanager
def atomic_dir(final: Path, facts: dict[str, object] | None = None, marker: bool = True) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final` with a completion marker.

    A crash or Ctrl-C leaves at most a stray temp folder, never a half-written `final`.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=final.parent))
    try:
        yield tmp
        if marker:  # off for folders whose readers check their own contents (training checkpoints)
            (tmp / COMPLETE_MARKER).write_text(json.dumps(facts or {}, ensure_ascii=False), encoding="utf-8")
        swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(folder: Path, final: Path) -> None:
    """Put a finished `folder` at `final` (same filesystem), replacing what was there.

    Two renames: a crash between them leaves the old folder under a hidden name, never a mix.
    """
    if final.exists():
        old = final.with_name(f".{final.name}.old{os.getpid()}")
        os.replace(final, old)
        os.replace(folder, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(folder, final)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so readers see the old or the new content, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
