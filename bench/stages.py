"""Multi-stage techniques on real data: does each do what its paper says, on a CPU budget?

Fashion-MNIST (Debian's files), 5,000 labelled training images at 28×28 (or 10% of them with
the rest unlabelled), the full test split, automl_resnet8, the same epochs and seeds for every
arm of a comparison (with 10% of the labels, 1/0.1 times the epochs: the same optimizer
steps as with every label). Each comparison trains its arms, evaluates the test split once, and says
whether the expectation of the issue holds, from the means over seeds (with the spread and
every seed's value). Nothing is tuned to the result: an expectation that does not hold is
reported as such.

- distillation: a student distilled from a teacher stage (the same model trained twice as
  long; distillation_resnet14: a larger model, twice as long) against the same student from
  scratch; the teacher's own test accuracy is reported beside;
- self_supervised: rotation pretraining on all 5,000 images, then 10% of the labels, against
  the 10% alone;
- semi_supervised: pseudo-labels and label propagation with 10% of the labels (the rest
  unlabelled) against the 10% alone;
- adversarial: FGSM robust accuracy at ε with adversarial training against without (the same
  technique with fraction 0 only measures); expected at least 10 points higher;
- quantization: int8 accuracy within 1 point of float, the int8 model at least 3× smaller;
- sam: SAM with gradient accumulation and an L1 term trains (its gradient is checked against a
  hand computation in tests/test_step_api.py); its accuracy is reported against the same
  recipe without SAM.

    python -m bench.stages [--quick] [--seeds N] [--epochs N] [--only NAME ...] [--device D]

``--quick`` runs one seed of every comparison on the embedded digits data for one epoch (the
test suite runs it); its verdicts mean nothing. Stage artifacts are cached in a temporary
folder per run, so every run trains its own teachers and pretraining; their time is reported
apart from the training time. Last line: JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch

from automl.data import load_data
from automl.discovery import training_manager
from automl.recipe import Recipe
from automl.stages import STAGE_DIR_ENV, STAGE_SECONDS
from automl.trainer import evaluate, fit, prepare, resolve_device

from .common import device_name, report

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
LABELLED = 5000
EPSILON = 0.1  # FGSM ε in [0, 1] pixel units, for training and for the robust accuracy


@dataclass
class Comparison:
    """Arms trained alike on one data setting; ``verdict`` reads their mean test metrics."""

    data: dict
    arms: dict[str, dict]  # arm name -> techniques added to the common recipe
    expectation: str
    verdict: object  # (means: {arm: {metric: mean}}) -> bool
    metrics: tuple[str, ...] = ("test/acc1",)
    common: dict = field(default_factory=dict)  # techniques every arm has


def _adversarial(fraction: float) -> dict:
    return {"adversarial_training": {"attack": "fgsm", "epsilon": EPSILON, "fraction": fraction,
                                     "eval_epsilon": EPSILON}}


COMPARISONS = {
    "distillation": Comparison(
        data={}, arms={"scratch": {}, "distilled": {"distillation": {
            "alpha": 0.5, "temperature": 4.0, "teacher_model": "same",
            "teacher_epochs_factor": 2}}},
        expectation="distilled student beats the same student from scratch (test/acc1)",
        verdict=lambda m: m["distilled"]["test/acc1"] > m["scratch"]["test/acc1"]),
    "distillation_resnet14": Comparison(
        data={}, arms={"scratch": {}, "distilled": {"distillation": {
            "alpha": 0.5, "temperature": 4.0, "teacher_model": "automl_resnet14",
            "teacher_epochs_factor": 2}}},
        expectation="student distilled from a larger teacher (automl_resnet14, twice the "
                    "epochs) beats the same student from scratch (test/acc1)",
        verdict=lambda m: m["distilled"]["test/acc1"] > m["scratch"]["test/acc1"]),
    "self_supervised": Comparison(
        data={"labelled_fraction": 0.1},
        arms={"scratch_10pct": {}, "rotation_pretrained": {"self_supervised_pretraining": {
            "pretext": "rotation", "stage_epochs": 4}}},
        expectation="rotation pretraining + 10% labels beats the 10% from scratch",
        verdict=lambda m: m["rotation_pretrained"]["test/acc1"] > m["scratch_10pct"]["test/acc1"]),
    "semi_supervised": Comparison(
        data={"labelled_fraction": 0.1},
        arms={"labelled_10pct": {}, "pseudo_labels": {"pseudo_labels": {}},
              "label_propagation": {"label_propagation": {}}},
        expectation="pseudo_labels or label_propagation beats the labelled 10% alone",
        verdict=lambda m: max(m["pseudo_labels"]["test/acc1"],
                              m["label_propagation"]["test/acc1"])
        > m["labelled_10pct"]["test/acc1"]),
    "adversarial": Comparison(
        data={}, arms={"standard": _adversarial(0.0), "adversarial": _adversarial(0.5)},
        metrics=("test/acc1", "test/robust_acc"),
        expectation=f"FGSM robust accuracy at eps={EPSILON} at least 10 points higher",
        verdict=lambda m: m["adversarial"]["test/robust_acc"]
        >= m["standard"]["test/robust_acc"] + 0.10),
    "quantization": Comparison(
        data={}, arms={"int8": {"quantization": {}}},
        metrics=("test/acc1", "test/int8_acc", "test/model_bytes", "test/float_bytes"),
        expectation="int8 accuracy within 1 point of float, model at least 3x smaller",
        verdict=lambda m: abs(m["int8"]["test/int8_acc"] - m["int8"]["test/acc1"]) <= 0.01
        and m["int8"]["test/float_bytes"] >= 3 * m["int8"]["test/model_bytes"]),
    "sam": Comparison(
        data={}, common={"grad_accumulation": {"steps": 2}, "l1_penalty": {"strength": 1e-5}},
        arms={"without_sam": {}, "sam": {"sam": {"rho": 0.05, "adaptive": False}}},
        expectation="SAM trains with gradient accumulation and an extra loss term "
                    "(accuracy reported, no threshold)",
        verdict=lambda m: all(v == v for v in m["sam"].values())),  # finite: it trained
}


def data_settings(quick: bool, extra: dict) -> dict:
    """5,000 labelled Fashion-MNIST training images (quick: the embedded digits)."""
    if quick:
        return {"dataset": "digits", "batch_size": 64, **extra}
    return {"dataset": "fashion_mnist", "data_dir": FASHION_MNIST, "batch_size": 128,
            "val_fraction": 0.1, "train_fraction": LABELLED / 54000, **extra}


def run_arm(data, settings: dict, techniques: dict, seed: int, epochs: int,
            device: torch.device) -> tuple[dict[str, float], float, float]:
    """Train one arm (no validation: nothing here selects on it), evaluate the test split
    once; returns (test metrics, training seconds, stage seconds)."""
    recipe = Recipe(model="automl_resnet8", data=settings, epochs=epochs, seed=seed,
                    techniques={"optimizer": {}, "lr_schedule": {}, **techniques})
    pm = training_manager(recipe)
    started = time.perf_counter()
    state = prepare(recipe, data, pm, device)
    fit(state, pm, validate=False)
    metrics = evaluate(state, pm, data.test, "test")
    if "distillation" in state.extras:  # how much better the teacher is: the point of it
        metrics["teacher/test_acc1"] = teacher_accuracy(state, data.test)
    stage_seconds = sum(state.extras.get(STAGE_SECONDS, {}).values())
    return metrics, time.perf_counter() - started - stage_seconds, stage_seconds


def teacher_accuracy(state, split) -> float:
    """The distillation teacher's accuracy on ``split``, fed as the student's batches are."""
    from automl.trainer import device_batches, normalise_batch

    teacher, hits = state.extras["distillation"], 0
    for images, labels in device_batches(split, torch.arange(len(split.labels)).split(500),
                                         state):
        logits = teacher.logits(state, normalise_batch(state, images))
        hits += (logits.argmax(1) == labels).sum().item()
    return hits / len(split.labels)


def run_comparison(name: str, comparison: Comparison, seeds: list[int], epochs: int,
                   quick: bool, device: torch.device) -> dict:
    settings = data_settings(quick, comparison.data)
    data = load_data(settings)
    # 10% of the labels make an epoch 10x shorter: train for as many optimizer steps as the
    # comparisons with every label (epochs / labelled_fraction), or nothing is learnt at all
    epochs = round(epochs / comparison.data.get("labelled_fraction", 1.0))
    per_arm: dict[str, dict] = {}
    for arm, techniques in comparison.arms.items():
        runs = [run_arm(data, settings, {**comparison.common, **techniques}, seed, epochs,
                        device) for seed in seeds]
        per_arm[arm] = {
            "metrics": {m: _spread([r[0][m] for r in runs]) for m in comparison.metrics
                        + tuple(k for k in runs[0][0] if k.startswith("teacher/"))},
            "train_seconds": round(sum(r[1] for r in runs), 1),
            "stage_seconds": round(sum(r[2] for r in runs), 1)}
        line = "  ".join(f"{m}={v['mean']:.4g}±{v['std']:.2g}"
                         for m, v in per_arm[arm]["metrics"].items())
        print(f"  {name:<16} {arm:<20} {line}  (train {per_arm[arm]['train_seconds']} s,"
              f" stages {per_arm[arm]['stage_seconds']} s)", flush=True)
    means = {arm: {m: v["mean"] for m, v in r["metrics"].items()} for arm, r in per_arm.items()}
    held = bool(comparison.verdict(means))
    print(f"  {name}: {comparison.expectation}: {'HOLDS' if held else 'DOES NOT HOLD'}",
          flush=True)
    return {"expectation": comparison.expectation, "holds": held, "epochs": epochs,
            "labelled_images": len(data.train.labels),
            "unlabelled_images": 0 if data.unlabelled is None else len(data.unlabelled.labels),
            "test_images": len(data.test.labels), "arms": per_arm}


def _spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 5),
            "std": round(statistics.stdev(values), 5) if len(values) > 1 else 0.0,
            "per_seed": [round(v, 5) for v in values]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one seed, one epoch, digits data: a smoke run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--only", nargs="*", choices=sorted(COMPARISONS), default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    seeds = [0] if args.quick else list(range(args.seeds))
    epochs = 1 if args.quick else args.epochs
    device = resolve_device(args.device)
    names = args.only or list(COMPARISONS)
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="automl-bench-stages-") as stage_dir:
        os.environ[STAGE_DIR_ENV] = stage_dir  # every run trains its own stages
        for name in names:
            results[name] = run_comparison(name, COMPARISONS[name], seeds, epochs, args.quick,
                                           device)
    report("stages" if args.only is None else "stages-" + "+".join(names), {
        "benchmark": "stages", "device": device_name(device), "quick": args.quick,
        "dataset": "digits" if args.quick else "fashion_mnist", "model": "automl_resnet8",
        "seeds": len(seeds), "epochs": epochs, "seconds": round(time.perf_counter() - started, 1),
        "held": {name: r["holds"] for name, r in results.items()}, "comparisons": results})


if __name__ == "__main__":
    main()
