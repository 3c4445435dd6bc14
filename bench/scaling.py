"""Data-parallel scaling: training images/s of one recipe on 1 rank against N ranks, in one run.

The same recipe (the model, plain SGD, no augmentation: the figure is the cost of the
training step and its all-reduce) and the same GLOBAL batch on every arm (each rank trains its
share of it, as ``automl train --nproc N`` does); only where it runs changes. On a CPU
(gloo) the arms are 1 rank × 1 torch thread (the baseline), 1 rank × 2 threads (the same two
cores as two ranks use, for fairness) and 2 ranks × 1 thread each. On CUDA: 1 GPU (the
baseline) against every GPU of the machine (``torch.cuda.device_count()``; with one GPU
there is nothing to scale and only the baseline is measured), bf16 autocast and
channels_last as the trainer does.

Ranks are started as :func:`automl.testing.train_on_ranks` starts them (spawned processes
meeting at a TCPStore; one process for a 1-rank arm, without a process group). What is
timed, on rank 0 (the ranks step in lockstep: every step all-reduces the gradients): after
``--warmup`` untimed steps (the first one builds DDP's buckets and warms the allocator), the
clock (after a CUDA synchronise) runs from the end of the last warm-up step to the end of the
last of ``--steps`` steps, as in ``bench.throughput``. Process start, loading the data,
moving it to the device and DDP's construction are not timed; no split is evaluated
(``fit(validate=False)``). images/s = global batch × timed steps / rank 0's seconds. The ratio
is N ranks / the baseline, and efficiency = ratio / N (1.0: perfect scaling); on a CPU also
the ratio against 1 rank × 2 threads (same cores). Each figure is the median of ``--repeats``
timed streams. On a CPU the repeats run in rounds (every arm once, in turn, each a fresh
launch) so a change in machine load hits every arm alike; on CUDA each arm's launch runs its
repeats one after the other (fresh model and trainer each), since process start costs GPU
time. The 1-minute load average (the higher of start and end) is saved.

    python -m bench.scaling [--quick] [--model NAME] [--batch-size N] [--image-size PX]
                            [--steps N] [--warmup N] [--repeats N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from .common import add_schedule_options, device_name, process_seconds, report

SEED = 0
LR = 0.05
#: Model, global batch, training resolution (0: the data's own) by device: a small ResNet on
#: a CPU; on a GPU a larger model and batch, so a step is not all launch overhead.
SETUP = {"cpu": ("automl_resnet8", 256, 0), "cuda": ("resnet18", 512, 32)}
#: (warm-up steps, timed steps, repeats) by device and --quick.
SCHEDULE = {("cuda", False): (20, 100, 3), ("cuda", True): (5, 10, 1),
            ("cpu", False): (3, 15, 3), ("cpu", True): (1, 2, 1)}
RESULT_TIMEOUT_S = 900  # for one launch's results (a loaded 2-core CPU is slow)


@dataclass(frozen=True)
class Arm:
    """One configuration: ``ranks`` processes with ``threads`` torch threads each (None on a
    GPU: one GPU per rank)."""

    ranks: int
    threads: int | None

    @property
    def label(self) -> str:
        if self.threads is None:
            return f"{self.ranks} GPU" + ("s" if self.ranks > 1 else "")
        return (f"{self.ranks} rank{'s' if self.ranks > 1 else ''} x {self.threads} "
                f"thread{'s' if self.threads > 1 else ''}")


def arms_for(device: torch.device) -> list[Arm]:
    """The baseline first, then the same cores as one process, then N ranks."""
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        return [Arm(1, None)] + ([Arm(gpus, None)] if gpus > 1 else [])
    return [Arm(1, 1), Arm(1, 2), Arm(2, 1)]


def _clock_plugin(device: torch.device, warmup: int, total: int, image_size: int):
    """bench.throughput's step clock, also setting the training resolution."""
    from automl.hookspecs import hookimpl

    from .throughput import StepClock

    class Clock(StepClock):
        @hookimpl
        def configure_training(self, state):
            if image_size:
                state.train_image_size = image_size

    return Clock(device, warmup, total)


