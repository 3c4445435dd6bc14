"""The ``automl`` command end to end: search, resume, show, export, train, listings, options.

The main flow runs the installed console script in subprocesses (so the entry point itself is
exercised); quick checks and the search-driver options use click's ``CliRunner`` in-process.
Everything trains ``automl_resnet8`` on the embedded digits dataset for one or two epochs.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner, Result
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from automl.cli import cli
from automl.discovery import technique_catalog
from automl.space import load_space
from automl.technique import NOT_APPLICABLE

SCRIPT = Path(sys.executable).parent / "automl"
AUTOML = str(SCRIPT) if SCRIPT.exists() else shutil.which("automl")

SPACE_TECHNIQUES = ("optimizer", "lr_schedule", "label_smoothing", "mixup")
DATA = {"dataset": "digits", "batch_size": 128}
TINY = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: %(epochs)d
techniques:
  optimizer: {}
  lr_schedule: {}
  label_smoothing: {}
  mixup: {}
study: {n_trials: 4}
"""

# `trial   3  done    epochs   2  val/acc1 0.7034  best 0.7034 (trial 3)    4.5s  * new best`
TRIAL_LINE = re.compile(r"^trial\s+(\d+)\s+(done|pruned|failed)\s+epochs\s+(\d+)\s+"
                        r"val/acc1\s+(\S+)\s+best\s+([\d.]+) \(trial (\d+)\)", re.M)
TABLE_HEADER = re.compile(r"^trial\s+state\s+val/acc1\s+epochs\s+techniques$", re.M)
TABLE_ROW = re.compile(r"^(\d+)(\*?)\s+(complete|pruned)\s+([\d.]+)\s+(\d+)\s", re.M)


# --- helpers ---------------------------------------------------------------------------------


def automl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed console script."""
    assert AUTOML, "the automl console script is not installed"
    return subprocess.run([AUTOML, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ))


def invoke(*args: str) -> Result:
    """Run a command in-process; a library exception is re-raised with its traceback."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def write_space(folder: Path, name: str = "tiny", epochs: int = 2) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(TINY % {"epochs": epochs})
    return path


