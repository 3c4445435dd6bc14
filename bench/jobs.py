"""Trials per minute of one search with ``--jobs 1`` against ``--jobs N`` on one device.

A small model leaves a GPU mostly idle, so ``--jobs N`` (N worker processes on one study)
should finish the same trials sooner. Runs ``automl search`` as a user would, in a temporary
run directory, once per job count, on the shipped ``default`` space (digits, automl_resnet8)
with warm start, confirmation and pruning off so every run trains the same kind of trials;
the figure is the wall time of each whole command (worker start-up included) and the speedup
of N jobs over one.

    python -m bench.jobs [--quick] [--jobs N] [--trials N] [--epochs N] [--device cuda]

``--quick`` runs 2 one-epoch trials with 1 and 2 jobs (a smoke run; on a CPU the workers only
share its cores, so its speedup says nothing about a GPU).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from automl.cli import resolve_space_path
from automl.trainer import resolve_device

from .common import device_name, report


def search_seconds(jobs: int, trials: int, epochs: int, device: str, run_dir: Path) -> float:
    """Wall seconds of one ``automl search`` with ``jobs`` workers (fails loudly if it fails)."""
    space = run_dir / "space.yaml"
    text = resolve_space_path("default").read_text()
    space.write_text(re.sub(r"(?m)^epochs: \d+$", f"epochs: {epochs}", text))
    command = [sys.executable, "-c", "from automl.cli import main; main()", "search",
               str(space), "--n-trials", str(trials), "--jobs", str(jobs), "--device", device,
               "--out", str(run_dir / f"jobs{jobs}"), "--no-warm-start", "--confirm-top", "0",
               "--pruner", "none"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 one-epoch trials, 1 and 2 jobs")
    parser.add_argument("--jobs", type=int, default=4, help="the parallel run's job count")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.trials, args.epochs = 2, 2, 1
    device = resolve_device(args.device)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in (1, args.jobs):
            seconds[jobs] = search_seconds(jobs, args.trials, args.epochs, str(device), Path(tmp))
            print(f"--jobs {jobs:<3} {args.trials} trials in {seconds[jobs]:7.1f} s "
                  f"({60 * args.trials / seconds[jobs]:.1f} trials/min)", flush=True)
    speedup = seconds[1] / seconds[args.jobs]
    print(f"speedup of --jobs {args.jobs} over --jobs 1: {speedup:.2f}x")
    report("jobs", {
        "benchmark": "jobs", "device": device_name(device), "quick": args.quick,
        "gpu_count": torch.cuda.device_count() if device.type == "cuda" else 0,
        "trials": args.trials, "epochs": args.epochs, "jobs": args.jobs,
        "seconds": {str(j): round(s, 1) for j, s in seconds.items()},
        "trials_per_minute": {str(j): round(60 * args.trials / s, 2) for j, s in seconds.items()},
        "speedup": round(speedup, 3)})


if __name__ == "__main__":
    main()
