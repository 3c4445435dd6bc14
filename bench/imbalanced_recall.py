"""Rare-class recall on a long-tailed dataset: plain cross-entropy vs class weights vs focal loss.

The real digits data with 10% of the training images of classes 0-4 kept (balanced val and
test). Every loss trains automl_resnet8 for the same epochs with the same seeds; the figure is
the mean recall of classes 0-4 on the balanced test split, per seed and averaged, and the
smallest gain over plain cross-entropy of any 3-seed average (what the acceptance test in
tests/test_imbalanced.py relies on).

    python -m bench.imbalanced_recall [--quick] [--seeds N] [--epochs N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from automl.data import load_data, with_fewer_samples
from automl.discovery import training_manager
from automl.recipe import Recipe
from automl.trainer import class_recall, resolve_device, train

from .common import device_name, report

DATA_CONFIG = {"dataset": "digits", "batch_size": 32}
MINORITY = [0, 1, 2, 3, 4]
KEEP = 0.1
LOSSES = {
    "cross_entropy": {},
    "class_weights(power=0.5)": {"class_weights": {"power": 0.5}},
    "class_weights(power=1.0)": {"class_weights": {"power": 1.0}},
    "focal_loss(gamma=2)": {"focal_loss": {"gamma": 2.0}},
}


def rare_recall(data, techniques: dict, seed: int, epochs: int, device: torch.device) -> float:
    recipe = Recipe(model="automl_resnet8", data=dict(DATA_CONFIG), epochs=epochs, seed=seed,
                    techniques={"optimizer": {}, **techniques})
    pm = training_manager(recipe)
    state = train(recipe, data, pm, device=device)
    return class_recall(state, pm, data.test)[MINORITY].mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds (about a minute on CPU)")
    parser.add_argument("--seeds", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    seeds = list(range(3 if args.quick else args.seeds))
    device = resolve_device(args.device)
    data = with_fewer_samples(load_data(DATA_CONFIG), MINORITY, KEEP)
    started = time.perf_counter()
    recalls = {name: [rare_recall(data, t, s, args.epochs, device) for s in seeds]
               for name, t in LOSSES.items()}
    base = recalls["cross_entropy"]
    print(f"{'loss':<26} {'mean rare recall':>16} {'min 3-seed gain':>16}")
    summary = {}
    for name, values in recalls.items():
        gains = [statistics.mean(values[i] - base[i] for i in trio)
                 for trio in itertools.combinations(range(len(seeds)), 3)]
        summary[name] = {"mean": round(statistics.mean(values), 4),
                         "min_3_seed_gain": round(min(gains), 4) if name != "cross_entropy"
                         else None, "per_seed": [round(v, 4) for v in values]}
        gain = "" if summary[name]["min_3_seed_gain"] is None else \
            f"{summary[name]['min_3_seed_gain']:+.3f}"
        print(f"{name:<26} {summary[name]['mean']:>16.3f} {gain:>16}")
    report("imbalanced_recall", {
        "benchmark": "imbalanced_recall", "device": device_name(device), "seeds": len(seeds),
        "epochs": args.epochs, "minority_classes": MINORITY, "keep": KEEP,
        "seconds": round(time.perf_counter() - started, 1), "losses": summary})


if __name__ == "__main__":
    main()
