"""Start-up time of the commands that do not train, against the interpreter and torch in one run.

Each command is the installed ``automl`` console script run as a user runs it, in a fresh
process from a temporary folder, timed from launch to exit (wall clock). Two references are
measured in the same rounds: ``python -c pass`` (the interpreter alone, a floor no command
can beat) and ``python -c "import torch, timm"`` (what every command paid before it started
when the CLI imported them for every command). Rounds run every command and reference once,
in turn, so a change in machine load hits them all alike; a figure is the median of its
rounds. Ratios are command / ``import torch, timm`` (below 1: faster than importing torch
alone) and the seconds above the bare interpreter. The target (printed under the table) is
a median under ``TARGET_S`` for every command. The 1-minute load average (the higher of its
values at the start and at the end) is saved: compare absolute times only on an idle machine;
the ratios hold up better under load.

    python -m bench.startup [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import report

TARGET_S = 0.5  # "well under a second"
SCRIPT = Path(sys.executable).parent / "automl"
AUTOML = str(SCRIPT) if SCRIPT.exists() else shutil.which("automl")
REFERENCES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch, timm'": [sys.executable, "-c", "import torch, timm"],
}
COMMANDS = ("--version", "--help", "search --help", "train --help", "plugins", "techniques",
            "techniques label_smoothing")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one) and its usable cores."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def seconds(argv: list[str], cwd: str) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    assert AUTOML, "the automl console script is not installed"
    rounds = 3 if args.quick else args.rounds
    runs = {**REFERENCES, **{f"automl {c}": [AUTOML, *c.split()] for c in COMMANDS}}
    times: dict[str, list[float]] = {name: [] for name in runs}
    load = os.getloadavg()[0]  # other work on a shared machine skews the figures
    with tempfile.TemporaryDirectory() as cwd:
        for argv in runs.values():  # warm-up: the file cache and bytecode
            seconds(argv, cwd)
        for _ in range(rounds):
            for name, argv in runs.items():
                times[name].append(seconds(argv, cwd))
    load = max(load, os.getloadavg()[0])
    median = {name: statistics.median(values) for name, values in times.items()}
    bare, torch_s = median["python -c pass"], median["python -c 'import torch, timm'"]
    print(f"{'command':<36} {'median s':>9} {'min s':>7} {'above python':>13} "
          f"{'/ torch+timm':>13}")
    for name, values in times.items():
        print(f"{name:<36} {median[name]:>9.3f} {min(values):>7.3f} "
              f"{median[name] - bare:>13.3f} {median[name] / torch_s:>13.2f}")
    slowest = max(median[f"automl {c}"] for c in COMMANDS)
    print(f"target: every command's median < {TARGET_S} s; slowest {slowest:.3f} s "
          f"({slowest / torch_s:.2f}× importing torch and timm); load average {load:.2f}")
    report("startup", {
        "benchmark": "startup",
        "device": f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores",
        "cpu": cpu_name(),
        "quick": args.quick, "rounds": rounds, "python": platform.python_version(),
        "seconds": {name: round(m, 4) for name, m in median.items()},
        "min_seconds": {name: round(min(v), 4) for name, v in times.items()},
        "ratio_to_import_torch": {f"automl {c}": round(median[f"automl {c}"] / torch_s, 3)
                                  for c in COMMANDS},
        "above_python_s": {f"automl {c}": round(median[f"automl {c}"] - bare, 4)
                           for c in COMMANDS},
        "target_s": TARGET_S, "slowest_s": round(slowest, 4), "target_met": slowest < TARGET_S,
        "load_average": round(load, 2),
    })


if __name__ == "__main__":
    main()
