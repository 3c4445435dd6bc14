"""Peak host memory of a Fashion-MNIST search, and GPU memory after every trial.

Runs the shipped ``fashion_mnist`` space (1 epoch per trial) in this process through
``automl.search.run_search`` with a journal file in a temporary directory. Host: the peak
resident set size of the process (``ru_maxrss``) after the search, against the same figure
after imports and data loading (the baseline). GPU (CUDA only): memory allocated by tensors
after each trial has ended, against the amount allocated once the data is on the device;
the figure is the largest excess over that baseline. Targets: host peak < 4 GiB; GPU back at
its baseline after every trial.

    python -m bench.memory [--quick] [--trials N] [--device cuda]

``--quick`` searches the embedded digits data instead (the ``default`` space).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from automl.cli import resolve_space_path
from automl.data import load_data
from automl.discovery import technique_catalog
from automl.report import SilentReporter
from automl.search import SearchSettings, run_search
from automl.space import load_space
from automl.trainer import resolve_device

from .common import device_name, report

GIB = 1 << 30


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryReporter(SilentReporter):
    """Quiet, except for the memory after each trial."""

    def __init__(self, device: torch.device):
        self.device, self.gpu_baseline, self.gpu_after = device, None, []

    def trial_start(self, trial, recipe) -> None:
        if self.device.type == "cuda" and self.gpu_baseline is None:
            self.gpu_baseline = torch.cuda.memory_allocated(self.device)

    def trial_end(self, study, trial, new_best) -> None:
        gpu = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        self.gpu_after.append(gpu)
        print(f"trial {trial.number:>3}  {trial.state.name.lower():<8}  host peak "
              f"{peak_rss() / GIB:5.2f} GiB  GPU allocated {gpu / 2**20:8.1f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits instead of Fashion-MNIST")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    name = "default" if args.quick else "fashion_mnist"
    space = load_space(resolve_space_path(name), technique_catalog())
    space = replace(space, epochs=1)
    device = resolve_device(args.device)
    load_data(space.data)
    baseline = peak_rss()
    reporter = MemoryReporter(device)
    with tempfile.TemporaryDirectory() as tmp:
        settings = SearchSettings.from_space(space, study_name=name, run_dir=Path(tmp),
                                             device=str(device), n_trials=args.trials)
        run_search(space, settings, reporter)
    peak = peak_rss()
    gpu_excess = (max(reporter.gpu_after) - reporter.gpu_baseline
                  if reporter.gpu_baseline is not None else None)
    print(f"\nhost peak {peak / GIB:.2f} GiB (after imports and data: {baseline / GIB:.2f} GiB,"
          f" ratio {peak / baseline:.2f}); target < 4 GiB")
    if gpu_excess is not None:
        print(f"GPU: largest excess over the baseline after a trial {gpu_excess / 2**20:.1f} MiB")
    report("memory", {
        "benchmark": "memory", "device": device_name(device), "dataset": space.data["dataset"],
        "trials": args.trials, "epochs_per_trial": 1, "quick": args.quick,
        "host_peak_gib": round(peak / GIB, 3), "host_baseline_gib": round(baseline / GIB, 3),
        "host_peak_ratio": round(peak / baseline, 3), "host_target_met": peak < 4 * GIB,
        "gpu_excess_after_trial_mib": None if gpu_excess is None else round(gpu_excess / 2**20, 2),
    })


if __name__ == "__main__":
    main()
