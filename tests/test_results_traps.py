"""The traps a new user fell into reading a search (issue 12, part 1), each one a test.

A loss searched as a maximum, show/export reading another study than the one just searched,
an unusable device, a search burning its budget on one repeated failure, a failure without
its traceback, a trial ended early without saying why, and a summary that left the user to
compute the margin over the baseline. Searches are tiny: ``automl_resnet8`` on the embedded
digits dataset for one epoch, in a tmp folder used as the cwd (run folders under ``runs/``).
"""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner, Result
from optuna.trial import TrialState

from automl.cli import cli
from automl.discovery import technique_catalog
from automl.failures import STOP_AFTER, RepeatedFailure, check_repeated_failure
from automl.hookspecs import hookimpl
from automl.report import ConsoleReporter, summary_lines, trial_details, trials_table
from automl.search import Plugins, SearchSettings, create_study, run_search
from automl.space import load_space
from automl.storage import open_storage
from automl.technique import Technique

SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: %(batch_size)d}
epochs: 1
techniques:
  optimizer: {}
  lr_schedule: {}
study: {n_trials: %(n_trials)d%(study)s}
"""


def write_space(folder: Path, name: str, *, batch_size: int = 128, n_trials: int = 1,
                study: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(SPACE % {"batch_size": batch_size, "n_trials": n_trials, "study": study})
    return path


def invoke(*args: str) -> Result:
    """Run a command in-process; a library exception is re-raised with its traceback."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[-1]


# --- the metric's direction ------------------------------------------------------------------


def test_a_loss_is_minimised_when_no_direction_is_given(tmp_path):
    path = write_space(tmp_path, "loss", study=", metric: val/loss")
    space = load_space(path, technique_catalog())
    assert space.study["direction"] == "minimize"
    settings = SearchSettings.from_space(space, study_name="loss", run_dir=tmp_path / "run")
    study = create_study(space, settings)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE


@pytest.mark.parametrize("metric", ["val/acc1", "val/balanced_acc"])
def test_an_accuracy_is_maximised_when_no_direction_is_given(tmp_path, metric):
    path = write_space(tmp_path, "acc", study=f", metric: {metric}")
    assert load_space(path, technique_catalog()).study["direction"] == "maximize"


@pytest.mark.parametrize("metric, direction", [("val/loss", "maximize"),
                                               ("val/acc1", "minimize"),
                                               ("val/balanced_acc", "minimize")])
def test_a_direction_against_the_metric_is_one_located_error(tmp_path, monkeypatch, metric,
                                                             direction):
    write_space(tmp_path, "wrong", study=f", metric: {metric}, direction: {direction}")
    monkeypatch.chdir(tmp_path)
    result = invoke("search", "wrong.yaml", "--device", "cpu")
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith("Error: wrong.yaml:7: study.direction: ") and metric in line
    assert not (tmp_path / "runs").exists()


def test_a_direction_that_agrees_with_the_metric_is_accepted(tmp_path):
    path = write_space(tmp_path, "ok", study=", metric: val/loss, direction: minimize")
    assert load_space(path, technique_catalog()).study["direction"] == "minimize"


# --- which study show and export read --------------------------------------------------------

STUDY_LINE = re.compile(r"^study '([\w.-]+)' in ([^;\s]+)", re.M)


