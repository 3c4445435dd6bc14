"""How often is a random draw from a shipped space a wasted trial?

Runs ``automl search SPACE --sampler random --pruner none`` (no warm start, no confirmation:
only the space's own draws) on real data and counts the trials that failed, diverged or
ended near chance (last val/acc1 < 2.5 / classes, as in bench.search_efficiency). The
baseline (trial 0) is left out: it is not a draw. Run it on an older checkout to get the
"before" figure of a space change (flags the older CLI lacks are left out).

    python -m bench.random_draws [--quick] [--space default] [--datasets digits,fashion_mnist_300]
        [--trials 30] [--label NAME]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import yaml

from automl.paths import JOURNAL
from bench.common import device_name, report
from bench.search_efficiency import (
    DATASETS,
    ENV,
    NEAR_CHANCE,
    automl_cli,
    build_fashion_folder,
    is_wasted,
    load_journal,
    make_space,
    trial_record,
)


def shipped_space(name: str) -> dict:
    import importlib.resources

    text = (importlib.resources.files("automl.search_spaces") / f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def draws(cli: str, space: dict, trials: int, work: Path) -> list[dict]:
    """The trial records of one random search of ``trials`` trials (baseline excluded)."""
    (work / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    help_text = subprocess.run([cli, "search", "--help"], capture_output=True, text=True,
                               env=ENV).stdout
    extra = ["--no-warm-start"] if "--no-warm-start" in help_text else []
    extra += ["--confirm-top", "0"] if "--confirm-top" in help_text else []
    cmd = [cli, "search", str(work / "space.yaml"), "--sampler", "random", "--pruner", "none",
           "--n-trials", str(trials + 1), "--device", "cpu", "--study-name", "draws",
           "--out", str(work / "run"), *extra]
    subprocess.run(cmd, check=True, capture_output=True, env=ENV)
    study = load_journal(work / "run" / JOURNAL, "draws")
    return [trial_record(t) for t in study.trials if not t.user_attrs.get("baseline")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--space", default="default")
    parser.add_argument("--datasets", default="digits,fashion_mnist_300")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--label", default="now", help="e.g. the commit measured")
    args = parser.parse_args()
    trials = 3 if args.quick else args.trials
    names = ["digits"] if args.quick else args.datasets.split(",")
    cli, base = automl_cli(), shipped_space(args.space)
    results, started = {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            data, epochs = DATASETS[name]
            data = dict(data)
            if data["dataset"] == "folder":
                data["path"] = str(Path(tmp) / "fashion")
                if not build_fashion_folder(Path(data["path"])):
                    print(f"{name}: Debian's Fashion-MNIST files are absent; skipped")
                    continue
            work = Path(tmp) / name
            work.mkdir()
            records = draws(cli, make_space(base, data, 1 if args.quick else epochs), trials,
                            work)
            chance = NEAR_CHANCE / 10  # both datasets have 10 classes
            wasted = sum(is_wasted(t, chance) for t in records)
            values = [t["last_value"] for t in records if t["last_value"] is not None]
            results[name] = {"draws": len(records), "wasted": wasted,
                             "wasted_share": wasted / max(len(records), 1),
                             "median_val": statistics.median(values) if values else None,
                             "values": [round(v, 4) for v in values]}
            print(f"{name}: {wasted}/{len(records)} draws wasted "
                  f"({results[name]['wasted_share']:.0%}), median val/acc1 "
                  f"{results[name]['median_val']:.3f}")
    report(f"random_draws-{args.label}", {
        "benchmark": "random_draws", "device": device_name(torch.device("cpu")),
        "quick": args.quick, "space": args.space, "label": args.label, "trials": trials,
        "wasted": f"FAIL, diverged, or last val/acc1 < {NEAR_CHANCE}/classes",
        "datasets": results, "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
