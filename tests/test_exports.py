"""Taking a recipe elsewhere: ``automl export --format timm|torchvision``, and provenance.

The exported options are checked against the facts of the two scripts' argument lists
(``tests/data/*_train_args.txt``, read from their repositories): every option written must
exist there, with a value of the right form. Provenance goes from a search through
``automl export`` into ``automl train`` and its ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner

from automl.cli import cli
from automl.discovery import technique_catalog
from automl.exports import (
    FORMATS,
    TIMM,
    TORCHVISION,
    DataShape,
    render,
    timm_export,
    torchvision_export,
)
from automl.recipe import Recipe
from automl.report import SilentReporter
from automl.search import BEST_RECIPE, SearchSettings, run_search
from automl.space import load_recipe, load_space
from automl.warm_start import known_recipes

optuna.logging.set_verbosity(optuna.logging.WARNING)
FACTS = Path(__file__).parent / "data"
SHAPE = DataShape(image_size=32, in_chans=3, num_classes=10)
BASE = {"optimizer": {"name": "sgd", "lr": 0.1},
        "lr_schedule": {"schedule": "cosine", "warmup": 0.0, "warmup_shape": "linear",
                        "cycles": 3}}
SCRIPT = Path(sys.executable).parent / "automl"
AUTOML = str(SCRIPT) if SCRIPT.exists() else shutil.which("automl")


# --- the facts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    dest: str
    kind: str  # int, float, str, str.lower, store_true, utils.ParseKwargs
    nargs: str  # '-': one value
    values: str  # a regular expression of the accepted values, '-': any


def read_facts(name: str) -> dict[str, Option]:
    """The facts file as {dest: Option} (lines starting with # are its header)."""
    options = {}
    for line in (FACTS / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        flags, dest, kind, nargs, values, *_ = line.split("\t")
        options[dest] = Option(tuple(flags.split()), dest, kind, nargs, values)
    return options


TIMM_FACTS = read_facts("timm_train_args.txt")
TV_FACTS = read_facts("torchvision_train_args.txt")
TV_BY_FLAG = {flag: o for o in TV_FACTS.values() for flag in o.flags}


def scalar_problem(option: Option, value) -> str | None:
    """Why ``value`` (a YAML value) is not of the option's form, or None."""
    if option.kind == "store_true":
        ok = isinstance(value, bool)
    elif option.kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif option.kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str) and (option.values == "-"
                                         or re.fullmatch(option.values, value) is not None)
    return None if ok else f"{option.dest}: {value!r} is not a {option.kind} ({option.values})"


def yaml_value_problem(option: Option, value) -> str | None:
    """args.yaml values are used as parsed (parser.set_defaults): lists for nargs options."""
    if option.kind == "utils.ParseKwargs":
        return None if isinstance(value, dict) else f"{option.dest}: expected a mapping"
    if option.nargs == "-" or option.nargs == "?":
        return scalar_problem(option, value)
    if not isinstance(value, list):
        return f"{option.dest}: nargs {option.nargs} needs a list, got {value!r}"
    if option.nargs.isdigit() and len(value) != int(option.nargs):
        return f"{option.dest}: needs {option.nargs} values"
    return next((p for v in value if (p := scalar_problem(option, v))), None)


def timm_problems(text: str) -> list[str]:
    options = yaml.safe_load(text)
    problems = [f"{key}: not a dest of timm's train.py" for key in options
                if key not in TIMM_FACTS]
    problems += [p for key, value in options.items() if key in TIMM_FACTS
                 if (p := yaml_value_problem(TIMM_FACTS[key], value))]
    return problems


def torchvision_command(text: str) -> list[str]:
    """The tokens after ``python train.py`` (comment lines and line continuations dropped)."""
    command = " ".join(line.rstrip("\\") for line in text.splitlines()
                       if not line.startswith("#"))
    tokens = shlex.split(command)
    assert tokens[:2] == ["python", "train.py"], tokens[:2]
    return tokens[2:]


def torchvision_problems(text: str) -> list[str]:
    tokens, problems = torchvision_command(text), []
    i = 0
    while i < len(tokens):
        flag = tokens[i]
        option = TV_BY_FLAG.get(flag)
        if option is None:
            problems.append(f"{flag}: not an option of torchvision's train.py")
            i += 1
            continue
        if option.kind == "store_true":
            i += 1
            continue
        value = tokens[i + 1] if i + 1 < len(tokens) else None
        try:
            parsed = {"int": int, "float": float}.get(option.kind, str.lower
                                                     if option.kind == "str.lower" else str)(value)
        except (TypeError, ValueError):
            problems.append(f"{flag}: {value!r} does not parse as {option.kind}")
        else:
            if (p := scalar_problem(option, parsed)):
                problems.append(p)
        i += 2
    return problems


def torchvision_flags(text: str) -> dict[str, str | bool]:
    tokens, flags = torchvision_command(text), {}
    i = 0
    while i < len(tokens):
        option = TV_BY_FLAG[tokens[i]]
        if option.kind == "store_true":
            flags[option.flags[-1]], i = True, i + 1
        else:
            flags[option.flags[-1]], i = tokens[i + 1], i + 2
    return flags


def test_the_facts_name_the_options_the_issue_names():
    """The facts files are what the scripts are known to take (a typo here would let a wrong
    option through)."""
    for dest in ("smoothing", "mixup", "cutmix", "reprob", "model_ema_decay", "drop_path",
                 "clip_grad", "sched", "warmup_epochs", "warmup_lr", "opt", "opt_eps",
                 "weight_decay", "aa", "lr", "epochs", "batch_size", "img_size", "num_classes",
                 "model", "aug_repeats", "grad_accum_steps", "crop_pct"):
        assert dest in TIMM_FACTS, dest
    for flag in ("--norm-weight-decay", "--bias-weight-decay", "--auto-augment", "--ra-magnitude",
                 "--random-erase", "--model-ema-steps", "--clip-grad-norm", "--train-crop-size",
                 "--val-resize-size", "--val-crop-size", "--ra-sampler", "--ra-reps",
                 "--lr-warmup-method", "--label-smoothing", "-b", "--wd"):
        assert flag in TV_BY_FLAG, flag
    assert TV_BY_FLAG["--wd"].dest == "weight_decay"


# --- each technique's option ----------------------------------------------------------------


def recipe(techniques: dict | None = None, epochs: int = 20, batch_size: int = 128) -> Recipe:
    return Recipe(model="resnet18", data={"dataset": "cifar10", "batch_size": batch_size},
                  epochs=epochs, seed=3, techniques={**BASE, **(techniques or {})})


# technique and parameters -> the options that say the same (timm dests, torchvision flags)
CASES = [
    ({"optimizer": {"name": "adamw", "lr": 0.003}},
     {"opt": "adamw", "lr": 0.003}, {"--opt": "adamw", "--lr": "0.003"}),
    ({"optimizer": {"name": "nesterov", "lr": 0.2}},
     {"opt": "sgd", "lr": 0.2, "momentum": 0.9},
     {"--opt": "sgd_nesterov", "--lr": "0.2", "--momentum": "0.9"}),
    ({"optimizer": {"name": "sgd", "lr": 0.1}},
     {"opt": "momentum", "lr": 0.1}, {"--opt": "sgd", "--lr": "0.1"}),
    ({"lr_schedule": {"schedule": "cosine", "warmup": 0.1, "warmup_shape": "linear",
                      "cycles": 3}},
     {"sched": "cosine", "warmup_epochs": 2, "epochs": 18, "warmup_prefix": True,
      "sched_on_updates": True, "min_lr": 0.0},
     {"--lr-scheduler": "cosineannealinglr", "--lr-warmup-epochs": "2",
      "--lr-warmup-method": "linear", "--epochs": "20"}),
    ({"lr_schedule": {"schedule": "step", "warmup": 0.0, "warmup_shape": "linear",
                      "cycles": 3}},
     {"sched": "multistep", "decay_milestones": [10, 15], "decay_rate": 0.1},
     {"--lr-scheduler": "steplr", "--lr-gamma": "0.1"}),
    ({"lr_schedule": {"schedule": "constant", "warmup": 0.1, "warmup_shape": "constant",
                      "cycles": 3}},
     {"sched": "step", "decay_rate": 1.0},
     {"--lr-scheduler": "steplr", "--lr-gamma": "1.0", "--lr-warmup-method": "constant",
      "--lr-warmup-decay": "0.1"}),
    ({"weight_decay": {"value": 0.05, "exclude_norm_bias": True}},
     {"weight_decay": 0.05},
     {"--weight-decay": "0.05", "--norm-weight-decay": "0.0", "--bias-weight-decay": "0.0"}),
    ({"label_smoothing": {"smoothing": 0.1}},
     {"smoothing": 0.1}, {"--label-smoothing": "0.1"}),
    ({"mixup": {"alpha": 0.2}, "cutmix": {"alpha": 1.0}},
     {"mixup": 0.2, "cutmix": 1.0, "mixup_prob": 1.0},
     {"--mixup-alpha": "0.2", "--cutmix-alpha": "1.0"}),
    ({"augment_policy": {"policy": "randaugment", "magnitude": 9, "num_ops": 2}},
     {"aa": "rand-m3-n2-p1.0"}, {"--auto-augment": "ra", "--ra-magnitude": "9"}),
    ({"augment_policy": {"policy": "trivialaugment", "magnitude": 9, "num_ops": 2}},
     {"aa": "rand-m10-n1-mstd101-p1.0"}, {"--auto-augment": "ta_wide"}),
    ({"augment_policy": {"policy": "autoaugment_imagenet", "magnitude": 9, "num_ops": 2}},
     {"aa": "original"}, {"--auto-augment": "imagenet"}),
    ({"augmix": {"severity": 3, "mixture_width": 3}},
     {"aa": "augmix-m3-w3"}, {"--auto-augment": "augmix", "--augmix-severity": "3"}),
    ({"random_erasing": {"p": 0.25, "area_max": 0.33, "fill": "zero"}},
     {"reprob": 0.25, "remode": "const"}, {"--random-erase": "0.25"}),
    ({"ema": {"decay": 0.999}},
     {"model_ema": True, "model_ema_decay": 0.999},
     # 1 - (1 - 0.999) * epochs / batch: 0.999 per step after the script's rescaling
     {"--model-ema": True, "--model-ema-steps": "1",
      "--model-ema-decay": repr(float(f"{1 - 0.001 * 20 / 128:.10g}"))}),
    ({"dropout": {"rate": 0.2}}, {"drop": 0.2}, {}),
    ({"stochastic_depth": {"rate": 0.1}}, {"drop_path": 0.1}, {}),
    ({"grad_clip": {"max_norm": 1.0}},
     {"clip_grad": 1.0, "clip_mode": "norm"}, {"--clip-grad-norm": "1.0"}),
    ({"batch_size": {"size": 64, "lr_scaling": "linear"}},
     {"batch_size": 64, "lr": 0.05}, {"--batch-size": "64", "--lr": "0.05"}),
    ({"grad_accumulation": {"steps": 2}}, {"grad_accum_steps": 2}, {}),
    ({"repeated_augmentation": {"repeats": 3}},
     {"aug_repeats": 3.0}, {"--ra-sampler": True, "--ra-reps": "3"}),
    ({"long_training": {"multiplier": 2.0}}, {"epochs": 40}, {"--epochs": "40"}),
    ({"flip": {"p": 0.3}}, {"hflip": 0.3}, {}),
    ({"binary_cross_entropy": {}}, {"bce_loss": True}, {}),
    ({"sync_batch_norm": {}}, {"sync_bn": True}, {"--sync-bn": True}),
    ({"fixres": {"train_scale": 0.75, "calibration_batches": 10}},
     {"img_size": 24}, {"--train-crop-size": "24", "--val-crop-size": "32"}),
    ({"inference_resize": {"scale": 1.25}},
     {"img_size": 32}, {"--train-crop-size": "32", "--val-resize-size": "40",
                        "--val-crop-size": "40"}),
    ({}, {"num_classes": 10, "in_chans": 3, "model": "resnet18", "seed": 3, "smoothing": 0.0,
          "weight_decay": 0.0, "hflip": 0.0, "crop_pct": 1.0},
     {"--model": "resnet18", "--batch-size": "128"}),
]


@pytest.mark.parametrize("techniques, timm_options, tv_flags", CASES,
                         ids=[", ".join(c[0]) or "core" for c in CASES])
def test_each_technique_gives_the_expected_option(techniques, timm_options, tv_flags):
    r = recipe(techniques)
    timm_text = render(r, "timm", SHAPE)
    written = yaml.safe_load(timm_text)
    assert {k: written.get(k) for k in timm_options} == timm_options, timm_text
    assert timm_problems(timm_text) == []
    tv_text = render(r, "torchvision", SHAPE)
    flags = torchvision_flags(tv_text)
    assert {k: flags.get(k) for k in tv_flags} == tv_flags, tv_text
    assert torchvision_problems(tv_text) == []


def test_every_technique_is_mapped_or_listed():
    """No technique is dropped silently: it is in the target's table (an option or a note), or
    the header names it as not mapped."""
    catalog = technique_catalog()
    for name, cls in catalog.items():
        params = dict(cls.defaults)
        if name == "transfer_learning":
            params["checkpoint"] = "weights.pt"
        r = recipe({name: params})
        for export, table in ((timm_export(r, SHAPE), TIMM),
                              (torchvision_export(r, SHAPE), TORCHVISION)):
            assert name in table or any(line.startswith(name) for line in export.not_mapped), \
                (name, export.not_mapped)


@pytest.mark.parametrize("name, timm_listed, tv_listed", [
    ("focal_loss", True, True), ("class_weights", True, True), ("triplet_loss", True, True),
    ("random_crop", True, True), ("norm_layer", True, True), ("ghost_batch_norm", True, True),
    ("progressive_resizing", True, True), ("early_stopping", True, True),
    ("l1_penalty", True, True), ("weight_init", True, True),
    ("dropout", False, True), ("stochastic_depth", False, True),
    ("grad_accumulation", False, True), ("binary_cross_entropy", False, True),
    ("fixres", True, False), ("inference_resize", True, False),
])
def test_unmappable_techniques_are_listed_in_the_header(name, timm_listed, tv_listed):
    params = dict(technique_catalog()[name].defaults)
    r = recipe({name: params})
    for fmt, listed in (("timm", timm_listed), ("torchvision", tv_listed)):
        text = render(r, fmt, SHAPE)
        assert any(line.startswith(name) for line in header_list(text, "Not mapped")) == listed, \
            text


def header_list(text: str, heading: str) -> list[str]:
    """The items under one heading of an export's header comment."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"# {heading}"))
    items = []
    for line in lines[start + 1:]:
        if not line.startswith("#   - "):
            break
        items.append(line.removeprefix("#   - "))
    return items


def test_approximations_are_said():
    r = recipe({"mixup": {"alpha": 0.2}, "cutmix": {"alpha": 1.0},
                "weight_decay": {"value": 1e-4, "exclude_norm_bias": False},
                "lr_schedule": {"schedule": "onecycle", "warmup": 0.2,
                                "warmup_shape": "linear", "cycles": 3}})
    timm_text = render(r, "timm", SHAPE)
    assert "timm picks one of them per batch" in timm_text
    assert "always exempts biases and norm weights" in timm_text
    assert "onecycle: timm has none" in timm_text
    tv_text = render(r, "torchvision", SHAPE)
    assert "--norm-weight-decay" not in tv_text  # biases and norm weights decay, as trained
    assert "once per epoch" in tv_text


def test_known_recipes_export_to_the_commands_they_were_taken_from():
    """The inverse of search_spaces/known_recipes: torchvision's 2021 recipe gives the
    blog post's flags back, ResNet strikes back A2 its timm arguments."""
    catalog = technique_catalog()
    known = {k.name: k for k in known_recipes()}

    def as_recipe(name: str, model: str) -> Recipe:
        k = known[name]
        techniques = {t: {**catalog[t].defaults, **p} for t, p in k.techniques.items()}
        return Recipe(model=model, data={"dataset": "folder", "batch_size": k.batch_size},
                      epochs=k.epochs, techniques=techniques)

    tv = torchvision_flags(render(as_recipe("torchvision_2021", "resnet50"), "torchvision",
                                  DataShape(176, 3, 1000)))
    assert tv | {"--lr": "0.5", "--lr-scheduler": "cosineannealinglr",
                 "--lr-warmup-epochs": "5", "--lr-warmup-method": "linear",
                 "--auto-augment": "ta_wide", "--epochs": "600", "--random-erase": "0.1",
                 "--weight-decay": "2e-05", "--norm-weight-decay": "0.0",
                 "--label-smoothing": "0.1", "--mixup-alpha": "0.2", "--cutmix-alpha": "1.0",
                 "--train-crop-size": "176", "--val-crop-size": "224", "--model-ema": True,
                 "--ra-sampler": True, "--ra-reps": "4", "--model": "resnet50"} == tv
    timm = yaml.safe_load(render(as_recipe("timm_a2", "resnet50"), "timm",
                                 DataShape(224, 3, 1000)))
    assert {k: timm[k] for k in ("opt", "lr", "weight_decay", "warmup_epochs", "aa",
                                 "aug_repeats", "bce_loss", "mixup", "cutmix", "smoothing",
                                 "drop_path", "sched")} == {
        "opt": "lamb", "lr": 5e-3, "weight_decay": 0.02, "warmup_epochs": 5,
        "aa": "rand-m7-n2-p1.0", "aug_repeats": 3.0, "bce_loss": True, "mixup": 0.1,
        "cutmix": 1.0, "smoothing": 0.0, "drop_path": 0.05, "sched": "cosine"}
    assert timm["epochs"] + timm["warmup_epochs"] == 300  # warmup_prefix: warmup comes first


def test_without_the_data_the_sizes_are_left_to_the_user():
    timm_text = render(recipe(), "timm", None)
    assert "img_size" not in yaml.safe_load(timm_text)
    assert "set them" in timm_text
    assert "set --train-crop-size" in render(recipe(), "torchvision", None)


def test_the_cli_offers_every_format():
    result = CliRunner().invoke(cli, ["export", "--help"])
    assert all(f in result.output for f in FORMATS)
    bad = CliRunner().invoke(cli, ["export", "--format", "keras"])
    assert bad.exit_code == 2 and "keras" in bad.output


# --- provenance: search -> export -> train ---------------------------------------------------


SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: 1
techniques:
  optimizer: {}
  lr_schedule: {}
  label_smoothing: {enabled: true}
study: {n_trials: 1, warm_start: false, confirm_top: 1, confirm_seeds: 1}
"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A one-trial search whose best trial was confirmed with one more seed."""
    root = tmp_path_factory.mktemp("exports")
    (root / "s.yaml").write_text(SPACE)
    space = load_space(root / "s.yaml", technique_catalog())
    settings = SearchSettings.from_space(space, study_name="prov", run_dir=root / "RUN",
                                         device="cpu")
    study = run_search(space, settings, SilentReporter())
    return root, study


def test_best_recipe_and_export_record_their_provenance(searched, tmp_path):
    root, study = searched
    best = yaml.safe_load((root / "RUN" / BEST_RECIPE).read_text())["provenance"]
    trial = study.best_trial
    assert best["study"] == "prov" and best["trial"] == trial.number
    assert best["metric"] == "val/acc1" and best["direction"] == "maximize"
    assert best["score"] == pytest.approx(trial.value)
    assert best["confirmed_runs"] == 2
    assert best["confirmed_mean"] == pytest.approx(
        (trial.value + study.user_attrs["confirmations"][str(trial.number)][0]["value"]) / 2)
    assert best["finished"] == trial.datetime_complete.isoformat(timespec="seconds")
    assert set(best["versions"]) == {"automl-recipes", "python", "torch", "timm", "optuna"}
    assert best["plugins"]["builtins"].startswith("automl-recipes")
    # the versions are those of the process that trained the trial, stored with it
    assert trial.user_attrs["environment"] == {"versions": best["versions"],
                                               "plugins": best["plugins"]}

    result = CliRunner().invoke(cli, ["export", "--out", str(root / "RUN"), "--study-name",
                                      "prov", "-o", str(tmp_path / "r.yaml")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.yaml").read_text() == (root / "RUN" / BEST_RECIPE).read_text()
    for fmt in ("timm", "torchvision"):
        text = CliRunner().invoke(cli, ["export", "--out", str(root / "RUN"), "--study-name",
                                        "prov", "--format", fmt]).stdout
        assert f"# from study 'prov', trial {trial.number}: val/acc1 {trial.value:.4f} " \
               f"(confirmed mean {best['confirmed_mean']:.4f} over 2 runs)" in text
        assert "timm" in text.split("# versions: ", 1)[1].splitlines()[0]


def automl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert AUTOML, "the automl console script is not installed"
    return subprocess.run([AUTOML, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ))


def test_train_carries_the_provenance_into_its_run(searched, tmp_path):
    root, _ = searched
    shutil.copy(root / "RUN" / BEST_RECIPE, tmp_path / "r.yaml")
    provenance = yaml.safe_load((tmp_path / "r.yaml").read_text())["provenance"]
    proc = automl("train", "r.yaml", "--out", "T", "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "provenance" not in proc.stderr
    record = json.loads((tmp_path / "T" / "metrics.json").read_text())
    assert record["recipe_provenance"] == provenance
    assert yaml.safe_load((tmp_path / "T" / "recipe.yaml").read_text())["provenance"] == \
        provenance


def test_a_broken_provenance_warns_and_training_goes_on(searched, tmp_path):
    root, _ = searched
    text = (root / "RUN" / BEST_RECIPE).read_text().split("provenance:")[0]
    (tmp_path / "r.yaml").write_text(text + "provenance: [hand, edited]\n")
    proc = automl("train", "r.yaml", "--out", "T", "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning: r.yaml: provenance: expected a mapping, got list; ignored" in proc.stderr
    record = json.loads((tmp_path / "T" / "metrics.json").read_text())
    assert "recipe_provenance" not in record and record["test_evaluations"] == 1


@pytest.mark.parametrize("block, kept", [
    ("", None),  # a recipe without provenance reads as before
    ("provenance: {study: s, trial: 3, finished: 2026-11-29 10:00:00}\n",
     {"study": "s", "trial": 3, "finished": "2026-11-29 10:00:00"}),  # a hand-written date
    ("provenance: 42\n", None),
    ("provenance: [hand, edited]\n", None),
    ("provenance: {study: {nested: [1, {deep: 2}]}}\n", {"study": {"nested": [1, {"deep": 2}]}}),
])
def test_provenance_is_read_or_dropped_never_an_error(tmp_path, monkeypatch, caplog, block,
                                                      kept):
    monkeypatch.setattr(logging.getLogger("automl"), "propagate", True)
    path = tmp_path / "r.yaml"
    path.write_text("model: automl_resnet8\nepochs: 1\ntechniques:\n"
                    "  optimizer: {name: sgd, lr: 0.1}\n"
                    "  lr_schedule: {schedule: cosine, warmup: 0.0, warmup_shape: linear}\n"
                    + block)
    with caplog.at_level(logging.WARNING, logger="automl"):
        parsed = load_recipe(path, technique_catalog())
    assert parsed.provenance == kept
    assert ("provenance" in caplog.text) == (bool(block) and kept is None)
    assert parsed.techniques.keys() == {"optimizer", "lr_schedule"}