THIRD_OUTPUT: dict[str, str] = {}


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory):
    """`automl search first` then `automl search second` (one trial each) into runs/; their
    recipes differ in the batch size, so an export says which study it came from. Then
    `automl search third --out elsewhere/third` (three trials), outside runs/."""
    root = tmp_path_factory.mktemp("two")
    write_space(root, "first", batch_size=64)
    write_space(root, "second", batch_size=96)
    write_space(root, "third", n_trials=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name in ("first", "second"):
            result = invoke("search", f"{name}.yaml", "--device", "cpu")
            assert result.exit_code == 0, result.output
        result = invoke("search", "third.yaml", "--device", "cpu", "--out", "elsewhere/third")
        assert result.exit_code == 0, result.output
        THIRD_OUTPUT["stdout"] = result.stdout
    return root


def batch_size(recipe_text: str) -> int:
    return yaml.safe_load(recipe_text)["data"]["batch_size"]


def test_show_and_export_without_a_name_read_the_latest_study_and_list_the_other(
        two_studies, monkeypatch):
    monkeypatch.chdir(two_studies)
    for command in ("show", "export"):
        result = invoke(command)
        assert result.exit_code == 0, result.output
        said = STUDY_LINE.search(result.stderr)
        assert said and said.groups() == ("second", str(Path("runs/second/study.journal")))
        assert "first" in result.stderr and "--study-name" in result.stderr  # the other one
    exported = invoke("export")
    assert batch_size(exported.stdout) == 96
    assert re.search(r"^trial 0 \(the best\)", exported.stderr, re.M)


def test_a_name_or_a_run_folder_picks_that_study_and_says_so(two_studies, monkeypatch):
    monkeypatch.chdir(two_studies)
    for options in (["--study-name", "first"], ["--out", "runs/first"],
                    ["--storage", "runs/first/study.journal"]):
        result = invoke("export", *options)
        assert result.exit_code == 0, result.output
        assert STUDY_LINE.search(result.stderr).group(1) == "first"
        assert "others" not in result.stderr  # the only study there
        assert batch_size(result.stdout) == 64


def test_the_only_study_under_runs_is_used_without_a_name(two_studies, tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "first").symlink_to(two_studies / "runs" / "first")
    (tmp_path / "runs" / "train-x").mkdir()  # a training run: no study in it
    monkeypatch.chdir(tmp_path)
    result = invoke("show")
    assert result.exit_code == 0, result.output
    assert STUDY_LINE.search(result.stderr).group(1) == "first"
    assert "others" not in result.stderr


def test_no_study_anywhere_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in ("show", "export"):
        result = invoke(command)
        assert result.exit_code == 2
        assert "automl search" in error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_search_ends_with_the_counts_the_margin_over_the_baseline_and_named_parameters(
        two_studies, monkeypatch):
    monkeypatch.chdir(two_studies)
    result = invoke("show", "--out", "elsewhere/third")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="third", storage=open_storage(
        None, two_studies / "elsewhere" / "third"))
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    assert (f"study 'third': 3 trials: {counts[TrialState.COMPLETE]} finished, "
            f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed"
            in result.stdout)
    best, base = study.best_trial, trials[0]
    assert base.user_attrs["baseline"]
    if best.number == base.number:
        assert f"best: trial 0, val/acc1 {base.value:.4f}: the baseline" in result.stdout
    else:
        assert (f"best: trial {best.number}, val/acc1 {best.value:.4f}; baseline (trial 0) "
                f"{base.value:.4f}: the best is better by {best.value - base.value:.4f}"
                in result.stdout)
    # parameters by name: optimizer(name=sgd, lr=0.05) lr_schedule(schedule=cosine, ...)
    assert re.search(r"optimizer\(name=\w+, lr=[\d.e-]+\)", result.stdout)
    assert re.search(r"lr_schedule\(schedule=\w+, warmup=", result.stdout)
    # the end of `automl search` says the same, with the storage
    searched = THIRD_OUTPUT["stdout"]
    assert f"study 'third' in {Path('elsewhere/third/study.journal')}: 3 trials: " in searched
    assert "best: trial " in searched


def test_the_margin_follows_the_direction(tmp_path):
    study = optuna.create_study(direction="minimize", study_name="loss")
    study.set_user_attr("metric", "val/loss")
    for value, attrs in ((0.5, {"baseline": True}), (0.3, {}), (0.7, {})):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    lines = summary_lines(study)
    assert lines[0] == "study 'loss': 3 trials: 3 finished, 0 pruned, 0 failed"
    assert lines[1] == ("best: trial 1, val/loss 0.3000; baseline (trial 0) 0.5000: the best "
                        "is better by 0.2000, 40.0%")


# --- an unusable device ----------------------------------------------------------------------

