"""The baseline a competent practitioner writes without automl: plain Optuna + torch.

TPE (seeded) with a median pruner over learning rate, weight decay, optimizer (Nesterov SGD or
AdamW), label smoothing and the augmentation (padded random crop and horizontal flip of each
batch, each on or off: forcing them on costs digits ~30 points in 5 epochs); cosine LR per
step. Same model (``automl_resnet8``) and same train/val/test split as automl; only
``load_data`` and the model registration come from automl.

    python -m bench.plain_optuna '{"data_config": {"dataset": "digits"}, "n_trials": 16,
                                   "epochs": 5, "batch_size": 128, "seed": 0}' [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import optuna
import timm
import torch
import torch.nn.functional as F

import automl.models  # noqa: F401  (registers automl_resnet8 with timm)
from automl.data import load_data


def augment(x: torch.Tensor, pad: int, crop: bool, flip: bool) -> torch.Tensor:
    """Per-sample random crop from a zero-padded batch, then a random horizontal flip."""
    n, _, h, w = x.shape
    if crop:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1))
        rows = (dy + torch.arange(h))[:, :, None]  # (n, h, 1)
        cols = (dx + torch.arange(w))[:, None, :]  # (n, 1, w)
        x = padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if flip:
        x = torch.where((torch.rand(n) < 0.5)[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def train(data, params: dict, epochs: int, batch_size: int, seed: int, report=None) -> float:
    """Train on data.train; after each epoch score val (``report(epoch, acc)`` may prune).
    Returns the final val accuracy, or test accuracy when ``report`` is None."""
    torch.manual_seed(seed)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    norm = lambda images: (images.float() / 255 - mean) / std  # noqa: E731
    model = timm.create_model("automl_resnet8", num_classes=data.num_classes,
                              in_chans=data.in_chans)
    if params["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=params["lr_sgd"], momentum=0.9,
                              nesterov=True, weight_decay=params["weight_decay"])
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=params["lr_adamw"],
                                weight_decay=params["weight_decay"])
    images, labels = data.train.images, data.train.labels
    batch_size = min(batch_size, len(labels))
    steps = len(labels) // batch_size  # drop the ragged last batch (batch norm)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    pad = max(1, data.image_size // 8)
    split = data.val if report else data.test
    acc = 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(labels))
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            out = model(norm(augment(images[idx], pad, params["crop"], params["flip"])))
            loss = F.cross_entropy(out, labels[idx], label_smoothing=params["label_smoothing"])
            if not math.isfinite(loss.item()):
                raise optuna.TrialPruned(f"diverged: loss {loss.item()} in epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(norm(split.images[i:i + 512])).argmax(1)
                           == split.labels[i:i + 512]).sum().item()
                          for i in range(0, len(split.labels), 512))
        acc = correct / len(split.labels)
        if report:
            report(epoch, acc)
    return acc


def run(data_config: dict, n_trials: int, epochs: int, batch_size: int, seed: int,
        retrain_seed: int | None = None) -> dict:
    """Search, then retrain the best parameters once (``retrain_seed``, default ``seed``) on the
    train split and score the test split."""
    data = load_data(data_config)

    def objective(trial: optuna.Trial) -> float:
        optimizer = trial.suggest_categorical("optimizer", ["sgd", "adamw"])
        params = {"optimizer": optimizer,
                  "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
                  "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
                  # searched on/off, not forced: a flip (or a crop) can hurt, e.g. on digits
                  "crop": trial.suggest_categorical("crop", [True, False]),
                  "flip": trial.suggest_categorical("flip", [True, False])}
        if optimizer == "sgd":
            params["lr_sgd"] = trial.suggest_float("lr_sgd", 1e-3, 1.0, log=True)
        else:
            params["lr_adamw"] = trial.suggest_float("lr_adamw", 1e-4, 1e-1, log=True)

        def report(epoch: int, acc: float) -> None:
            trial.report(acc, epoch)
            trial.set_user_attr("epochs_run", epoch)
            if epoch < epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        try:
            return train(data, params, epochs, batch_size, seed, report)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    searched = time.perf_counter()
    best = study.best_trial
    test_acc = train(data, best.params, epochs, batch_size,
                     seed if retrain_seed is None else retrain_seed)
    trials = [{"number": t.number, "state": t.state.name,
               "epochs": t.user_attrs.get("epochs_run", len(t.intermediate_values)),
               "value": t.value,
               "last_value": t.intermediate_values[max(t.intermediate_values)]
               if t.intermediate_values else None,
               "fail_reason": t.user_attrs.get("fail_reason")} for t in study.trials]
    return {"trials": trials, "best_params": best.params, "best_value": best.value,
            "best_number": best.number, "test_acc1": test_acc,
            "search_seconds": round(searched - started, 2),
            "retrain_seconds": round(time.perf_counter() - searched, 2)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="JSON: data_config, n_trials, epochs, batch_size, seed "
                                       "(and optionally retrain_seed)")
    parser.add_argument("--out", help="write the result JSON here (else print it)")
    args = parser.parse_args()
    result = json.dumps(run(**json.loads(args.config)))
    if args.out:
        with open(args.out, "w") as f:
            f.write(result + "\n")
    else:
        print(result)
