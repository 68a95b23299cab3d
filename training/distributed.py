"""Data-parallel training under torchrun / accelerate launch: found from the environment, a no-op in one process."""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from adapters.device import pick_device
from assistant.errors import AssistantError

T = TypeVar("T")

#: Training collectives wait for the slowest rank's micro-batches and rank 0's checkpoint writes.
STEP_TIMEOUT = timedelta(minutes=30)
#: The other ranks wait this long while rank 0 alone checks the route, evaluates, installs and refits.
MAIN_WORK_TIMEOUT = timedelta(hours=1)

_control: Any = None  # gloo group for flags and small objects (CPU even beside NCCL), with the long timeout
_owned = False  # this module joined the group (and so may leave it)


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int = 0
    size: int = 1


class RankStopped(AssistantError):
    """Rank 0 failed in work only it does; the other ranks stop with its message instead of waiting."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(f"rank 0 stopped: {message}")
        self.exit_code = exit_code


def world() -> World:
    """(rank, size) of the running process group; (0, 1) in a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def active() -> bool:
    return world().size > 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one rank that logs and writes files."""
    return world().rank == 0


@contextmanager
def session(device: str) -> Iterator[World]:
    """The launcher's process group around a job: joined once per process when WORLD_SIZE > 1.

    `device` is the setting ('auto', 'cpu', 'cuda'): NCCL with one GPU per process on CUDA, else gloo.

    A job that fails leaves the group at once, so its peers see the connection close instead of
    waiting out a timeout. After success the group stays for the next job in this process (a group
    cannot be joined twice under torchrun) and is left at exit.
    """
    _join(device)
    try:
        yield world()
    except BaseException:
        if _owned:
            leave()
        raise


def _join(device_setting: str) -> None:
    global _control, _owned
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return
    if not dist.is_initialized():
        device, _ = pick_device(device_setting)
        if device == "cuda":  # one GPU per process; the base loads onto the current device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=STEP_TIMEOUT)
        _owned = True
        atexit.register(leave)
    if _control is None:
        _control = dist.new_group(backend="gloo", timeout=MAIN_WORK_TIMEOUT)
    if not is_main():
        _quiet_progress_bars()


def _quiet_progress_bars() -> None:
    """Rank 0's progress bars are the job's; the other ranks' would only repeat them (tokenizing, loading)."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()


def leave() -> None:
    """Destroy the process group this module joined; safe to call twice."""
    global _control, _owned
    _control = None
    if _owned and dist.is_initialized():
        _owned = False
        with suppress(RuntimeError):  # a peer that is already gone must not turn an exit into a crash
            dist.destroy_process_group()


# -- data ---------------------------------------------------------------------------------


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share: every size-th item from position rank (all of them in one process)."""
    w = world()
    return list(items[w.rank :: w.size])


def gather_shards(mine: list[T]) -> list[T]:
    """Every rank's `shard` results put back into the original order, on every rank."""
    w = world()
    if w.size == 1:
        return mine
    parts: list[Any] = [None] * w.size
    dist.all_gather_object(parts, mine, group=_control)
    merged: list[T] = []
    for position in range(max(len(part) for part in parts)):
        merged += [part[position] for part in parts if position < len(part)]
    return merged


# -- training -----------------------------------------------------------------------------


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (a stop request reaches the ranks at different moments)."""
    if not active():
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_control)
    return bool(value.item())


def all_reduce_grads(params: Sequence[torch.nn.Parameter], loss: float) -> float:
    """Sum the LoRA gradients and the step's loss over the ranks; the summed loss.

    A sum, not a mean: each rank divides its loss by the labelled tokens of the whole global step,
    so the sum is exactly the gradient one process computes on the whole step. One flat tensor:
    a single collective per optimizer step.
    """
    if not active():
        return loss
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    device = grads[0].device if grads else torch.device("cpu")
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [torch.tensor([loss], device=device)])
    dist.all_reduce(flat)
    offset = 0
    for param, grad in zip(params, grads, strict=True):
        param.grad = flat[offset : offset + grad.numel()].view_as(grad).to(grad.dtype)
        offset += grad.numel()
    return float(flat[-1])


def broadcast_params(params: Sequence[torch.nn.Parameter]) -> None:
    """Give every rank rank 0's weights (whatever each drew or read, they start the same)."""
    if not active():
        return
    with torch.no_grad():
        for param in params:
            dist.broadcast(param.data, src=0)


# -- work only rank 0 does ----------------------------------------------------------------


@contextmanager
def main_work() -> Iterator[Callable[[Any], None]]:
    """Rank 0's side of work the other ranks wait for (`await_main`); yields `share(value)`.

    On exit the others receive the shared value (None unless `share` was called), or rank 0's
    failure, which they raise as RankStopped: no rank waits for a peer that gave up.
    """
    shared: list[Any] = [None]
    try:
        yield lambda value: shared.__setitem__(0, value)
    except BaseException as exc:
        code = 130 if isinstance(exc, KeyboardInterrupt) else int(getattr(exc, "exit_code", 1))
        with suppress(RuntimeError):  # the others may be gone already; rank 0's own error matters more
            _send(("failed", str(exc) or type(exc).__name__, code))
        raise
    _send(("done", shared[0]))


def await_main() -> Any:
    """The other ranks' side of `main_work`: wait (at most MAIN_WORK_TIMEOUT) and return what rank 0 shared."""
    if not active():
        return None
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, group=_control)
    status = box[0]
    if status[0] == "failed":
        raise RankStopped(status[1], status[2])
    return status[1]


def main_only(work: Callable[[], T]) -> T | None:
    """`work()` on rank 0 while the others wait; None on the others."""
    if not is_main():
        await_main()
        return None
    with main_work():
        return work()


def main_first(work: Callable[[], T]) -> T:
    """`work()` on rank 0, then on the others: what it writes once (model caches) is there for them to read."""
    if not is_main():
        await_main()
        return work()
    with main_work():
        return work()


def _send(message: tuple[Any, ...]) -> None:
    if active():
        dist.broadcast_object_list([message], src=0, group=_control)