UNUSABLE = ["cuda:99", "gpu", "cuda:x"]
if not torch.cuda.is_available():
    UNUSABLE += ["cuda", "cuda:0"]
if not torch.backends.mps.is_available():
    UNUSABLE += ["mps"]


@pytest.mark.parametrize("device", UNUSABLE)
def test_an_unusable_device_is_an_error_before_search_or_train_starts(two_studies, tmp_path,
                                                                      monkeypatch, device):
    write_space(tmp_path, "dev")
    (tmp_path / "recipe.yaml").write_text(
        (two_studies / "runs" / "first" / "best_recipe.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    for args in (["search", "dev.yaml"], ["search", "dev.yaml", "--jobs", "2"],
                 ["train", "recipe.yaml", "--out", "T"]):
        result = invoke(*args, "--device", device)
        assert result.exit_code == 2, result.output
        assert f"--device {device}" in error_line(result).replace("'", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.yaml", "recipe.yaml"]


# --- a search whose first trials all fail the same way ---------------------------------------

BROKEN = """\
model: vit_tiny_patch16_224
data: {dataset: digits, batch_size: 128}
epochs: 1
techniques:
  optimizer: {}
study: {n_trials: 8}
"""
BROKEN_REASON = "AssertionError: Input height (16) doesn't match model (224)."


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_search_whose_first_trials_fail_alike_stops_with_the_reason(tmp_path, monkeypatch,
                                                                      jobs):
    """A ViT for 224-pixel images gets 16-pixel digits: every trial fails the same way."""
    (tmp_path / "broken.yaml").write_text(BROKEN)
    monkeypatch.chdir(tmp_path)
    result = invoke("search", "broken.yaml", "--device", "cpu", "--jobs", str(jobs))
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert line.startswith(f"Error: stopped: the first {STOP_AFTER}") or jobs > 1, line
    assert "trials all failed with the same reason" in line and BROKEN_REASON in line
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr  # named once, not once per worker
    study = optuna.load_study(study_name="broken",
                              storage=open_storage(None, tmp_path / "runs" / "broken"))
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert STOP_AFTER <= len(failed) <= STOP_AFTER + jobs - 1  # workers finish their trial
    assert len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) == 8 - len(failed)
    # each failure's full traceback is in its log, and `automl show --trial N` prints it
    for trial in failed:
        log = Path(trial.user_attrs["traceback_log"])
        assert log == (tmp_path / "runs" / "broken" / "trials" /
                       f"trial-{trial.number:05d}.log").resolve()
        text = log.read_text()
        assert "Traceback (most recent call last)" in text and BROKEN_REASON in text
    shown = invoke("show", "--trial", str(failed[0].number))
    assert shown.exit_code == 0, shown.output
    assert f"trial {failed[0].number}" in shown.stdout and "failed" in shown.stdout
    assert f"reason: {BROKEN_REASON}" in shown.stdout
    assert "Traceback (most recent call last)" in shown.stdout
    assert "optimizer(name=" in shown.stdout
    if jobs == 1:  # resuming without a fix stops again after one more trial
        again = invoke("search", "broken.yaml", "--device", "cpu")
        assert again.exit_code == 1
        assert f"the first {STOP_AFTER + 1} trials all failed" in error_line(again)


def _trial(number_state_reason):
    state, reason = number_state_reason
    attrs = {"fail_reason": reason} if reason else {}
    return optuna.trial.create_trial(state=state, user_attrs=attrs,
                                     value=0.5 if state == TrialState.COMPLETE else None)


@pytest.mark.parametrize("history, stops", [
    ([(TrialState.FAIL, "x")] * 3, True),
    ([(TrialState.FAIL, "x")] * 2, False),
    ([(TrialState.FAIL, "x"), (TrialState.FAIL, "y"), (TrialState.FAIL, "x")], False),
    ([(TrialState.COMPLETE, None)] + [(TrialState.FAIL, "x")] * 3, False),  # it worked once
    ([(TrialState.PRUNED, "same parameters as trial 0")] + [(TrialState.FAIL, "x")] * 3, False),
    ([(TrialState.FAIL, "y")] + [(TrialState.FAIL, "x")] * 3, True),  # the last three agree
    ([(TrialState.FAIL, "x"), (TrialState.FAIL, "interrupted (SIGINT)"),
      (TrialState.FAIL, "x")], False),  # an interrupted trial is no failure of the setup
])
def test_which_failures_stop_a_search(history, stops):
    study = optuna.create_study()
    for entry in history:
        study.add_trial(_trial(entry))
    if stops:
        with pytest.raises(RepeatedFailure, match="same reason \\(x\\)") as caught:
            check_repeated_failure(study.get_trials())
        assert caught.value.exit_code == 1
    else:
        check_repeated_failure(study.get_trials())


# --- a trial that ended early says why -------------------------------------------------------


class FlatScore(Technique):
    """Holds val/acc1 at 0.5 every epoch, so early stopping (patience 1) ends training after
    the second epoch.

    Helps: testing. Suggested: never. Source: this test.
    """

    name = "flat_score"

    @hookimpl(tryfirst=True)
    def on_validation(self, state, metrics):
        metrics["val/acc1"] = 0.5


EARLY = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: 4
techniques:
  optimizer: {name: sgd, lr: 0.05}
  flat_score: {enabled: true}
  early_stopping: {enabled: true, patience: 1, monitor: val/acc1}
study: {n_trials: 2, pruner: none, warm_start: false}
"""


def test_a_trial_that_ended_early_says_why_on_its_line_and_in_the_tables(tmp_path, capsys):
    catalog = {**technique_catalog(), "flat_score": FlatScore}
    (tmp_path / "early.yaml").write_text(EARLY)
    space = load_space(tmp_path / "early.yaml", catalog)
    settings = SearchSettings.from_space(space, study_name="early", run_dir=tmp_path / "run",
                                         device="cpu")
    study = run_search(space, settings, ConsoleReporter("val/acc1", live=False),
                       plugins=Plugins(catalog=catalog))
    first, second = study.trials
    stopped = "early stopping: val/acc1 did not improve for 1 epoch (after epoch 2 of 4)"
    assert first.state == TrialState.COMPLETE and first.user_attrs["epochs_run"] == 2
    assert first.user_attrs["ended_early"] == stopped
    duplicate = "same parameters as trial 0, not trained again"
    assert second.state == TrialState.PRUNED and second.user_attrs["ended_early"] == duplicate
    lines = capsys.readouterr().out.splitlines()
    assert any(re.match(r"trial\s+0\s+done\s", line) and f"({stopped})" in line
               for line in lines), lines
    assert any(re.match(r"trial\s+1\s+pruned\s", line) and f"({duplicate})" in line
               for line in lines), lines
    table = trials_table(study, "val/acc1").splitlines()
    row = next(i for i, line in enumerate(table) if line.startswith("0*"))
    assert table[row + 1].strip() == f"ended early: {stopped}"
    assert f"ended early: {stopped}" in trial_details(study, 0)
    assert summary_lines(study)[0] == ("study 'early': 2 trials: 1 finished, 1 pruned, 0 failed "
                                       "(1 of the finished ended early)")


def test_a_name_finds_its_study_in_another_run_folder_under_runs(two_studies, tmp_path,
                                                                 monkeypatch):
    """`automl search first.yaml --out runs/exp1`, then `automl show --study-name first`."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "exp1").symlink_to(two_studies / "runs" / "first")
    (tmp_path / "runs" / "second").symlink_to(two_studies / "runs" / "second")
    monkeypatch.chdir(tmp_path)
    result = invoke("export", "--study-name", "first")
    assert result.exit_code == 0, result.output
    assert STUDY_LINE.search(result.stderr).groups() == ("first",
                                                         str(Path("runs/exp1/study.journal")))
    assert batch_size(result.stdout) == 64
    missing = invoke("show", "--study-name", "nope")
    assert missing.exit_code == 2 and "runs/nope/study.journal" in error_line(missing)
