"""A background server as a process group of its own: spawn it, tell whether it lives, end all of it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from assistant.errors import GenerationFailed


def spawn(argv: list[str], env: dict[str, str], log_file: Path) -> int:
    """Start `argv` in a new session (its own process group, so its workers can be ended with it); returns its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return process.pid


def group_alive(pgid: int) -> bool:
    """True while any process of group `pgid` is alive (a finished leader that is our own child is reaped first)."""
    if pgid <= 1:
        return False
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leader_runs(pid: int, needle: str) -> bool:
    """False when process `pid` lives but runs something else (its id was reused); True otherwise."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # the leader is gone (its workers may not be) or there is no /proc: trust the group
    return needle.encode() in cmdline


def stop_group(pgid: int, log: Callable[[str], None], grace_s: float = 60.0) -> None:
    """SIGTERM to the whole group, then wait; SIGKILL whatever is left after `grace_s`."""
    if pgid <= 1 or pgid == os.getpgrp():
        # A damaged record must never turn into a signal to init's group or to our own.
        raise GenerationFailed(f"refusing to signal process group {pgid}: it is not a server of ours")
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.2)
        if sig == signal.SIGTERM:
            log(f"still running {grace_s:.0f} s after SIGTERM: sending SIGKILL to process group {pgid}")
    if group_alive(pgid):
        raise GenerationFailed(f"could not end the processes of group {pgid}", f"end them by hand: kill -9 -{pgid}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
