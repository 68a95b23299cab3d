"""Cache folders under the user's XDG cache dir: written atomically, verified by content, rebuilt when damaged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from assistant.config import cache_dir

#: Written last into every finished cache folder: the facts it was built from plus the size and
#: sha256 of each of its files.
COMPLETE_MARKER = ".complete.json"
#: Side record of files already verified: (size, mtime_ns) -> sha256, so later loads only stat them.
STAMPS = ".verified-stamps.json"
#: A file rewritten within the filesystem's timestamp granularity can keep its mtime, so a stamp is
#: only kept for files older than this when checked (git's "racy clean" rule); 2 s covers FAT/HFS+.
_RACY_NS = 2_000_000_000
_BOOKKEEPING = (COMPLETE_MARKER, STAMPS)


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


class DigestMemo:
    """sha256 of files remembered by (size, mtime_ns) in a small JSON file: each file is hashed once.

    A file whose size or mtime changed is hashed again. Content rewritten while keeping both
    (deliberately restoring the mtime) is not noticed: the price of not re-reading gigabytes per start.
    """

    def __init__(self, record: Path) -> None:
        self.record = record
        self._changed = False
        try:
            loaded = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = {}
        # Anything but an entry (e.g. an older record layout) is dropped: those files are hashed again.
        items = loaded.items() if isinstance(loaded, dict) else ()
        self._entries: dict[str, Any] = {k: v for k, v in items if isinstance(v, dict)}

    def remembered(self, path: Path, key: str) -> str | None:
        """The sha256 recorded under `key` if `path` still has the size and mtime it was hashed at."""
        st = path.stat()
        entry = self._entries.get(key)
        if (
            isinstance(entry, dict)
            and entry.get("size") == st.st_size
            and entry.get("mtime_ns") == st.st_mtime_ns
            and isinstance(entry.get("sha256"), str)
        ):
            return str(entry["sha256"])
        return None

    def sha256(self, path: Path, key: str) -> str:
        """The sha256 of `path` (remembered under `key`), hashing only when its stat changed."""
        known = self.remembered(path, key)
        if known is not None:
            return known
        st = path.stat()  # before reading: a write during hashing then shows as a changed mtime
        digest = sha256_file(path)
        if time.time_ns() - st.st_mtime_ns > _RACY_NS:
            self._entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
            self._changed = True
        elif self._entries.pop(key, None) is not None:  # too fresh for its mtime to prove a later change
            self._changed = True
        return digest

    def save(self) -> None:
        """Write the record if anything was hashed; a read-only cache just hashes again next time."""
        if not self._changed:
            return
        try:
            atomic_write_bytes(self.record, json.dumps(self._entries, indent=1).encode())
        except OSError:
            pass
        self._changed = False


def _file_digests(folder: Path) -> dict[str, dict[str, object]]:
    """{relative path: {"size", "sha256"}} of every file in `folder` except the cache's own bookkeeping."""
    return {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in _BOOKKEEPING
    }


@dataclass(frozen=True)
class CacheCheck:
    """What `check_cache` found in a cache folder, and why it cannot be used when it cannot."""

    folder: Path
    state: Literal["ok", "missing", "stale", "damaged"]
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def announce_rebuild(self) -> None:
        """Say on stderr why an existing folder is about to be rebuilt (nothing to say when it was missing)."""
        if self.state in ("damaged", "stale"):
            what = "damaged" if self.state == "damaged" else "out of date"
            print(f"cache {self.folder} is {what} ({self.reason}): rebuilding", file=sys.stderr, flush=True)


def check_cache(folder: Path, expect: dict[str, object] | None = None) -> CacheCheck:
    """Whether `folder` is a finished cache built from `expect` whose files still hold what was written.

    Files are hashed against the marker's sha256 the first time (and whenever their size or mtime
    changed since); afterwards a stat per file is enough (see DigestMemo).
    """

    def damaged(reason: str) -> CacheCheck:
        return CacheCheck(folder, "damaged", reason)

    if not folder.exists():
        return CacheCheck(folder, "missing")
    try:
        facts = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return damaged(f"no {COMPLETE_MARKER}: it was never finished")
    except (OSError, ValueError) as exc:
        return damaged(f"file {COMPLETE_MARKER} is unreadable: {exc}")
    if not isinstance(facts, dict):
        return damaged(f"file {COMPLETE_MARKER} is not a JSON object")
    differ = [f"{k} {facts.get(k)!r}, now {v!r}" for k, v in (expect or {}).items() if facts.get(k) != v]
    if differ:
        return CacheCheck(folder, "stale", "; ".join(differ))
    files = facts.get("files")
    if not isinstance(files, dict) or not files or not all(_is_digest(v) for v in files.values()):
        return damaged("no file checksums recorded: written by an older version")
    memo = DigestMemo(folder / STAMPS)
    for name, want in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
            if size != want["size"]:
                return damaged(f"file {name} has {size:,} bytes, {want['size']:,} were written")
            if memo.sha256(path, name) != want["sha256"]:
                return damaged(f"file {name} no longer matches the sha256 recorded when it was written")
        except FileNotFoundError:
            return damaged(f"file {name} is missing")
        except OSError as exc:
            return damaged(f"file {name} is unreadable: {exc.strerror or exc}")
    memo.save()
    return CacheCheck(folder, "ok")


def _is_digest(entry: object) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)


@contextmanager
def atomic_dir(final: Path, facts: dict[str, object] | None = None, marker: bool = True) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final` with a completion marker.

    The marker holds `facts` (read on exit, so facts added inside the block are kept) and the size
    and sha256 of every file, which `check_cache` verifies. A crash or Ctrl-C leaves at most a stray
    temp folder, never a half-written `final`.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=final.parent))
    try:
        yield tmp
        if marker:  # off for folders whose readers check their own contents (training checkpoints)
            record = {**(facts or {}), "files": _file_digests(tmp)}
            (tmp / COMPLETE_MARKER).write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
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
