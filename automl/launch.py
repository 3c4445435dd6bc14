"""``automl train --nproc N``: the same command on N ranks, started by torchrun's launcher.

PyTorch's elastic agent starts the ranks, gives each its RANK / WORLD_SIZE / LOCAL_RANK and
the rendezvous address, watches them, and ends all of them when one fails. Each rank runs
``python -m automl`` with this process's own arguments; the launch options are then read by
nobody, since a process that torchrun started only joins the group
(:func:`automl.distributed.init_from_env`).
"""

from __future__ import annotations

from collections.abc import Sequence

from automl.errors import UserError

__all__ = ["launch", "RankFailed"]


class RankFailed(UserError):
    """A rank of a multi-process training failed: said in one line, exit code 1 (the cause
    is in that rank's own output above)."""

    exit_code = 1


def launch(argv: Sequence[str], *, nproc: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: str = "127.0.0.1", master_port: int | None = None) -> None:
    """Run ``automl ARGV`` on ``nproc`` ranks here (``nnodes`` machines: every machine runs
    the same command with its own ``node_rank``; they meet at ``master_addr:master_port``).
    A failed rank ends them all; raises :class:`RankFailed` naming it."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if not 0 <= node_rank < nnodes:
        raise UserError(f"--node-rank {node_rank}: expected 0..{nnodes - 1} (--nnodes {nnodes})")
    if nnodes > 1 and master_port is None:
        raise UserError("--nnodes > 1 needs --master-addr and --master-port (the same on "
                        "every machine: where node 0 listens)")
    options = [f"--nproc-per-node={nproc}", f"--nnodes={nnodes}", f"--node-rank={node_rank}"]
    if nnodes == 1 and master_port is None:
        options.append("--standalone")  # a free port on this machine
    else:
        options += [f"--master-addr={master_addr}", f"--master-port={master_port}"]
    args = get_args_parser().parse_args([*options, "-m", "automl"])
    args.training_script_args = list(argv)  # never parsed as torchrun's own options
    try:
        run(args)
    except ChildFailedError as exc:
        failures = exc.failures
        first = min(failures, key=lambda rank: failures[rank].timestamp)
        failure = failures[first]
        how = (f"killed by signal {failure.signal_name()}" if failure.exitcode < 0
               else f"exit code {failure.exitcode}")
        raise RankFailed(f"rank {first} of automl {' '.join(argv[:1])} failed ({how}); the "
                        "other ranks were stopped") from None
