"""Data-parallel training on torch.distributed: where this process stands, and the few
collectives the trainer needs.

One training runs on ``size`` ranks (processes), each on its own device. Every rank draws the
same randomness for the whole global batch (order, augmentation, mixing), then keeps its share
of the batch for forward and backward; DistributedDataParallel averages the gradients, and the
metrics are summed across ranks. Nothing here runs on one process: ``world().size == 1``
without an initialised process group, and every helper is then the identity.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["World", "world", "init_process_group", "init_from_env", "shutdown",
           "StoppedByRankZero", "share", "sum_across", "agree_on_stop",
           "one_process", "timeout_seconds", "TIMEOUT_ENV", "RANK_ENV", "run_on_ranks",
           "join_store"]

#: Seconds a collective waits for the other ranks before it fails (a dead or stuck rank).
TIMEOUT_ENV = "AUTOML_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300
#: Set by torchrun in every rank's environment.
RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

_local_only = False  # inside :func:`one_process` (a stage): this process trains alone


@dataclass(frozen=True)
class World:
    """This process's place in the training: ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that talks to the study and writes the outputs."""
        return self.rank == 0


class StoppedByRankZero(RuntimeError):
    """Rank 0 ended the training (pruned, interrupted, failed after an epoch); this rank
    stops with it instead of waiting in a collective nobody else joins."""


def world() -> World:
    """This process's rank and the number of ranks (one, when no process group is up)."""
    dist = torch.distributed
    if _local_only or not dist.is_available() or not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size())


def timeout_seconds() -> float:
    """How long a collective waits for the other ranks (``AUTOML_DIST_TIMEOUT``)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        from automl.errors import UserError
        raise UserError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None


def backend_for(device: torch.device) -> str:
    """nccl between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(device: torch.device, rank: int, size: int, *,
                       store: torch.distributed.Store | None = None,
                       timeout: float | None = None) -> World:
    """Join the training's process group as ``rank`` of ``size`` (``store``: where the ranks
    meet; None: the MASTER_ADDR/MASTER_PORT environment, as torchrun sets it)."""
    dist = torch.distributed
    if device.type == "cuda":
        torch.cuda.set_device(device)
    wait = datetime.timedelta(seconds=timeout if timeout is not None else timeout_seconds())
    kwargs = {"store": store} if store is not None else {"init_method": "env://"}
    dist.init_process_group(backend_for(device), rank=rank, world_size=size, timeout=wait,
                            **kwargs)
    return world()


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher using its environment) started this process."""
    return all(name in os.environ for name in RANK_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: torch.device) -> World:
    """Join the process group torchrun's environment describes; one process: nothing to do.
    The device's GPU number is the local rank (cuda → cuda:LOCAL_RANK)."""
    if not launched_by_torchrun():
        return world()
    return init_process_group(device, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun, each rank's own GPU (``cuda`` → ``cuda:LOCAL_RANK``); one GPU named
    for several ranks is refused (NCCL cannot put two ranks on one GPU)."""
    if device.type != "cuda" or not launched_by_torchrun():
        return device
    if device.index is not None:
        from automl.errors import UserError
        raise UserError(f"--device {device}: names one GPU for {os.environ['WORLD_SIZE']} "
                        "ranks; use --device cuda (rank r trains on cuda:LOCAL_RANK)")
    return torch.device("cuda", int(os.environ["LOCAL_RANK"]))


def shutdown() -> None:
    """Leave the process group (if any), so the next training can start another."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def one_process() -> Iterator[None]:
    """Train alone inside this block although a process group is up: a stage (a teacher)
    is built by whichever rank takes its lock, not by all ranks together."""
    global _local_only
    before, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = before


def share(tensor: torch.Tensor, here: World) -> torch.Tensor:
    """This rank's consecutive share of a global batch (along the first dimension): equal
    shares, the first ``len % size`` ranks one more."""
    if here.size == 1:
        return tensor
    return tensor.tensor_split(here.size)[here.rank]


def sum_across(tensor: torch.Tensor, here: World) -> torch.Tensor:
    """``tensor`` summed over all ranks, in place (identity on one process)."""
    if here.size > 1:
        torch.distributed.all_reduce(tensor)
    return tensor


def agree_on_stop(error: BaseException | None, device: torch.device, here: World) -> None:
    """After rank 0's epoch callback: every rank learns whether it raised. Rank 0 re-raises
    its own error; the others raise :class:`StoppedByRankZero`."""
    if here.size == 1:
        if error is not None:
            raise error
        return
    flag = torch.tensor([0 if error is None else 1], device=device)
    torch.distributed.broadcast(flag, src=0)
    if here.is_main and error is not None:
        raise error
    if flag.item():
        raise StoppedByRankZero("rank 0 ended the training after this epoch")


def run_on_ranks(target: Callable[..., None], size: int, args: tuple = (), *,
                 timeout: float = 120.0) -> dict[int, Any]:
    """Run ``target(rank, size, port, *args, results)`` in ``size`` spawned processes that
    meet on a TCPStore this process serves at ``port`` (see :func:`join_store`); each puts
    ``(rank, value)`` on ``results``. Every rank's value; TimeoutError when a rank gives none
    within ``timeout`` seconds. No process outlives the call. (Tests and benchmarks: what
    ``automl train --nproc`` does with torchrun, in a few lines and without its logs.)"""
    import multiprocessing
    import queue as queues

    store = torch.distributed.TCPStore("127.0.0.1", 0, size + 1, True, wait_for_workers=False)
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    results = context.Queue()
    processes = [context.Process(target=target, args=(rank, size, store.port, *args, results))
                 for rank in range(size)]
    for process in processes:
        process.start()
    try:
        return dict(results.get(timeout=timeout) for _ in processes)
    except queues.Empty:
        raise TimeoutError(f"a rank gave no result within {timeout} s") from None
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


def join_store(device: torch.device, rank: int, size: int, port: int,
               timeout: float | None = None) -> World:
    """In a process :func:`run_on_ranks` started: join the group through its store."""
    store = torch.distributed.TCPStore("127.0.0.1", port, size + 1, False)
    return init_process_group(device, rank, size, store=store, timeout=timeout)
