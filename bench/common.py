"""What every benchmark shares: the device's name and writing the result JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU with its usable core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def report(name: str, result: dict) -> None:
    """Print the JSON line and save it as bench/results/NAME-<device>.json (NAME-quick-… for a
    ``"quick": true`` run, so a smoke run never replaces a full one)."""
    line = json.dumps(result)
    results = Path(os.environ.get("BENCH_RESULTS") or RESULTS)  # bench.gpu --results
    results.mkdir(exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in result["device"].lower()).strip("-")
    name = f"{name}-quick" if result.get("quick") else name
    (results / f"{name}-{slug}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(line)


def process_seconds() -> float:
    """Seconds since this process started (interpreter start-up and imports included), from
    /proc on Linux; elsewhere since this module was imported."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def add_schedule_options(parser) -> None:
    """The timing options of the throughput-style benchmarks (defaults: their SCHEDULE)."""
    parser.add_argument("--steps", type=int, help="timed steps per repeat (see SCHEDULE)")
    parser.add_argument("--warmup", type=int, help="untimed steps before them, at least 1")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--device", default=None)
