"""Search efficiency on real data: automl's defaults against random search, plain TPE, a
hand-written Optuna baseline and the space's default recipe, over several seeds.

Methods, each with the same trial budget per search (same space, model, data and epochs):

- ``default``: ``automl search SPACE`` with the project's default settings (pruner, warm start,
  confirmation of the top trials: whatever they are at run time);
- ``random``: ``--sampler random --pruner none --no-warm-start --confirm-top 0``;
- ``tpe``: ``--sampler tpe --pruner none --no-warm-start --confirm-top 0``;
- ``plain_optuna``: bench/plain_optuna.py, what a practitioner writes without automl;
- ``baseline``: one trial of the space's defaults (``--n-trials 1 --no-warm-start
  --confirm-top 0``).

SPACE is the shipped ``default`` space (its ``techniques:`` and ``study:`` as they are when the
bench runs) with the dataset's model, data and epochs. The recipe each method picks is
retrained once with a fixed seed (1000) and scored on the test split, which no search sees.
Compute is counted in epochs trained (pruned trials count the epochs they ran, confirmation
re-runs of the top trials count at the end). A trial is wasted when it failed, diverged
(NaN/inf) or ended near chance (last val/acc1 < 2.5 / classes). ``speedup_vs_random``: the
epochs random search needed to reach its own final best val score, divided by the epochs the
method needed to first reach that score (same seed; never reached counts as 0 in the median).

Targets (reported, never tuned for): default beats baseline by >= 2 points and plain_optuna by
>= 1 point of test accuracy (mean over seeds), median speedup vs random >= 4.

    python -m bench.search_efficiency [--quick] [--seeds N] [--trials N] [--epochs N]
        [--datasets fashion_mnist_300,digits] [--jobs 2] [--workdir DIR]

``--quick`` runs digits only, 4 trials of 2 epochs, 2 seeds: it checks the script end to end,
its numbers say nothing. Searches run as subprocesses with one thread each (``--jobs`` at once).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml

from automl.data import load_data
from automl.paths import JOURNAL

from .common import device_name, report

REPO = Path(__file__).resolve().parent.parent
METHODS = ("default", "random", "tpe", "plain_optuna", "baseline")
SEARCH_FLAGS = {  # automl methods: extra `automl search` options
    "default": [],
    "random": ["--sampler", "random", "--pruner", "none", "--no-warm-start", "--confirm-top", "0"],
    "tpe": ["--sampler", "tpe", "--pruner", "none", "--no-warm-start", "--confirm-top", "0"],
    "baseline": ["--no-warm-start", "--confirm-top", "0"],
}
NEW_FLAGS = {"--no-warm-start": 0, "--confirm-top": 1}  # flag -> number of values it takes
RETRAIN_SEED = 1000
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 300),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 100)}
FASHION_CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle_boot"]
DATASETS = {  # name -> (data config without the folder path, epochs)
    "fashion_mnist_300": ({"dataset": "folder", "image_size": 28, "batch_size": 128,
                           "val_fraction": 0.1}, 6),
    "digits": ({"dataset": "digits", "batch_size": 128, "val_fraction": 0.2}, 5),
}
TARGETS = {"default_minus_baseline": 0.02, "default_minus_plain_optuna": 0.01,
           "speedup_vs_random": 4.0}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NEAR_CHANCE = 2.5  # a last val/acc1 below NEAR_CHANCE / classes (0.25 of 10) is a wasted trial
DIVERGED = re.compile(r"diverge|\bnan\b|\binf\b|non-?finite", re.IGNORECASE)


# --- set-up -----------------------------------------------------------------------------------

def automl_cli() -> str:
    cli = Path(sys.executable).with_name("automl")
    found = str(cli) if cli.exists() else shutil.which("automl")
    if not found:
        sys.exit("search_efficiency: no `automl` console script next to the interpreter or on "
                 "PATH; install the project (pip install -e .)")
    return found


def missing_flags(cli: str) -> list[str]:
    """The options this bench uses that the installed CLI does not have (yet)."""
    search = subprocess.run([cli, "search", "--help"], capture_output=True, text=True,
                            env=ENV).stdout
    train = subprocess.run([cli, "train", "--help"], capture_output=True, text=True,
                           env=ENV).stdout
    missing = [f"search {flag}" for flag in NEW_FLAGS if flag not in search]
    return missing + ([] if re.search(r"--seed\b", train) else ["train --seed"])


def usable(flags: list[str], missing: list[str]) -> list[str]:
    """``flags`` without the options (and their values) the CLI lacks."""
    out, i = [], 0
    while i < len(flags):
        skip = NEW_FLAGS.get(flags[i]) if f"search {flags[i]}" in missing else None
        if skip is None:
            out.append(flags[i])
            i += 1
        else:
            i += 1 + skip
    return out


def default_space() -> tuple[dict, str]:
    """The shipped default space as loaded now, and where it was read from."""
    try:
        source = importlib.resources.files("automl.search_spaces") / "default.yaml"
        text = source.read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        source = REPO / "search_spaces" / "default.yaml"
        text = source.read_text()
    return yaml.safe_load(text), str(source)


def make_space(default: dict, data: dict, epochs: int) -> dict:
    """The default space's techniques and study (without n_trials) on another model/data."""
    space = {**default, "model": "automl_resnet8", "data": data, "epochs": epochs}
    space["study"] = {k: v for k, v in (default.get("study") or {}).items() if k != "n_trials"}
    return space