def _rank(rank: int, size: int, port: int, arm: Arm, settings: dict, results) -> None:
    """One rank of a launch (a spawned process): ``settings["streams"]`` timed streams."""
    from automl import distributed
    from automl.data import load_data
    from automl.discovery import training_manager
    from automl.recipe import Recipe
    from automl.trainer import fit, prepare

    try:
        if settings["cuda"]:
            device = torch.device("cuda", rank)
        else:
            device = torch.device("cpu")
            torch.set_num_threads(arm.threads)
        if size > 1:
            distributed.join_store(device, rank, size, port, timeout=300)
        data = load_data(settings["data"])
        warmup, steps = settings["warmup"], settings["steps"]
        total = warmup + steps
        recipe = Recipe(model=settings["model"], data=settings["data"], seed=SEED,
                        epochs=math.ceil(total / (len(data.train.labels)
                                                  // settings["data"]["batch_size"])),
                        techniques={"optimizer": {"name": "sgd", "lr": LR}})
        seconds = []
        for _ in range(settings["streams"]):
            clock = _clock_plugin(device, warmup, total, settings["image_size"])
            pm = training_manager(recipe, extra_plugins=[clock])
            state = prepare(recipe, data, pm, device)
            fit(state, pm, max_steps=total, validate=False)
            seconds.append(clock.seconds)
            del state, pm
            if settings["cuda"]:
                torch.cuda.empty_cache()
        results.put((rank, seconds))
    except Exception as exc:  # the parent reports it; the other ranks time out
        results.put((rank, f"{type(exc).__name__}: {exc}"))
    finally:
        distributed.shutdown()


def launch(arm: Arm, settings: dict) -> list[float]:
    """Start ``arm.ranks`` processes; rank 0's seconds of each timed stream."""
    from automl.distributed import run_on_ranks

    try:
        ended = run_on_ranks(_rank, arm.ranks, (arm, settings), timeout=RESULT_TIMEOUT_S)
    except TimeoutError as exc:
        raise SystemExit(f"{arm.label}: {exc}") from None
    failed = [f"rank {r}: {v}" for r, v in sorted(ended.items()) if isinstance(v, str)]
    if failed:
        raise SystemExit(f"{arm.label} failed: " + "; ".join(failed))
    return ended[0]


def measure(arms: list[Arm], settings: dict, repeats: int, cuda: bool
            ) -> dict[Arm, list[float]]:
    """Images/s of every timed stream per arm (rounds of launches on a CPU; one launch of
    ``repeats`` streams per arm on CUDA)."""
    images = settings["data"]["batch_size"] * settings["steps"]
    seconds: dict[Arm, list[float]] = {arm: [] for arm in arms}
    rounds, streams = (1, repeats) if cuda else (repeats, 1)
    for _ in range(rounds):
        for arm in arms:
            seconds[arm] += launch(arm, {**settings, "streams": streams})
    return {arm: [images / s for s in runs] for arm, runs in seconds.items()}


def machine(device: torch.device) -> str:
    """The GPU's name and count, or the CPU with its usable cores (not threads: the arms set
    their own thread counts)."""
    if device.type == "cuda":
        return f"{device_name(device)} x {torch.cuda.device_count()}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()} CPU, {cores} cores"


def main() -> None:
    from automl.data import DEBIAN_FASHION_DIR
    from automl.trainer import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="digits, a few steps, one repeat: checks the command end to end")
    parser.add_argument("--model", help="any timm model name (default by device, see SETUP)")
    parser.add_argument("--batch-size", type=int, help="the global batch, on every arm")
    parser.add_argument("--image-size", type=int, help="training resolution (0: the data's)")
    add_schedule_options(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    model, batch_size, image_size = SETUP[kind]
    warmup, steps, repeats = SCHEDULE[kind, args.quick]
    fashion = not args.quick and any(DEBIAN_FASHION_DIR.glob("train-images-idx3-ubyte*"))
    batch_size = args.batch_size or (64 if args.quick else batch_size)
    settings = {"cuda": kind == "cuda", "model": args.model or model,
                "image_size": image_size if args.image_size is None else args.image_size,
                "warmup": max(1, args.warmup or warmup), "steps": args.steps or steps,
                "data": {"dataset": "fashion_mnist" if fashion else "digits",
                         "batch_size": batch_size}}
    repeats = args.repeats or repeats
    arms = arms_for(device)
    load = os.getloadavg()[0]  # other work on a shared machine skews the figures
    started = time.perf_counter()
    rates = measure(arms, settings, repeats, kind == "cuda")
    load = max(load, os.getloadavg()[0])
    median = {arm: statistics.median(r) for arm, r in rates.items()}
    base, top = arms[0], arms[-1]
    ratio = median[top] / median[base] if top != base else None
    same_cores = next((a for a in arms if a.ranks == 1 and a.threads == top.ranks), None)
    ratio_same = median[top] / median[same_cores] if same_cores and top != base else None

    print(f"{settings['data']['dataset']}, {settings['model']}"
          f"{', ' + str(settings['image_size']) + ' px' if settings['image_size'] else ''}, "
          f"global batch {batch_size}, {settings['steps']} timed steps after "
          f"{settings['warmup']}, median of {repeats}, {machine(device)}, "
          f"load average {load:.1f}")
    print(f"{'arm':<22} {'images/s (median)':>18} {'x baseline':>11}")
    for arm in arms:
        print(f"{arm.label:<22} {median[arm]:>18,.0f} {median[arm] / median[base]:>11.2f}")
    if ratio is None:
        print("one GPU: nothing to scale, only the baseline is measured")
    else:
        print(f"{top.label} / {base.label}: {ratio:.2f}, efficiency {ratio / top.ranks:.2f}"
              + (f"; / {same_cores.label} (same cores): {ratio_same:.2f}" if ratio_same else ""))
    report("scaling", {
        "benchmark": "scaling", "device": machine(device), "quick": args.quick,
        "backend": "nccl" if kind == "cuda" else "gloo",
        "dataset": settings["data"]["dataset"], "model": settings["model"],
        "image_size": settings["image_size"] or None, "global_batch_size": batch_size,
        "steps": settings["steps"], "warmup": settings["warmup"], "repeats": repeats,
        "statistic": "median",
        "arms": [{"label": arm.label, "ranks": arm.ranks, "threads_per_rank": arm.threads,
                  "images_per_s": round(median[arm], 1),
                  "runs_images_per_s": [round(r, 1) for r in rates[arm]]} for arm in arms],
        "baseline": base.label, "ranks": top.ranks,
        "ratio": None if ratio is None else round(ratio, 3),
        "efficiency": None if ratio is None else round(ratio / top.ranks, 3),
        "ratio_same_cores": None if ratio_same is None else round(ratio_same, 3),
        "load_average": round(load, 2), "seconds": round(time.perf_counter() - started, 1),
        "process_seconds": round(process_seconds(), 1)})


if __name__ == "__main__":
    main()
