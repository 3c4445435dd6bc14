"""Every GPU measurement of the README in one command, sized for a GPU lent for a few minutes.

Runs, one after the other and each in its own process (time_to_accuracy times from process
start, memory reads the process's peak), the benchmarks whose GPU figures the README asks for:
throughput ratio, time to 94% (plain and with ``--compile``), memory back at baseline after
each trial, trial overhead, ``--jobs`` on one GPU and data-parallel scaling of one training
from 1 GPU to all of the machine's (``dispatch`` is a CPU measurement and is left out), at
sizes that fit
``--budget`` seconds (default 470, under 8 minutes on one GPU with Fashion-MNIST installed).
Each benchmark writes its own result file as it always does (``bench/results/NAME-<device>.json``,
or the ``--results`` folder); this command adds ``gpu-<device>.json`` with every headline
figure and prints them as a table. A benchmark that fails or runs out of budget is reported as
such, and the others still run.

    python -m bench.gpu [--quick] [--device cuda] [--budget SECONDS] [--only NAME,...]
                        [--results DIR]

``--quick`` runs each benchmark at its smallest size on whatever device there is, with no
budget, to check the command end to end (a CPU in CI; under 2 minutes on a 2-core CPU, 6-8
minutes when other work keeps its load average at 6-14, mostly process start-up: every
benchmark and every ``--jobs`` worker imports torch); it leaves out ``--compile`` (compiling
takes minutes on a CPU), and its figures say nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from automl.trainer import resolve_device

from .common import device_name, report


@dataclass(frozen=True)
class Step:
    """One benchmark run: its module, arguments (full and --quick), the most seconds it may
    take of the budget, and the headline it contributes to the summary."""

    name: str
    module: str
    full: tuple[str, ...]
    quick: tuple[str, ...] | None  # None: left out of --quick
    cap_s: float
    headline: Callable[[dict], str]


def _seconds_to(result: dict) -> str:
    seconds = result["seconds_to"]["94%"]
    reached = "not reached" if seconds is None else f"{seconds:.1f} s"
    return f"94% in {reached} (best {result['best_test_acc1']:.2%}; target < 30 s on an H100)"


def _throughput(result: dict) -> str:
    return (f"{result['ratio']:.2f}x the best plain loop, {result['project_images_per_s']} "
            f"images/s (target >= {result['target']}x)")


def _overhead(result: dict) -> str:
    shares = ", ".join(f"{storage} {r['overhead_share']:.1%} ({r['mean_trial_s']:.2f} s/trial)"
                       for storage, r in result["storages"].items())
    return f"{shares} (target < {result['target_overhead_share']:.0%})"


def _memory(result: dict) -> str:
    gpu = result["gpu_excess_after_trial_mib"]
    after = "no GPU" if gpu is None else f"GPU {gpu:+.1f} MiB over baseline after a trial"
    return f"{after}; host peak {result['host_peak_gib']:.2f} GiB (target < 4 GiB)"


def _jobs(result: dict) -> str:
    rates = result["trials_per_minute"]
    return (f"--jobs {result['jobs']}: {result['speedup']:.2f}x the trials/min of --jobs 1 "
            f"({rates['1']} -> {rates[str(result['jobs'])]})")


def _scaling(result: dict) -> str:
    arms = result["arms"]
    if result["ratio"] is None:
        return f"one GPU: nothing to scale ({arms[0]['images_per_s']:,.0f} images/s)"
    return (f"{arms[-1]['label']}: {result['ratio']:.2f}x the images/s of {arms[0]['label']} "
            f"(efficiency {result['efficiency']:.2f}; {arms[0]['images_per_s']:,.0f} -> "
            f"{arms[-1]['images_per_s']:,.0f})")


#: In order of importance: a short budget cuts the last ones. Time to accuracy stops itself
#: 15 s before its share of the budget ends, so it writes its result (target reached or not).
STEPS = (
    Step("throughput", "throughput", ("--steps", "50", "--warmup", "10", "--repeats", "3"),
         ("--quick", "--steps", "1", "--warmup", "1", "--repeats", "1", "--batch-size", "32"),
         70, _throughput),
    Step("time_to_accuracy", "time_to_accuracy", (), ("--quick", "--epochs", "1"), 130,
         _seconds_to),
    Step("memory", "memory", ("--trials", "4"), ("--quick", "--trials", "1"), 45, _memory),
    Step("overhead", "overhead", ("--trials", "20"), ("--quick", "--trials", "2"), 55,
         _overhead),
    Step("jobs", "jobs", ("--jobs", "4", "--trials", "8", "--epochs", "3"), ("--quick",), 70,
         _jobs),
    Step("scaling", "scaling", (), ("--quick",), 90, _scaling),
    Step("time_to_accuracy --compile", "time_to_accuracy", ("--compile",), None, 150,
         _seconds_to),
)


def run_step(step: Step, args: list[str], timeout: float, env: dict) -> dict:
    """Run one benchmark, echoing its output; its result is the JSON of its last line."""
    command = [sys.executable, "-m", f"bench.{step.module}", *args]
    print(f"\n=== {step.name}: {' '.join(command[1:])} (at most {timeout:.0f} s)", flush=True)
    start = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, start_new_session=True) as process:
        try:
            _echo(process, lines, start + timeout)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, 9)
            process.wait()
    seconds = round(time.perf_counter() - start, 1)
    if process.returncode != 0 or not lines or not lines[-1].startswith("{"):
        why = ("out of budget" if time.perf_counter() - start >= timeout
               else f"exit {process.returncode}")
        return {"name": step.name, "ok": False, "seconds": seconds,
                "summary": f"FAILED ({why}): {lines[-1] if lines else 'no output'}"[:200]}
    result = json.loads(lines[-1])
    return {"name": step.name, "ok": True, "seconds": seconds,
            "summary": step.headline(result), "result": result}


def _echo(process: subprocess.Popen, lines: list[str], deadline: float) -> None:
    """Print the benchmark's lines as they come, until it ends or the deadline passes."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (left := deadline - time.perf_counter()) > 0:
            if not selector.select(timeout=min(left, 1.0)):
                continue
            line = process.stdout.readline()
            if not line:
                return
            print(f"  {line.rstrip()}", flush=True)
            lines.append(line.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smallest sizes on any device: checks the command end to end")
    parser.add_argument("--device", default=None, help="default: cuda when present")
    parser.add_argument("--budget", type=float, help="seconds for everything (default 470; "
                        "none with --quick, a smoke run on whatever machine there is)")
    parser.add_argument("--only", help="comma-separated step names (see the summary)")
    parser.add_argument("--results", type=Path, help="folder for the result files "
                        "(default: bench/results)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    budget = args.budget or (float("inf") if args.quick else 470.0)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # their lines as they come, through a pipe
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        env["BENCH_RESULTS"] = str(args.results.resolve())
        os.environ["BENCH_RESULTS"] = env["BENCH_RESULTS"]  # for this process's own report
    only = set(args.only.split(",")) if args.only else None
    start = time.perf_counter()
    rows = []
    for step in STEPS:
        step_args = step.quick if args.quick else step.full
        if (only and step.name not in only) or step_args is None:
            rows.append({"name": step.name, "ok": None, "seconds": 0,
                         "summary": "not run" + (" in --quick" if step_args is None else "")})
            continue
        left = budget - (time.perf_counter() - start)
        if left < 10:
            rows.append({"name": step.name, "ok": False, "seconds": 0,
                         "summary": "not run: the budget was spent"})
            continue
        timeout = left if args.quick else min(step.cap_s, left)
        extra = ["--time-limit", str(round(timeout - 15))] if step.module == "time_to_accuracy" \
            and not args.quick else []
        rows.append(run_step(step, [*step_args, *extra, "--device", str(device)], timeout, env))

    width = max(len(row["name"]) for row in rows)
    print(f"\n{'measurement':<{width}}  {'s':>6}  result")
    for row in rows:
        print(f"{row['name']:<{width}}  {row['seconds']:>6.0f}  {row['summary']}")
    report("gpu", {"benchmark": "gpu", "device": device_name(device), "quick": args.quick,
                   "budget_s": None if budget == float("inf") else budget,
                   "seconds": round(time.perf_counter() - start, 1), "steps": rows})


if __name__ == "__main__":
    main()