def build_fashion_folder(root: Path, seed: int = 0) -> bool:
    """300 training and 100 test PNGs per class from Debian's Fashion-MNIST files (seeded)."""
    from PIL import Image

    from automl.data import _read_idx

    if not all((FASHION_DIR / f).exists() for img, lab, _ in FASHION_FILES.values()
               for f in (img, lab)):
        return False
    rng = np.random.default_rng(seed)
    for split, (img_file, label_file, per_class) in FASHION_FILES.items():
        images, labels = _read_idx(FASHION_DIR / img_file), _read_idx(FASHION_DIR / label_file)
        for c, name in enumerate(FASHION_CLASSES):
            folder = root / split / f"{c}_{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in sorted(rng.choice(np.flatnonzero(labels == c), per_class, replace=False)):
                Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
    return True


# --- one search -------------------------------------------------------------------------------

def load_journal(path: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage)


def trial_record(t: optuna.trial.FrozenTrial) -> dict:
    steps = t.intermediate_values
    value = t.value if t.state == optuna.trial.TrialState.COMPLETE else None
    return {"number": t.number, "state": t.state.name,
            "epochs": t.user_attrs.get("epochs_run", len(steps)), "value": value,
            "last_value": value if value is not None else steps[max(steps)] if steps else None,
            "fail_reason": t.user_attrs.get("fail_reason")}


def picked_trial(study: optuna.Study, recipe_file: Path) -> optuna.trial.FrozenTrial | None:
    """The trial named best after confirmation (study attr ``confirmed_best``), else the one
    whose recipe is best_recipe.yaml, else the study's best."""
    confirmed = study.user_attrs.get("confirmed_best")
    if isinstance(confirmed, int) and 0 <= confirmed < len(study.trials):
        return study.trials[confirmed]
    recipe = yaml.safe_load(recipe_file.read_text()) if recipe_file.exists() else None
    if recipe:
        recipe.pop("provenance", None)  # where it came from: not part of the trial's recipe
    same = [t for t in study.trials if t.value is not None
            and json.loads(json.dumps(t.user_attrs.get("recipe"))) == recipe]
    if same:
        return max(same, key=lambda t: t.value)
    try:
        return study.best_trial
    except ValueError:
        return None