def load_study(run_dir: Path, name: str = "tiny") -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(run_dir / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def baseline_recipe(epochs: int = 2) -> dict:
    """The recipe of the space's defaults: required techniques plus default-enabled ones."""
    catalog = technique_catalog()
    techniques = {name: {"enabled": True, **_applicable_defaults(catalog[name])}
                  for name in SPACE_TECHNIQUES
                  if not catalog[name].optional or catalog[name].default_enabled}
    return {"model": "automl_resnet8", "data": dict(DATA), "epochs": epochs, "seed": 0,
            "techniques": techniques}


def _applicable_defaults(cls) -> dict:
    """A technique's defaults without the parameters its defaults' choices leave unused
    (``cycles`` with the default cosine schedule)."""
    return {p: v for p, v in cls.defaults.items()
            if p not in cls.conditions
            or cls.conditions[p].case(cls.defaults[cls.conditions[p].on]) is not NOT_APPLICABLE}


def error_line(result) -> str:
    """The single non-empty line a user error prints (stderr for a subprocess or CliRunner)."""
    text = result.stderr if result.stderr else result.output
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "Traceback" not in text
    return lines[0]


# --- the end-to-end flow through the console script ------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """`automl search tiny.yaml --out RUN` once, through the installed console script."""
    root = tmp_path_factory.mktemp("cli")
    write_space(root)
    proc = automl("search", "tiny.yaml", "--out", "RUN", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, proc


def test_search_prints_trials_table_and_writes_the_run(searched):
    root, proc = searched
    run = root / "RUN"
    trial_lines = TRIAL_LINE.findall(proc.stdout)
    assert [int(t[0]) for t in trial_lines] == [0, 1, 2, 3]
    assert {t[1] for t in trial_lines} <= {"done", "pruned"}
    assert TABLE_HEADER.search(proc.stdout), proc.stdout
    rows = TABLE_ROW.findall(proc.stdout)
    assert sorted(int(r[0]) for r in rows) == [0, 1, 2, 3]
    assert "best_recipe.yaml" in proc.stdout
    assert f"automl train {Path('RUN') / 'best_recipe.yaml'}" in proc.stdout
    assert (run / "best_recipe.yaml").is_file() and (run / "study.journal").is_file()
    assert not (root / "runs").exists()  # --out is honoured; nothing lands in runs/

    study = load_study(run)
    assert len(study.trials) == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    best = study.best_trial
    # the "best" column of the last line and the table's first row name the study's best trial
    assert int(trial_lines[-1][5]) == best.number
    assert float(trial_lines[-1][4]) == pytest.approx(best.value, abs=1e-4)
    assert int(rows[0][0]) == best.number
    # best_recipe.yaml is the full recipe the best trial trained with, and where it came from
    exported = yaml.safe_load((run / "best_recipe.yaml").read_text())
    assert exported.pop("provenance")["trial"] == best.number
    assert exported == best.user_attrs["recipe"]
    for t in study.trials:
        recipe = t.user_attrs["recipe"]
        assert set(recipe["techniques"]) >= {"optimizer", "lr_schedule"}
        assert set(recipe["techniques"]) <= set(SPACE_TECHNIQUES)
        if t.state == TrialState.COMPLETE:
            assert 0.0 <= t.value <= 1.0
            assert t.user_attrs["metrics"]["val/acc1"] == t.value


def test_first_trial_is_the_baseline_of_the_space_defaults(searched):
    root, proc = searched
    study = load_study(root / "RUN")
    first = study.trials[0]
    assert first.user_attrs.get("baseline") is True
    assert not any(t.user_attrs.get("baseline") for t in study.trials[1:])
    assert first.user_attrs["recipe"] == baseline_recipe()
    line0 = next(line for line in proc.stdout.splitlines() if TRIAL_LINE.match(line))
    assert line0.startswith("trial   0") and "(baseline)" in line0
    assert re.search(r"^0\*\s", proc.stdout, re.M)  # the table marks the baseline row
    assert not re.search(r"^[1-9]\d*\*\s", proc.stdout, re.M)


def test_rerun_resumes_without_new_trials_then_adds_exactly_one(searched, tmp_path, monkeypatch):
    root, _ = searched
    shutil.copy(root / "tiny.yaml", tmp_path / "tiny.yaml")
    shutil.copytree(root / "RUN", tmp_path / "RUN")
    before = [(t.number, t.params) for t in load_study(tmp_path / "RUN").trials]

    again = automl("search", "tiny.yaml", "--out", "RUN", cwd=tmp_path)  # the same command
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming with 4 trial(s) done" in again.stdout
    assert "0 trial(s) to run" in again.stdout
    assert TRIAL_LINE.findall(again.stdout) == []
    assert [(t.number, t.params) for t in load_study(tmp_path / "RUN").trials] == before

    monkeypatch.chdir(tmp_path)
    more = invoke("search", "tiny.yaml", "--out", "RUN", "--n-trials", "5")
    assert more.exit_code == 0, more.output
    assert "1 trial(s) to run" in more.output
    assert [int(t[0]) for t in TRIAL_LINE.findall(more.output)] == [4]
    study = load_study(tmp_path / "RUN")
    assert len(study.trials) == 5
    assert [(t.number, t.params) for t in study.trials[:4]] == before
    assert study.trials[4].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert "recipe" in study.trials[4].user_attrs
    assert not study.trials[4].user_attrs.get("baseline")


def test_show_lists_the_trials(searched):
    root, _ = searched
    result = invoke("show", "--out", str(root / "RUN"), "--study-name", "tiny")
    assert result.exit_code == 0, result.output
    assert TABLE_HEADER.search(result.output), result.output  # the study's metric heads it
    rows = TABLE_ROW.findall(result.output)
    assert sorted(int(r[0]) for r in rows) == [0, 1, 2, 3]
    assert int(rows[0][0]) == load_study(root / "RUN").best_trial.number
    top = invoke("show", "--out", str(root / "RUN"), "--study-name", "tiny", "--top", "2")
    assert len(TABLE_ROW.findall(top.output)) == 2


def test_export_best_and_baseline(searched, tmp_path):
    root, _ = searched
    run = str(root / "RUN")
    out = tmp_path / "r.yaml"
    result = invoke("export", "--out", run, "--study-name", "tiny", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    assert out.read_text() == (root / "RUN" / "best_recipe.yaml").read_text()

    printed = invoke("export", "--out", run, "--study-name", "tiny")
    assert printed.exit_code == 0
    assert printed.stdout == out.read_text()  # which study and trial: on stderr

    base = tmp_path / "base.yaml"
    result = invoke("export", "--out", run, "--study-name", "tiny", "--trial", "0", "-o", str(base))
    assert result.exit_code == 0, result.output
    exported = yaml.safe_load(base.read_text())
    assert exported.pop("provenance")["trial"] == 0
    assert exported == baseline_recipe()


@pytest.mark.parametrize("command", ["show", "export"])
def test_unknown_study_name_lists_the_names(searched, command):
    root, _ = searched
    result = invoke(command, "--out", str(root / "RUN"), "--study-name", "nope")
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith("Error: ") and "nope" in line and "tiny" in line


def test_export_unknown_trial_and_missing_run_dir(searched, tmp_path):
    root, _ = searched
    result = invoke("export", "--out", str(root / "RUN"), "--study-name", "tiny", "--trial", "9")
    assert result.exit_code == 2
    study_line, error = result.stderr.splitlines()  # the study it read, then the error
    assert study_line.startswith("study 'tiny' in ")
    assert error.startswith("Error: ") and "9" in error
    result = invoke("show", "--out", str(tmp_path / "nothing-here"), "--study-name", "tiny")
    assert result.exit_code == 2
    assert error_line(result).startswith("Error: ")
    assert not (tmp_path / "nothing-here").exists()  # reading never creates a run directory


@pytest.fixture(scope="module")
def trained(searched):
    """Export the best recipe, then `automl train r.yaml --out T` through the console script."""
    root, _ = searched
    export = invoke("export", "--out", str(root / "RUN"), "--study-name", "tiny",
                    "-o", str(root / "r.yaml"))
    assert export.exit_code == 0, export.output
    proc = automl("train", "r.yaml", "--out", "T", "--device", "cpu", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, proc


def test_train_writes_model_metrics_and_recipe(trained):
    root, proc = trained
    out = root / "T"
    assert {p.name for p in out.iterdir()} >= {"model.pt", "metrics.json", "recipe.yaml"}
    record = json.loads((out / "metrics.json").read_text())
    assert record["test_evaluations"] == 1
    acc = record["metrics"]["test/acc1"]
    assert 0.0 <= acc <= 1.0
    assert "val/acc1" in record["metrics"]
    epochs = yaml.safe_load((root / "r.yaml").read_text())["epochs"]
    assert len(record["history"]) == epochs
    assert f"test/acc1 {acc:.4f}" in proc.stdout
    assert len(re.findall(r"^epoch\s+\d+/\d+", proc.stdout, re.M)) == epochs
    assert yaml.safe_load((out / "recipe.yaml").read_text()) == \
        yaml.safe_load((root / "r.yaml").read_text())


def test_trained_weights_load_into_a_fresh_model_and_reproduce_test_accuracy(trained):
    import timm

    import automl.models  # noqa: F401  (registers automl_resnet8 in timm)
    from automl.checkpoints import load_weights
    from automl.data import load_data

    root, _ = trained
    model = timm.create_model("automl_resnet8", num_classes=10, in_chans=1)
    state_dict = load_weights(root / "T" / "model.pt")  # the model file's state_dict entry
    model.load_state_dict(state_dict)  # strict: every key and shape matches
    model.eval()

    data = load_data(dict(DATA))
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model((data.test.images.float() / 255 - mean) / std)
    acc = (logits.argmax(1) == data.test.labels).float().mean().item()
    record = json.loads((root / "T" / "metrics.json").read_text())
    assert acc == pytest.approx(record["metrics"]["test/acc1"], abs=0.01)


# --- listings and help (in-process) ----------------------------------------------------------


def _listed_techniques(output: str) -> dict[str, list[str]]:
    """``name (kind): summary`` header lines, each followed by indented parameter lines (and
    then, for a technique with declared conflicts, ``never on with ...`` lines)."""
    listed: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        header = re.match(r"^(\w+) \((optional|required)[^)]*\): \S", line)
        if header:
            current = listed.setdefault(header.group(1), [])
        elif line.startswith("    ") and line.strip() and current is not None \
                and not line.startswith("    never on with "):
            current.append(line.split()[0])
    return listed


def test_techniques_lists_every_technique_with_its_parameters():
    result = invoke("techniques")
    assert result.exit_code == 0, result.output
    catalog = technique_catalog()
    listed = _listed_techniques(result.output)
    assert set(listed) == set(catalog)
    for name, cls in catalog.items():
        assert listed[name] == list(cls.space), name
        kind = "optional" if cls.optional else "required: always on, at its defaults unless listed"
        assert f"{name} ({kind}): {cls.summary()}" in result.output
    assert "default 0.2" in result.output  # mixup's alpha default is shown


def test_techniques_name_prints_the_full_method_card():
    result = invoke("techniques", "mixup")
    assert result.exit_code == 0, result.output
    card = inspect.cleandoc(technique_catalog()["mixup"].__doc__)
    assert len(card.splitlines()) > 3
    assert card in result.output
    assert set(_listed_techniques(result.output)) == {"mixup"}
    assert _listed_techniques(result.output)["mixup"] == ["alpha"]


def test_techniques_unknown_name_lists_the_valid_ones():
    result = invoke("techniques", "mixupp")
    assert result.exit_code == 2
    line = error_line(result)
    assert "mixupp" in line
    assert all(name in line for name in technique_catalog())


def test_plugins_lists_builtins_and_the_hooks_of_each_technique():
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    assert re.search(r"^builtins \(.+\): discovery hooks register_techniques$", result.output,
                     re.M), result.output
    listed = {}
    for line in result.output.splitlines():
        match = re.match(r"^\s+(\w+)\s+(\w.*)?$", line)
        if match:
            listed[match.group(1)] = sorted((match.group(2) or "").split(", "))
    catalog = technique_catalog()
    assert set(listed) == set(catalog)
    for name, cls in catalog.items():
        marked = sorted(n for n, v in inspect.getmembers(cls) if hasattr(v, "automl_impl"))
        assert marked, f"{name} implements no hook"
        assert listed[name] == marked, name


def test_help_lists_commands_and_options():
    top = invoke("--help")
    assert top.exit_code == 0
    for command in ("search", "show", "export", "train", "techniques", "plugins"):
        assert re.search(rf"^\s+{command}\s+\S", top.output, re.M), command
    search = invoke("search", "--help")
    assert search.exit_code == 0
    for option in ("--n-trials", "--timeout", "--seed", "--study-name", "--out", "--storage",
                   "--sampler", "--pruner", "--device"):
        assert option in search.output, option
    assert "random" in search.output and "median" in search.output
    version = invoke("--version")
    assert version.exit_code == 0 and "0.1.0" in version.output


# --- search driver options (in-process, tiny studies) ----------------------------------------


@pytest.fixture
def space_dir(tmp_path, monkeypatch):
    """A tmp folder holding tiny.yaml (epochs 2), used as the cwd."""
    write_space(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("options, n_trials", [
    (["--pruner", "median"], 3),
    (["--sampler", "cmaes"], 3),
], ids=["median", "cmaes"])
def test_sampler_and_pruner_options_run(space_dir, options, n_trials):
    result = invoke("search", "tiny.yaml", "--out", "RUN", "--n-trials", str(n_trials), *options)
    assert result.exit_code == 0, result.output
    name = options[1]
    assert f"{options[0][2:]} {name}" in result.output  # e.g. "pruner median" in the header
    trials = load_study(space_dir / "RUN").trials
    assert len(trials) == n_trials
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert [int(t[0]) for t in TRIAL_LINE.findall(result.output)] == list(range(n_trials))
    assert (space_dir / "RUN" / "best_recipe.yaml").is_file()


@pytest.fixture(scope="module")
def random_runs(tmp_path_factory):
    """Three fresh `--sampler random --pruner none` searches in new dirs: seeds 7, 7 and 8."""
    root = tmp_path_factory.mktemp("seeded")
    space = write_space(root, "tiny1", epochs=1)
    runs = {}
    for out, seed in (("A", 7), ("B", 7), ("C", 8)):
        result = invoke("search", str(space), "--out", str(root / out), "--sampler", "random",
                        "--pruner", "none", "--n-trials", "3", "--seed", str(seed),
                        "--no-warm-start")
        assert result.exit_code == 0, result.output
        assert "sampler random, pruner none" in result.output
        runs[out] = load_study(root / out, "tiny1").trials
    return runs


def test_random_sampler_without_pruner_completes_every_trial(random_runs):
    for trials in random_runs.values():
        assert len(trials) == 3
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert [t.user_attrs.get("epochs_run") for t in trials] == [1, 1, 1]


def test_same_seed_gives_identical_trials(random_runs):
    a, b, c = random_runs["A"], random_runs["B"], random_runs["C"]
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.user_attrs["recipe"] for t in a] == [t.user_attrs["recipe"] for t in b]
    assert a[0].params == c[0].params  # both start from the same baseline
    assert a[1].params != a[0].params  # the sampler really samples
    assert [t.params for t in a[1:]] != [t.params for t in c[1:]]  # and the seed matters


def test_sqlite_storage_round_trip(space_dir):
    url = f"sqlite:///{space_dir / 'x.db'}"
    result = invoke("search", "tiny.yaml", "--out", "RUN", "--storage", url, "--n-trials", "2")
    assert result.exit_code == 0, result.output
    assert (space_dir / "x.db").is_file()
    with sqlite3.connect(space_dir / "x.db") as db:  # no fsync per commit: write-ahead log
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert not (space_dir / "RUN" / "study.journal").exists()
    assert (space_dir / "RUN" / "best_recipe.yaml").is_file()

    shown = invoke("show", "--storage", url, "--study-name", "tiny")
    assert shown.exit_code == 0, shown.output
    assert sorted(int(r[0]) for r in TABLE_ROW.findall(shown.output)) == [0, 1]
    exported = invoke("export", "--storage", url, "--study-name", "tiny")
    assert exported.exit_code == 0
    assert exported.stdout == (space_dir / "RUN" / "best_recipe.yaml").read_text()
    missing = invoke("show", "--storage", url, "--study-name", "nope")
    assert missing.exit_code == 2 and "tiny" in error_line(missing)


def test_bad_sampler_is_rejected_before_any_write(space_dir):
    result = invoke("search", "tiny.yaml", "--out", "RUN", "--sampler", "foo")
    assert result.exit_code == 2
    assert "foo" in result.output and "tpe" in result.output
    assert not (space_dir / "RUN").exists()


def test_bad_study_value_in_the_space_is_one_located_line(space_dir):
    (space_dir / "bad.yaml").write_text(TINY.replace("{n_trials: 4}", "{n_trials: 4, pruner: x}")
                                        % {"epochs": 2})
    result = invoke("search", "bad.yaml", "--out", "RUN")
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith("Error: bad.yaml:9: study.pruner: ") and "hyperband" in line
    assert not (space_dir / "RUN").exists()


def test_train_refuses_a_space_with_searched_values(space_dir):
    result = invoke("train", "tiny.yaml", "--out", "T")
    assert result.exit_code == 2
    line = error_line(result)
    first_free = load_space(space_dir / "tiny.yaml", technique_catalog()).free_keys()[0]
    assert line.startswith("Error: tiny.yaml") and f"{first_free} is searched" in line
    assert not (space_dir / "T").exists()


# --- regressions: bugs found and fixed ----------------------------------------------------


def test_export_into_a_missing_folder_creates_it(searched, tmp_path):
    root, _ = searched
    target = tmp_path / "missing" / "r.yaml"
    result = CliRunner().invoke(cli, ["export", "--out", str(root / "RUN"), "--study-name",
                                      "tiny", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text() == (root / "RUN" / "best_recipe.yaml").read_text()


def test_reading_a_missing_journal_storage_writes_nothing(tmp_path):
    journal = tmp_path / "nothing" / "x.journal"
    result = invoke("show", "--storage", str(journal), "--study-name", "tiny")
    assert result.exit_code == 2
    assert error_line(result).startswith("Error: ")
    assert not (tmp_path / "nothing").exists()


def test_resume_with_another_metric_is_refused(searched, tmp_path, monkeypatch):
    root, _ = searched
    shutil.copytree(root / "RUN", tmp_path / "RUN")
    best_before = (tmp_path / "RUN" / "best_recipe.yaml").read_text()
    (tmp_path / "tiny.yaml").write_text(
        (TINY % {"epochs": 2}).replace("{n_trials: 4}",
                                       "{n_trials: 5, metric: val/loss, direction: minimize}"))
    monkeypatch.chdir(tmp_path)
    result = invoke("search", "tiny.yaml", "--out", "RUN")
    assert result.exit_code == 2, result.output
    assert "val/acc1" in error_line(result)
    assert len(load_study(tmp_path / "RUN").trials) == 4
    assert (tmp_path / "RUN" / "best_recipe.yaml").read_text() == best_before


@pytest.mark.parametrize(("old", "new", "key"), [
    ("epochs: 2", "epochs: 3", "epochs"),
    ("  mixup: {}", "  mixup: {alpha: {type: float, low: 0.1, high: 0.3}}", "mixup.alpha"),
    ("  label_smoothing: {}\n", "", "label_smoothing.enabled"),
    ("batch_size: 128", "batch_size: 64", "data.batch_size"),
])
def test_resume_with_another_space_is_refused_naming_the_difference(searched, tmp_path,
                                                                   monkeypatch, old, new, key):
    root, _ = searched
    shutil.copytree(root / "RUN", tmp_path / "RUN")
    text = (TINY % {"epochs": 2}).replace("{n_trials: 4}", "{n_trials: 5}")
    assert old in text
    (tmp_path / "tiny.yaml").write_text(text.replace(old, new))
    monkeypatch.chdir(tmp_path)
    result = invoke("search", "tiny.yaml", "--out", "RUN")
    assert result.exit_code == 2, result.output
    assert f"another space: {key} was " in error_line(result)
    assert len(load_study(tmp_path / "RUN").trials) == 4


def test_resume_from_another_data_dir_is_the_same_space(searched, tmp_path, monkeypatch):
    root, _ = searched
    shutil.copytree(root / "RUN", tmp_path / "RUN")
    (tmp_path / "tiny.yaml").write_text((TINY % {"epochs": 2}).replace("{n_trials: 4}",
                                                                       "{n_trials: 5}"))
    monkeypatch.chdir(tmp_path)
    result = invoke("search", "tiny.yaml", "--out", "RUN", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert len(load_study(tmp_path / "RUN").trials) == 5


@pytest.mark.parametrize(("options", "message"), [
    (["--gpus", "all", "--device", "cuda:0"], "--gpus and --device both given"),
    (["--gpus", "zero"], "--gpus"),
])
def test_bad_worker_options_are_refused_before_any_write(space_dir, monkeypatch, options,
                                                          message):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # as on a 2-GPU machine
    result = invoke("search", "tiny.yaml", "--out", "RUN", *options)
    assert result.exit_code == 2
    assert message in error_line(result)
    assert not (space_dir / "RUN").exists()


def test_search_help_documents_the_parallel_and_compile_options():
    text = invoke("search", "--help").output
    for option in ("--jobs", "--gpus", "--compile"):
        assert option in text


# --- train options: --seed, --train-fraction, --include-val (in-process, one epoch) ----------


@pytest.fixture
def subset_recipe(tmp_path, monkeypatch):
    """r.yaml: the baseline recipe, one epoch, searched on train_fraction 0.25; the cwd."""
    recipe = baseline_recipe(epochs=1)
    recipe["data"]["train_fraction"] = 0.25
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _train(*options: str) -> tuple[Result, dict, dict]:
    """`automl train r.yaml --device cpu OPTIONS` (--out first): output, metrics.json, recipe."""
    result = invoke("train", "r.yaml", "--device", "cpu", *options)
    assert result.exit_code == 0, result.output
    out = Path(options[options.index("--out") + 1])
    return (result, json.loads((out / "metrics.json").read_text()),
            yaml.safe_load((out / "recipe.yaml").read_text()))


def test_train_seed_changes_the_run_and_equal_seeds_reproduce(subset_recipe):
    runs = [_train("--out", out, "--seed", seed, "--train-fraction", "0.25")
            for out, seed in (("A", "1"), ("B", "1"), ("C", "2"))]
    (_, first, recipe), (_, again, _), (_, other, _) = runs
    assert first["seed"] == again["seed"] == 1 and other["seed"] == 2
    assert recipe["seed"] == 1  # the recipe written is the one trained
    assert first["history"] == again["history"] and first["metrics"] == again["metrics"]
    from automl.checkpoints import load_weights

    weights = [load_weights(subset_recipe / out / "model.pt") for out in ("A", "B", "C")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert first["history"][0]["train/loss"] != other["history"][0]["train/loss"]
    assert any(not torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_train_fraction_and_include_val_are_recorded(subset_recipe):
    result, record, recipe = _train("--out", "T", "--train-fraction", "0.5", "--include-val")
    assert (record["seed"], record["train_fraction"], record["include_val"]) == (0, 0.5, True)
    assert record["val_held_out"] is False and "not held out" in record["note"]
    assert recipe["data"]["train_fraction"] == 0.5 and recipe["seed"] == 0
    epoch_lines = re.findall(r"^epoch\s+\d+/\d+.*$", result.output, re.M)
    assert len(epoch_lines) == 1 and all("not held out" in line for line in epoch_lines)
    assert "all of the training split" not in result.output


def test_train_uses_all_of_the_training_split_unless_told_otherwise(subset_recipe):
    result, record, recipe = _train("--out", "T")
    assert result.output.splitlines()[0] == \
        "training on all of the training split (the search used train_fraction 0.25)"
    assert (record["seed"], record["train_fraction"], record["include_val"]) == (0, 1.0, False)
    assert record["val_held_out"] is True and "note" not in record
    assert "train_fraction" not in recipe["data"]  # 1, the default
    assert "not held out" not in result.output


@pytest.mark.parametrize(("data", "message"), [
    ("{dataset: digits, batch_size: 128, include_val: true}", "data.include_val: unknown key"),
    ("{dataset: digits, batch_size: 128, train_fraction: 0}",
     "data.train_fraction: expected a number in (0, 1], got 0"),
])
def test_search_refuses_include_val_and_a_bad_train_fraction(space_dir, data, message):
    (space_dir / "bad.yaml").write_text((TINY % {"epochs": 1}).replace(
        "{dataset: digits, batch_size: 128}", data))
    result = invoke("search", "bad.yaml", "--out", "RUN")
    assert result.exit_code == 2
    assert message in error_line(result)
    assert not (space_dir / "RUN").exists()


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_train_refuses_a_train_fraction_outside_0_1(subset_recipe, value):
    result = invoke("train", "r.yaml", "--out", "T", "--train-fraction", value)
    assert result.exit_code == 2 and "--train-fraction" in result.output
    assert not (subset_recipe / "T").exists()


def test_train_help_documents_seed_fraction_and_include_val():
    text = invoke("train", "--help").output
    for option in ("--seed", "--train-fraction", "--include-val"):
        assert option in text
