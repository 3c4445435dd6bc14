"""Training images/s: the project's trainer against a plain DataLoader loop, in one run.

Project side: ``automl.trainer.prepare`` + ``fit`` with the augmentations as techniques of a
Recipe: the training split sits on the device as uint8, batches are cut by index and augmented
as whole batches through the plugin hooks. Plain side: a hand-written loop over a torch
DataLoader whose workers apply torchvision.transforms.v2 to one image at a time, with
``pin_memory`` and ``non_blocking`` copies on CUDA and persistent workers; 0 workers (all in
the training process) as a reference, then 2, 8 and 16 where the machine has that many cores.

Both sides train the same model from the same initial weights, with SGD (lr 0.05, momentum
0.9), the same batch size and the same augmentations: horizontal flip, random crop with
reflect padding, random erasing (random fill, on the normalised image) and, with
``--policy``, TrivialAugmentWide. channels_last on both sides, bf16 autocast on CUDA.

What is timed: every repeat is a fresh stream (a new model; a new trainer or DataLoader) of
warm-up steps, then ``--steps`` optimizer steps. The clock (after a CUDA synchronise) runs
from the end of the last warm-up step to the end of the last step, so it holds everything a
step costs: cutting or loading the batch, augmenting it, the copy to the device, forward,
backward, the optimizer; epoch boundaries too (a new permutation, a DataLoader refill). It
leaves out the one-time start (moving the split to the device, starting the workers) and the
validation ``fit`` runs after each epoch: a plugin reads the clock in ``after_step`` and pauses
it from ``on_epoch_end`` to ``on_epoch_start``. Since validation is never timed, its split is
cut to ``EVAL_IMAGES`` images. Repeats run in rounds (the project, then each worker count) so
a change in machine load hits every side alike; each side's figure is its median images/s.
The ratio is project / plain, per worker count and against the fastest plain configuration;
the target (printed under the table) is >= 5 on a GPU and >= 1.1 on a CPU. On a shared CPU
other processes slow some repeats badly, so the 1-minute load average is printed and saved.

    python -m bench.throughput [--quick] [--policy] [--model NAME] [--batch-size N]
                               [--steps N] [--warmup N] [--repeats N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from dataclasses import replace

import timm
import torch
import torch.nn.functional as F
from automl.plugins.random_erasing import AREA_MIN, ASPECT_RANGE
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

import automl.models  # noqa: F401  (registers automl_resnet8 in timm)
from automl.data import DEBIAN_FASHION_DIR, DataBundle, Split, load_data
from automl.discovery import training_manager
from automl.hookspecs import hookimpl
from automl.recipe import Recipe
from automl.trainer import fit, prepare, resolve_device

from .common import add_schedule_options, device_name, process_seconds, report

SEED = 0
LR, MOMENTUM = 0.05, 0.9
FLIP = {"p": 0.5}
CROP = {"padding": 2, "padding_mode": "reflect"}
ERASING = {"p": 0.25, "area_max": 0.33, "fill": "random"}
POLICY = {"policy": "trivialaugment"}
WORKER_COUNTS = (2, 8, 16)  # tried where the machine has that many cores; 0 always
EVAL_IMAGES = 256
TARGET = {"cuda": 5.0, "cpu": 1.1}  # project / best plain
#: (warm-up steps, timed steps, repeats) by device and --quick. A GPU step takes milliseconds
#: and 16 workers deliver batches in bursts, so its windows span many bursts; a CPU step takes
#: about a second at batch 256, so a 2-core CPU gets short windows (quick: under a minute).
SCHEDULE = {("cuda", False): (40, 200, 5), ("cuda", True): (10, 50, 3),
            ("cpu", False): (3, 20, 5), ("cpu", True): (1, 2, 3)}


class StepClock:
    """Training seconds from the end of one optimizer step to the end of a later one, paused
    while the trainer validates between epochs (a plugin of the project's trainer)."""

    def __init__(self, device: torch.device, start_step: int, stop_step: int):
        self.device, self.start_step, self.stop_step = device, start_step, stop_step
        self.elapsed, self.since, self.marks = 0.0, 0.0, {}

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @hookimpl
    def on_epoch_start(self, state):
        self.since = self._now()

    @hookimpl
    def on_epoch_end(self, state):
        self.elapsed += self._now() - self.since

    @hookimpl
    def after_step(self, state):
        done = state.step + 1  # the trainer counts the step after this hook
        if done in (self.start_step, self.stop_step):
            self.marks[done] = self.elapsed + self._now() - self.since

    @property
    def seconds(self) -> float:
        return self.marks[self.stop_step] - self.marks[self.start_step]


class AugmentedImages(Dataset):
    """The uint8 training split, one image at a time through a per-image transform."""

    def __init__(self, split: Split, transform: v2.Transform):
        self.images, self.labels, self.transform = split.images, split.labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def plain_transform(data: DataBundle, policy: bool) -> v2.Transform:
    """The project's augmentations as the usual per-image torchvision pipeline."""
    geometric = [v2.RandomHorizontalFlip(FLIP["p"]),
                 v2.RandomCrop(data.image_size, padding=CROP["padding"],
                               padding_mode=CROP["padding_mode"])]
    return v2.Compose([
        *geometric, *([v2.TrivialAugmentWide()] if policy else []),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(data.mean, data.std),
        v2.RandomErasing(ERASING["p"], scale=(AREA_MIN, ERASING["area_max"]),
                         ratio=ASPECT_RANGE, value="random"),
    ])


def project_seconds(data: DataBundle, args, device: torch.device) -> float:
    """Seconds the project's trainer takes for ``args.steps`` steps after the warm-up."""
    techniques = {"optimizer": {"name": "sgd", "lr": LR}, "flip": FLIP, "random_crop": CROP,
                  **({"augment_policy": POLICY} if args.policy else {}),
                  "random_erasing": ERASING}
    total = args.warmup + args.steps
    epochs = math.ceil(total / (len(data.train) // args.batch_size))
    recipe = Recipe(model=args.model, data={"dataset": data.name, "batch_size": args.batch_size},
                    epochs=epochs, seed=SEED, techniques=techniques)
    clock = StepClock(device, args.warmup, total)
    pm = training_manager(recipe, extra_plugins=[clock])
    state = prepare(recipe, data, pm, device)
    fit(state, pm, max_steps=total)
    return clock.seconds


def plain_seconds(data: DataBundle, args, device: torch.device, workers: int) -> float:
    """Seconds a hand-written DataLoader loop takes for ``args.steps`` steps after the warm-up."""
    cuda = device.type == "cuda"
    loader = DataLoader(AugmentedImages(data.train, plain_transform(data, args.policy)),
                        batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(SEED))
    torch.manual_seed(SEED)
    model = timm.create_model(args.model, num_classes=data.num_classes, in_chans=data.in_chans)
    model.to(device=device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    mixed_precision = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    step, started = 0, 0.0
    while True:
        for images, labels in loader:
            images = images.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with mixed_precision:
                loss = F.cross_entropy(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step in (args.warmup, args.warmup + args.steps):
                if cuda:
                    torch.cuda.synchronize(device)
                if step == args.warmup:
                    started = time.perf_counter()
                else:
                    return time.perf_counter() - started


def worker_counts() -> list[int]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [0, *(w for w in WORKER_COUNTS if w <= (cores or 1))]


def benchmark_data(batch_size: int) -> DataBundle:
    """Fashion-MNIST when its files are installed, else the embedded digits; the validation
    split cut to EVAL_IMAGES images (it is never timed)."""
    fashion = any(DEBIAN_FASHION_DIR.glob("train-images-idx3-ubyte*"))
    data = load_data({"dataset": "fashion_mnist" if fashion else "digits",
                      "batch_size": batch_size})
    val = Split(data.val.images[:EVAL_IMAGES], data.val.labels[:EVAL_IMAGES])
    return replace(data, val=val)


def measure(data: DataBundle, args, device: torch.device,
            workers: list[int]) -> dict[str, list[float]]:
    """Images/s of every repeat per side; rounds of the project then each worker count."""
    seconds: dict[str, list[float]] = {"project": [], **{f"plain_{w}": [] for w in workers}}
    for _ in range(args.repeats):
        seconds["project"].append(project_seconds(data, args, device))
        for w in workers:
            seconds[f"plain_{w}"].append(plain_seconds(data, args, device, w))
    return {side: [args.steps * args.batch_size / s for s in runs]
            for side, runs in seconds.items()}


def print_table(median: dict[str, float], workers: list[int], best: int) -> None:
    print(f"{'side':<30} {'images/s (median)':>18} {'project / this':>15}")
    print(f"{'project (data on device)':<30} {median['project']:>18,.0f}")
    for w in workers:
        rate = median[f"plain_{w}"]
        label = f"plain DataLoader, {w} workers" + (" *" if w == best else "")
        print(f"{label:<30} {rate:>18,.0f} {median['project'] / rate:>15.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short streams (under a minute "
                        "on a 2-core CPU)")
    parser.add_argument("--policy", action="store_true", help="add TrivialAugmentWide")
    parser.add_argument("--model", default="automl_resnet8", help="any timm model name")
    parser.add_argument("--batch-size", type=int, default=256)
    add_schedule_options(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    warmup, steps, repeats = SCHEDULE[kind, args.quick]
    args.warmup = max(1, args.warmup or warmup)
    args.steps, args.repeats = args.steps or steps, args.repeats or repeats
    data = benchmark_data(args.batch_size)
    workers = worker_counts()
    started = time.perf_counter()
    rates = measure(data, args, device, workers)
    median = {side: statistics.median(r) for side, r in rates.items()}
    best = max(workers, key=lambda w: median[f"plain_{w}"])
    ratio = median["project"] / median[f"plain_{best}"]
    target = TARGET[kind]
    load = os.getloadavg()[0]  # other work on a shared machine skews the figures
    print(f"{data.name}, {args.model}, batch {args.batch_size}, "
          f"flip+crop+erasing{'+trivialaugment' if args.policy else ''}, "
          f"{args.steps} steps x {args.repeats} repeats, {device_name(device)}, "
          f"load average {load:.1f}")
    print_table(median, workers, best)
    print(f"target: project / best plain >= {target}: {ratio:.2f} "
          f"({'met' if ratio >= target else 'missed'})")
    report("throughput", {
        "benchmark": "throughput", "device": device_name(device), "quick": args.quick,
        "dataset": data.name,
        "model": args.model, "batch_size": args.batch_size, "policy": args.policy,
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "project_images_per_s": round(median["project"]),
        "plain_images_per_s": {str(w): round(median[f"plain_{w}"]) for w in workers},
        "ratio_per_workers": {str(w): round(median["project"] / median[f"plain_{w}"], 3)
                              for w in workers},
        "best_plain_workers": best, "ratio": round(ratio, 3), "target": target,
        "target_met": ratio >= target, "load_average": round(load, 2),
        "runs_images_per_s": {side: [round(r) for r in runs] for side, runs in rates.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "process_seconds": round(process_seconds(), 1)})


if __name__ == "__main__":
    main()