def tail(text: str, lines: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_automl(cli: str, space_file: Path, method: str, seed: int, n_trials: int, out: Path,
               missing: list[str]) -> dict:
    name = out.name
    cmd = [cli, "search", str(space_file), "--seed", str(seed), "--device", "cpu",
           "--n-trials", str(1 if method == "baseline" else n_trials), "--study-name", name,
           "--out", str(out), *usable(SEARCH_FLAGS[method], missing)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    result = {"search_seconds": round(time.perf_counter() - started, 2), "command": cmd,
              "errors": [] if proc.returncode == 0 else
              [f"search exit {proc.returncode}: {tail(proc.stderr or proc.stdout)}"]}
    journal = out / JOURNAL
    if not journal.exists():
        return result
    from automl.fidelity import FIRST_RUNG, rung_correlations

    study = load_journal(journal, name)
    confirmations = study.user_attrs.get("confirmations") or {}
    picked = picked_trial(study, out / "best_recipe.yaml")
    result.update(
        metric=study.user_attrs.get("metric", "val/acc1"),
        trials=[trial_record(t) for t in sorted(study.trials, key=lambda t: t.number)],
        confirmations={str(k): list(v) for k, v in confirmations.items()},
        picked_number=None if picked is None else picked.number,
        picked_value=None if picked is None else picked.value,
        first_rung=study.user_attrs.get(FIRST_RUNG),
        rung_correlations=[vars(c) for c in rung_correlations(study)])
    runs = confirmations.get(str(result["picked_number"])) or []
    values = [c["value"] for c in runs if isinstance(c.get("value"), int | float)
              and math.isfinite(c["value"])]
    if values and picked.value is not None:
        result["picked_confirmed_mean"] = statistics.fmean([picked.value, *values])
    recipe = out / "best_recipe.yaml"
    if recipe.exists():
        result.update(retrain(cli, recipe, out.with_name(name + "-retrain"), missing))
    else:
        result["errors"].append("no best_recipe.yaml")
    return result


def retrain(cli: str, recipe: Path, out: Path, missing: list[str]) -> dict:
    """``automl train RECIPE --seed 1000`` (without --seed: a copy of RECIPE with seed 1000)."""
    seed_args = ["--seed", str(RETRAIN_SEED)]
    if "train --seed" in missing:
        fixed = yaml.safe_load(recipe.read_text())
        fixed["seed"] = RETRAIN_SEED
        recipe = recipe.with_name("retrain_recipe.yaml")
        recipe.write_text(yaml.safe_dump(fixed, sort_keys=False))
        seed_args = []
    cmd = [cli, "train", str(recipe), "--device", "cpu", "--out", str(out), *seed_args]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    result = {"retrain_seconds": round(time.perf_counter() - started, 2)}
    if proc.returncode != 0:
        return {**result, "retrain_error": tail(proc.stderr or proc.stdout)}
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    return {**result, "test_acc1": metrics["test/acc1"]}


def run_plain(space: dict, seed: int, n_trials: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    config = {"data_config": space["data"], "n_trials": n_trials, "epochs": space["epochs"],
              "batch_size": space["data"]["batch_size"], "seed": seed,
              "retrain_seed": RETRAIN_SEED}
    cmd = [sys.executable, "-m", "bench.plain_optuna", json.dumps(config),
           "--out", str(out / "result.json")]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO)
    wall = round(time.perf_counter() - started, 2)
    if proc.returncode != 0:
        return {"search_seconds": wall, "errors": [f"plain_optuna exit {proc.returncode}: "
                                                   f"{tail(proc.stderr or proc.stdout)}"]}
    res = json.loads((out / "result.json").read_text())
    return {"search_seconds": res["search_seconds"], "retrain_seconds": res["retrain_seconds"],
            "metric": "val/acc1", "trials": res["trials"], "confirmations": {},
            "picked_number": res["best_number"], "picked_value": res["best_value"],
            "best_params": res["best_params"], "test_acc1": res["test_acc1"], "errors": []}


# --- scoring ----------------------------------------------------------------------------------

def compute_sequence(run: dict) -> list[tuple[int, float | None]]:
    """(epochs, completed val score or None) in trial order, then the confirmation re-runs."""
    seq = [(t["epochs"] or 0, t["value"]) for t in run.get("trials", [])]
    for number in sorted(run.get("confirmations", {}), key=int):
        seq += [(c.get("epochs") or 0, c.get("value") if isinstance(c.get("value"), int | float)
                 and math.isfinite(c["value"]) else None) for c in run["confirmations"][number]]
    return seq


def epochs_to_reach(seq: list[tuple[int, float | None]], target: float | None) -> int | None:
    total = 0
    for epochs, value in seq:
        total += epochs
        if target is not None and value is not None and value >= target:
            return total
    return None


def is_wasted(t: dict, chance: float | None) -> bool:
    if t["state"] == "FAIL":
        return True
    if t["state"] == "PRUNED" and DIVERGED.search(t.get("fail_reason") or ""):
        return True
    return chance is not None and t["last_value"] is not None and t["last_value"] < chance


def interval(values: list) -> dict:
    """Mean with a 95% t-interval (None with fewer than two values)."""
    from scipy import stats

    xs = [v for v in values if v is not None]
    if not xs:
        return {"mean": None, "ci95": None, "n": 0}
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return {"mean": mean, "ci95": None, "n": 1}
    half = float(stats.t.ppf(0.975, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(xs)}


def summarize(runs: dict[str, dict[int, dict]], seeds: list[int], num_classes: int) -> dict:
    """Per-method statistics over seeds, margins and targets for one dataset."""
    random_best = {}
    for s in seeds:
        values = [t["value"] for t in runs["random"][s].get("trials", []) if t["value"] is not None]
        random_best[s] = max(values) if values else None
    random_epochs = {s: epochs_to_reach(compute_sequence(runs["random"][s]), random_best[s])
                     for s in seeds}
    methods = {}
    for method, by_seed in runs.items():
        per_seed = []
        for s in seeds:
            run = by_seed[s]
            chance = NEAR_CHANCE / num_classes if "acc" in run.get("metric", "") else None
            trials = run.get("trials", [])
            seq = compute_sequence(run)
            reach = epochs_to_reach(seq, random_best[s])
            per_seed.append({
                "seed": s, "test_acc1": run.get("test_acc1"), "picked_trial": run.get(
                    "picked_number"), "picked_val": run.get("picked_value"),
                "picked_confirmed_mean": run.get("picked_confirmed_mean"),
                "epochs": sum(e for e, _ in seq),
                "confirmation_epochs": sum(e for e, _ in seq[len(trials):]),
                "trials": len(trials),
                "wasted_share": (sum(is_wasted(t, chance) for t in trials) / len(trials)
                                 if trials else None),
                "epochs_to_random_best": reach,
                "speedup_vs_random": (random_epochs[s] / reach
                                      if reach and random_epochs[s] else None),
                "search_seconds": run.get("search_seconds"),
                "retrain_seconds": run.get("retrain_seconds"),
                "errors": run.get("errors", []) + ([run["retrain_error"]]
                                                   if run.get("retrain_error") else [])})
        col = lambda key, rows=per_seed: [p[key] for p in rows]  # noqa: E731
        speedups = [p["speedup_vs_random"] or 0.0 for p in per_seed
                    if random_epochs[p["seed"]] is not None]
        methods[method] = {
            "test_acc1": interval(col("test_acc1")), "picked_val": interval(col("picked_val")),
            "epochs": interval(col("epochs")), "search_seconds": interval(col("search_seconds")),
            "wasted_share": interval(col("wasted_share")),
            "speedup_vs_random_median": statistics.median(speedups) if speedups else None,
            "per_seed": per_seed}
    margins = {}
    for other in ("baseline", "plain_optuna"):
        pairs = zip(methods["default"]["per_seed"], methods[other]["per_seed"], strict=True)
        diffs = [a["test_acc1"] - b["test_acc1"] for a, b in pairs
                 if a["test_acc1"] is not None and b["test_acc1"] is not None]
        margins[f"default_minus_{other}"] = {**interval(diffs), "per_seed": diffs}
    speedup = methods["default"]["speedup_vs_random_median"]
    targets = {}
    for key, threshold in TARGETS.items():
        if key == "speedup_vs_random":
            targets[key] = {"threshold": threshold, "value": speedup,
                            "met": None if speedup is None else speedup >= threshold}
        else:
            m = margins[key]
            targets[key] = {"threshold": threshold, "value": m["mean"],
                            "met": None if m["mean"] is None else m["mean"] >= threshold,
                            "ci_lower_clears": None if not m["ci95"] else m["ci95"][0] >= threshold}
    return {"num_classes": num_classes, "random_final_best_val": random_best,
            "random_epochs_to_its_best": random_epochs, "methods": methods,
            "margins": margins, "targets": targets}


# --- output -----------------------------------------------------------------------------------

def fmt(stat: dict, scale: float = 1.0, digits: int = 1) -> str:
    if stat["mean"] is None:
        return "-"
    text = f"{stat['mean'] * scale:.{digits}f}"
    if stat["ci95"]:
        text += f" ±{(stat['ci95'][1] - stat['mean']) * scale:.{digits}f}"
    return text


def print_table(name: str, summary: dict) -> None:
    print(f"\n{name} ({summary['num_classes']} classes; mean ± 95% t-interval half-width "
          "over seeds)")
    print(f"{'method':<14}{'test acc1 %':>15}{'picked val %':>15}{'epochs':>14}"
          f"{'search s':>13}{'wasted %':>12}{'speedup':>9}")
    for method, m in summary["methods"].items():
        speed = m["speedup_vs_random_median"]
        print(f"{method:<14}{fmt(m['test_acc1'], 100):>15}{fmt(m['picked_val'], 100):>15}"
              f"{fmt(m['epochs'], 1, 0):>14}{fmt(m['search_seconds'], 1, 0):>13}"
              f"{fmt(m['wasted_share'], 100, 0):>12}"
              f"{'-' if speed is None else f'{speed:.2f}':>9}")
        for p in m["per_seed"]:
            for error in p["errors"]:
                print(f"  seed {p['seed']}: {error.splitlines()[0]}")
    for key, t in summary["targets"].items():
        margin = summary["margins"].get(key)
        shown = "-" if t["value"] is None else (
            f"{t['value']:.2f}" if margin is None else f"{fmt(margin, 100, 2)} pt")
        unit = "x" if margin is None else " pt"
        print(f"target {key} >= {t['threshold'] * (1 if margin is None else 100):g}{unit}: "
              f"{shown}  met: {t['met']}")


# --- main -------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="digits, 4 trials of 2 epochs, 2 seeds (a smoke run)")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 5, quick 2)")
    parser.add_argument("--trials", type=int, help="trials per search (default 16, quick 4)")
    parser.add_argument("--epochs", type=int, help="override every dataset's epochs")
    parser.add_argument("--datasets", help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--jobs", type=int, default=1, help="searches at once (1 thread each)")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as every search subprocess runs
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    n_trials = args.trials or (4 if args.quick else 16)
    names = (args.datasets.split(",") if args.datasets else
             ["digits"] if args.quick else list(DATASETS))
    methods = [m for m in args.methods.split(",") if m]
    unknown = [n for n in names if n not in DATASETS] + [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown dataset/method: {', '.join(unknown)}")
    for needed in ("default", "random", "baseline", "plain_optuna"):
        if needed not in methods:
            parser.error(f"--methods must include {needed} (margins and speedups need it)")
    cli = automl_cli()
    missing = missing_flags(cli)
    if missing:
        print(f"note: the CLI lacks {', '.join(missing)}; running without (see missing_flags)")
    default, default_source = default_space()
    temp = None if args.workdir else tempfile.TemporaryDirectory(prefix="search_efficiency-")
    work = args.workdir or Path(temp.name)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    spaces, num_classes = {}, {}
    for name in names:
        data, epochs = dict(DATASETS[name][0]), DATASETS[name][1]
        if data["dataset"] == "folder":
            data["path"] = str(work / name)
            if not (work / name / "train").is_dir() and not build_fashion_folder(work / name):
                print(f"note: skipping {name}: no Fashion-MNIST files in {FASHION_DIR} "
                      "(Debian package dataset-fashion-mnist)")
                continue
        if args.quick:
            epochs = 2
        spaces[name] = make_space(default, data, args.epochs or epochs)
        (work / f"{name}.yaml").write_text(yaml.safe_dump(spaces[name], sort_keys=False))
        num_classes[name] = load_data(spaces[name]["data"]).num_classes

    tasks = [(name, method, seed) for name in spaces for seed in seeds for method in methods]
    runs: dict[str, dict[str, dict[int, dict]]] = {n: {m: {} for m in methods} for n in spaces}

    def do(task: tuple[str, str, int]) -> dict:
        name, method, seed = task
        out = work / "runs" / f"{name}-{method}-s{seed}"
        if method == "plain_optuna":
            return run_plain(spaces[name], seed, n_trials, out)
        return run_automl(cli, work / f"{name}.yaml", method, seed, n_trials, out, missing)

    print(f"{len(tasks)} searches ({n_trials} trials each, {len(seeds)} seeds, "
          f"{args.jobs} at once) in {work}", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(do, task): task for task in tasks}
        for done, future in enumerate(as_completed(futures), 1):
            (name, method, seed), run = futures[future], future.result()
            runs[name][method][seed] = run
            acc = run.get("test_acc1")
            print(f"[{done}/{len(tasks)}] {name} {method} seed {seed}: search "
                  f"{run.get('search_seconds', 0):.1f} s, retrain "
                  f"{run.get('retrain_seconds') or 0:.1f} s, test/acc1 "
                  f"{'-' if acc is None else f'{acc:.4f}'}"
                  f"{'  ERROR ' + run['errors'][0].splitlines()[0] if run.get('errors') else ''}",
                  flush=True)

    results = {name: summarize(runs[name], seeds, num_classes[name]) for name in spaces}
    for name, summary in results.items():
        print_table(name, summary)
    targets = {key: [r["targets"][key]["met"] for r in results.values()] for key in TARGETS}
    all_met = {key: (all(v) if v and None not in v else None) for key, v in targets.items()}
    print(f"\nall datasets: {all_met}  ({time.perf_counter() - started:.0f} s)")
    # one result file per dataset set, so a run on one dataset never replaces another's
    label = "" if sorted(names) == sorted(DATASETS) else "-" + "-".join(names)
    report(f"search_efficiency{label}", {
        "benchmark": "search_efficiency", "device": device_name(torch.device("cpu")),
        "quick": args.quick, "missing_flags": missing,
        "settings": {"trials": n_trials, "seeds": seeds, "jobs": args.jobs,
                     "methods": methods, "retrain_seed": RETRAIN_SEED,
                     "method_flags": {m: usable(f, missing) for m, f in SEARCH_FLAGS.items()},
                     "default_space": default_source, "spaces": spaces,
                     "wasted": f"FAIL, diverged, or last val/acc1 < {NEAR_CHANCE}/classes",
                     "seconds": round(time.perf_counter() - started, 1)},
        "datasets": results, "targets_met": all_met})
    if temp is not None:
        temp.cleanup()


if __name__ == "__main__":
    main()
