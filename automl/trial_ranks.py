"""One trial's training on K data-parallel ranks (``automl search --gpus-per-trial K``).

Rank 0 is the trial-loop process itself: it trains exactly as a one-rank trial does and alone
talks to the study (epochs, pruning, heartbeats). Ranks 1..K-1 are fresh processes started for
the trial, each loading the data and building the plugin manager as rank 0 does, so they need
nothing but picklable settings. The ranks meet through a TCPStore that rank 0 serves on a free
port (:mod:`automl.distributed` does the training's collectives).

Nothing outlives the trial: when it ends, however it ends, rank 0 says so in the store and
leaves the process group; every other rank watches the store and exits (a collective waiting
for rank 0 would only time out: the DDP module keeps rank 0's side of the group open), and
rank 0 kills any rank still alive a moment later. A rank whose process dies (kill -9, a crash)
makes rank 0's next collective fail; the trial then fails with :class:`RankDied`, naming the
rank and how it ended, and is retried once like the trial of a dead worker. The other ranks
end by themselves when rank 0 dies (they watch their parent), and never receive the
terminal's Ctrl-C (their own process group): rank 0 handles it as a one-rank trial does, and
ends them.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from automl.distributed import TIMEOUT_ENV, timeout_seconds
from automl.errors import UserError

if TYPE_CHECKING:
    import pluggy

    from automl.recipe import Recipe
    from automl.search_context import Plugins, SearchContext
    from automl.search_settings import SearchSettings

__all__ = ["trial_ranks", "rank_devices", "RankFailed", "RankDied"]

#: ``manager(context, recipe) -> PluginManager``: how every rank builds its plugin manager (a
#: module-level function, so that it reaches the other ranks by name).
ManagerBuilder = Callable[["SearchContext", "Recipe"], "pluggy.PluginManager"]

_KEY = "automl/"  # our keys in the store, beside the process group's own
_STOP = _KEY + "stop"  # set by rank 0 when the trial ended: the other ranks exit
END_SECONDS = 10.0  # how long rank 0 waits for the other ranks to exit before killing them
_DEATH_SECONDS = 2.0  # after a collective failed: how long a dead rank may take to be reaped
_WATCH_SECONDS = 0.5  # how often a rank checks that rank 0 is still alive and training


class RankFailed(RuntimeError):
    """Another rank of the trial raised (its reason is the trial's); not retried, since it
    would fail again like an exception on rank 0."""

    retry = False


class RankDied(RankFailed):
    """Another rank's process ended without a reason (killed, crashed): the trial is retried
    once, like the trial of a worker that died."""

    retry = True


def rank_devices(device: str | None, size: int) -> tuple[str | None, ...]:
    """The device of each of a trial's ``size`` ranks when no GPU list is given: all on the
    CPU (gloo), or consecutive GPUs from ``device``'s (``cuda``: GPUs 0..size-1). ``device``
    None is the default device: CUDA when present, else the CPU."""
    if size == 1:
        return (device,)
    from automl.trainer import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cpu":
        return ("cpu",) * size
    if resolved.type != "cuda":
        raise UserError(f"--gpus-per-trial {size}: data-parallel ranks run on cpu or cuda, "
                        f"not {resolved.type}")
    first, count = resolved.index or 0, torch.cuda.device_count()
    if first + size > count:
        where = f" from cuda:{first} on" if first else ""
        raise UserError(f"--gpus-per-trial {size}: this machine has {count} CUDA GPU(s), "
                        f"{count - first}{where}; use --device cpu for CPU ranks")
    return tuple(f"cuda:{first + r}" for r in range(size))


@contextmanager
def trial_ranks(context: SearchContext, recipe: Recipe,
                manager: ManagerBuilder) -> Iterator[None]:
    """Inside: this process is rank 0 of ``context.settings.gpus_per_trial`` ranks training
    ``recipe`` (each other rank builds its manager with ``manager``); one rank: nothing.

    The block trains as on one rank. A failure of another rank replaces the error rank 0's
    collective raised with :class:`RankFailed` or :class:`RankDied`; any other error (a hook
    on rank 0, pruning, an interrupt) is rank 0's own and passes unchanged."""
    size = context.settings.gpus_per_trial
    if size == 1:
        yield
        return
    ranks = _Ranks(context, recipe, manager)
    try:
        ranks.start()
        yield
    except RankFailed:  # a rank ended while the others were starting
        raise
    except Exception as exc:  # not an interrupt: rank 0 handles those itself
        ended = ranks.ended_rank(wait=isinstance(exc, RuntimeError))
        if ended is not None:
            raise ended from exc
        raise
    finally:
        ranks.end()


class _Ranks:
    """Rank 0's view of one trial's other ranks: their processes and the store they meet at."""

    def __init__(self, context: SearchContext, recipe: Recipe, manager: ManagerBuilder):
        settings = context.settings
        self.context, self.recipe, self.manager = context, recipe, manager
        self.size = settings.gpus_per_trial
        self.devices = settings.rank_devices or rank_devices(str(context.device), self.size)
        if len(self.devices) != self.size:
            raise UserError(f"--gpus-per-trial {self.size}: {len(self.devices)} rank devices "
                            f"given ({', '.join(map(str, self.devices))})")
        self.threads = torch.get_num_threads()  # the trial's share of the cores: split below
        self.processes: list[multiprocessing.Process] = []
        self.store: torch.distributed.TCPStore | None = None

    def start(self) -> None:
        """Start ranks 1..K-1, wait until each is ready to join, then join the group."""
        from automl.distributed import init_process_group

        wait = datetime.timedelta(seconds=timeout_seconds())
        self.store = torch.distributed.TCPStore("127.0.0.1", 0, self.size, is_master=True,
                                                timeout=wait, wait_for_workers=False)
        per_rank = max(1, self.threads // self.size)
        torch.set_num_threads(per_rank)
        spawn = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        settings, plugins = self.context.settings, self.context.plugins
        for rank in range(1, self.size):
            process = spawn.Process(
                target=_rank_main, name=f"automl-rank-{rank}",
                args=(rank, self.size, self.store.port, self.devices[rank], self.recipe,
                      settings, plugins, self.manager, per_rank, os.getpid()))
            process.start()
            self.processes.append(process)
        self._await_ready()
        init_process_group(self.context.device, 0, self.size, store=self.store)

    def _await_ready(self) -> None:
        """Wait (interruptibly) until every rank has loaded its data and is about to join;
        a rank that ended meanwhile fails the trial at once, not after the timeout."""
        keys = [f"{_KEY}ready/{rank}" for rank in range(1, self.size)]
        deadline = time.monotonic() + timeout_seconds()
        while not self.store.check(keys):
            ended = self.ended_rank(wait=False, before_joining=True)
            if ended is not None:
                raise ended
            if time.monotonic() > deadline:
                raise RankFailed(f"the trial's ranks did not start within {timeout_seconds():g}"
                                 f" s ({TIMEOUT_ENV})")
            time.sleep(0.05)

    def ended_rank(self, wait: bool, before_joining: bool = False) -> RankFailed | None:
        """The error of the first rank that ended badly (or, ``before_joining``, at all);
        ``wait``: give a rank whose connection just closed a moment to be reaped."""
        deadline = time.monotonic() + (_DEATH_SECONDS if wait else 0)
        while True:
            for rank, process in enumerate(self.processes, start=1):
                if not process.is_alive() and (process.exitcode or before_joining):
                    return self._ending(rank, process)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _ending(self, rank: int, process: multiprocessing.Process) -> RankFailed:
        """How a rank ended, in one line: the error it reported, or its exit status."""
        who = f"rank {rank} (pid {process.pid})"
        key = f"{_KEY}error/{rank}"
        if self.store is not None and self.store.check([key]):
            return RankFailed(f"{who} failed: {self.store.get(key).decode()}")
        code = process.exitcode
        if code is not None and code < 0:
            try:
                name = f" ({signal.Signals(-code).name})"
            except ValueError:
                name = ""
            return RankDied(f"{who} died: killed by signal {-code}{name}")
        return RankDied(f"{who} died: exit code {code}")

    def end(self) -> None:
        """Tell the other ranks the trial ended, leave the group, wait for them to exit
        (killing those that do not), restore this process's threads. Runs however the
        trial ended."""
        from automl.distributed import shutdown

        try:
            if self.store is not None:
                self.store.set(_STOP, "1")  # they exit; an error they meet now is expected
            shutdown()
        finally:
            _end_processes(self.processes)
            torch.set_num_threads(self.threads)
            self.store = None  # the store's server stops with its last reference


def _end_processes(processes: list[multiprocessing.Process]) -> None:
    """Wait for ``processes`` to exit (at most :data:`END_SECONDS` together), then
    terminate, then kill those still alive: none is left behind."""
    deadline = time.monotonic() + END_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for stop in (multiprocessing.Process.terminate, multiprocessing.Process.kill):
        alive = [p for p in processes if p.is_alive()]
        for process in alive:
            stop(process)
        for process in alive:
            process.join(2.0)


def _rank_main(rank: int, size: int, port: int, device: str, recipe: Recipe,
               settings: SearchSettings, plugins: Plugins, manager: ManagerBuilder,
               threads: int, parent: int) -> None:
    """Rank ``rank`` of a trial, in its own process: train ``recipe`` with rank 0 until it
    ends, then exit: 0 when the training ended or rank 0 stopped it, 1 after any other error
    (reported to rank 0 through the store, and printed as one line)."""
    os.setpgid(0, 0)  # the terminal's Ctrl-C goes to rank 0, which ends this process
    _watch_rank_zero(parent, port, size)
    torch.set_num_threads(threads)
    wait = datetime.timedelta(seconds=timeout_seconds())
    store = torch.distributed.TCPStore("127.0.0.1", port, size, is_master=False, timeout=wait)
    code = _train_rank(rank, size, store, torch.device(device), recipe, settings, plugins,
                       manager)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: nothing of the group's threads can hang it


def _train_rank(rank: int, size: int, store, device: torch.device, recipe: Recipe,
                settings: SearchSettings, plugins: Plugins, manager: ManagerBuilder) -> int:
    """Load the data, build the manager as rank 0 does, join the group and train; the
    process's exit code."""
    from automl import distributed
    from automl.data import load_data
    from automl.failures import failure_reason
    from automl.report import SilentReporter
    from automl.search_context import SearchContext
    from automl.trainer import train

    pm = None
    try:
        context = SearchContext(settings, SilentReporter(), device, plugins,
                                plugins.technique_catalog())
        data = load_data(recipe.data)
        pm = manager(context, recipe)
        store.set(f"{_KEY}ready/{rank}", "1")
        distributed.init_process_group(device, rank, size, store=store)
        train(recipe, data, pm, device=device, compile=settings.compile)
    except distributed.StoppedByRankZero:
        pass  # rank 0 pruned or stopped the trial
    except Exception as exc:
        return _report_failure(rank, store, failure_reason(exc, pm))
    finally:
        try:
            distributed.shutdown()
        except Exception:  # rank 0 left first: nothing to leave
            pass
    return 0


def _report_failure(rank: int, store, reason: str) -> int:
    """After an error on this rank: tell rank 0 why and say it once; quiet when rank 0 had
    already ended the trial or is gone (the error is then the closed group). The exit code."""
    try:
        if store.check([_STOP]):
            return 0
        store.set(f"{_KEY}error/{rank}", reason)
    except Exception:  # rank 0 is gone, and its store with it
        return 1
    print(f"automl: rank {rank} (pid {os.getpid()}): {reason}", file=sys.stderr)
    return 1


def _watch_rank_zero(parent: int, port: int, size: int) -> None:
    """Exit at once when rank 0 ended the trial (quietly: a collective waiting for it would
    only time out) or its process is gone (killed): no rank outlives its trial."""
    def watch():
        wait = datetime.timedelta(seconds=timeout_seconds())
        store = torch.distributed.TCPStore("127.0.0.1", port, size, is_master=False,
                                           timeout=wait)  # its own connection
        while os.getppid() == parent:
            try:
                if store.check([_STOP]):
                    os._exit(0)
            except Exception:  # the store is gone with rank 0
                break
            time.sleep(_WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="automl-watch-rank-0", daemon=True).start()
