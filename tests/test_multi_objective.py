"""A technique's metric as the study's metric, and studies of several metrics (issue 14).

A tiny real search (``automl_resnet8`` on the embedded digits dataset, one epoch) on
``[val/acc1, model/params]`` with a test-only technique that adds parameters, so the two
metrics pull apart and the Pareto front is not trivial; then ``show``, ``export`` and
``report`` on it. A test-only technique that declares a metric is searched on it alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from automl.cli import cli
from automl.discovery import technique_catalog
from automl.errors import ConfigError, UserError
from automl.hookspecs import hookimpl
from automl.objectives import CHOSEN_RULE, MODEL_PARAMS, PRUNING_OFF
from automl.report import ConsoleReporter, SilentReporter, summary_lines
from automl.search import Plugins, SearchSettings, create_study, run_search
from automl.space import load_space
from automl.technique import Technique

EXTRA = 20_000  # parameters the test technique adds when its ``extra`` is on


class ExtraParameters(Technique):
    """Extra parameters: adds unused weights to the model (a test-only technique).

    Helps: nothing; it makes model/params differ between trials.
    """

    name = "extra_parameters"
    space = {"size": CategoricalDistribution([0, EXTRA])}
    defaults = {"size": 0}
    default_enabled = True

    @hookimpl
    def modify_model(self, state):
        if self.params["size"]:
            state.model.register_parameter(
                "unused", torch.nn.Parameter(torch.zeros(self.params["size"])))


class Confidence(Technique):
    """Confidence: reports the mean top-1 probability of the validation images (a test-only
    technique declaring its metric).

    Helps: nothing; it is a metric.
    """

    name = "confidence"
    metrics = {"mean_confidence": "maximize"}

    @hookimpl
    def evaluate(self, state, metrics, split, prefix):
        from automl.trainer import device_batches, normalise_batch

        model = state.eval_model
        total, count = 0.0, 0
        with torch.no_grad():
            for images, _ in device_batches(split, [torch.arange(len(split.labels))], state):
                probs = model(normalise_batch(state, images)).float().softmax(1)
                total += probs.max(1).values.sum().item()
                count += len(probs)
        return {"mean_confidence": total / count}


CATALOG = {**technique_catalog(), "extra_parameters": ExtraParameters,
           "confidence": Confidence}

SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: 1
techniques:
  optimizer: {}
  lr_schedule: {}
%(techniques)s
study: {%(study)s}
"""


def write_space(folder: Path, name: str, techniques: str = "", study: str = "n_trials: 1"
                ) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(SPACE % {"techniques": techniques, "study": study})
    return path


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def signed(trial, directions=(1, -1)) -> list[float]:
    return [s * v for s, v in zip(directions, trial.values, strict=True)]


def dominated(trial, others) -> bool:
    mine = signed(trial)
    return any(all(a >= b for a, b in zip(signed(o), mine, strict=True)) and signed(o) != mine
               for o in others)


# --- a search on accuracy and parameters -------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """Four trials on [val/acc1, model/params], with a baseline, a known recipe and a
    confirmation request; the study, its run folder and what the search printed."""
    folder = tmp_path_factory.mktemp("multi")
    path = write_space(folder, "multi", "  extra_parameters: {}\n  label_smoothing: {}",
                       "n_trials: 4, metric: [val/acc1, model/params], sampler: random, "
                       "confirm_top: 1, confirm_seeds: 1")
    space = load_space(path, CATALOG)
    settings = SearchSettings.from_space(space, study_name="multi", run_dir=folder / "run",
                                         device="cpu")
    reporter = ConsoleReporter(settings.metric, live=False)
    import contextlib
    import io
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        study = run_search(space, settings, reporter, plugins=Plugins(catalog=CATALOG))
    return study, folder / "run", printed.getvalue(), space, settings


def test_the_study_has_a_direction_per_metric_and_prunes_nothing(searched):
    study, _, printed, _, settings = searched
    assert [d.name.lower() for d in study.directions] == ["maximize", "minimize"]
    assert settings.metrics == ("val/acc1", MODEL_PARAMS)
    assert study.user_attrs["metrics"] == ["val/acc1", MODEL_PARAMS]
    assert printed.count(PRUNING_OFF) == 1, printed  # said once, at the start
    assert "confirmation skipped" in printed and "confirmations" not in study.user_attrs
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 4
    for t in done:  # the trial's values are the final metrics, in the study's order
        final = t.user_attrs["metrics"]
        assert t.values == [final["val/acc1"], final[MODEL_PARAMS]]
        assert sorted(t.intermediate_values) == [1]  # the first metric's curve, kept
    sizes = {t.number: t.user_attrs["recipe"]["techniques"].get("extra_parameters", {})
             .get("size", 0) for t in done}  # searched on/off: off adds none
    base = min(t.values[1] for t in done)
    for t in done:  # model/params counts the model the trial trained
        assert t.values[1] == base + sizes[t.number]


def test_the_pareto_front_and_the_exported_trial_follow_the_documented_rule(searched):
    study, run_dir, _, _, _ = searched
    done = study.get_trials(states=(TrialState.COMPLETE,))
    front = [t for t in done if not dominated(t, done)]
    assert sorted(t.number for t in study.best_trials) == sorted(t.number for t in front)
    chosen = max(front, key=lambda t: (signed(t), -t.number))  # best val/acc1 on the front
    recipe = yaml.safe_load((run_dir / "best_recipe.yaml").read_text())
    assert recipe["provenance"]["trial"] == chosen.number
    assert recipe["provenance"]["metrics"] == ["val/acc1", MODEL_PARAMS]
    assert recipe["provenance"]["scores"] == pytest.approx(chosen.values)
    summary = "\n".join(summary_lines(study))  # what the search prints at its end
    assert f"exported: trial {chosen.number}, {CHOSEN_RULE}" in summary
    for t in front:
        assert re.search(rf"^  trial\s+{t.number}  val/acc1 ", summary, re.M), summary


def test_show_export_and_report_read_a_study_of_two_metrics(searched, tmp_path):
    study, run_dir, _, _, _ = searched
    shown = invoke("show", "--out", str(run_dir))
    assert shown.exit_code == 0, shown.output
    header = next(line for line in shown.stdout.splitlines() if line.startswith("trial"))
    header = header.split()
    assert header[:4] == ["trial", "state", "val/acc1", MODEL_PARAMS]
    front = {t.number for t in study.best_trials}
    assert "Pareto front:" in shown.output
    assert ("automl export --trial N" in shown.output) == (len(front) > 1)
    assert shown.output.count("(front)") == len(front)
    one = invoke("show", "--out", str(run_dir), "--trial", str(min(front)))
    assert one.exit_code == 0 and f"  {MODEL_PARAMS}: " in one.output, one.output

    exported = invoke("export", "--out", str(run_dir))
    assert exported.exit_code == 0, exported.output
    assert yaml.safe_load(exported.stdout) == \
        yaml.safe_load((run_dir / "best_recipe.yaml").read_text())
    other = max(front)
    again = invoke("export", "--out", str(run_dir), "--trial", str(other))
    assert again.exit_code == 0
    assert yaml.safe_load(again.stdout)["provenance"]["trial"] == other

    pytest.importorskip("plotly")
    pytest.importorskip("matplotlib")
    page = tmp_path / "report.html"
    reported = invoke("report", "--out", str(run_dir), "-o", str(page))
    assert reported.exit_code == 0, reported.output
    text = page.read_text()
    table = text[text.index("<table id='pareto'>"):]
    table = table[:table.index("</table>")]
    assert table.count("<tr><td>") == len(front)


def test_resuming_with_another_metric_list_is_refused(searched):
    _, run_dir, _, space, settings = searched
    for metrics, directions in ((("val/acc1",), ("maximize",)),
                                (("val/acc1", "val/loss"), ("maximize", "minimize")),
                                ((MODEL_PARAMS, "val/acc1"), ("minimize", "maximize"))):
        changed = SearchSettings(**{**settings.__dict__, "metric": metrics[0],
                                    "direction": directions[0], "metrics": metrics,
                                    "directions": directions})
        with pytest.raises(UserError, match=r"study 'multi' optimises \[val/acc1 \(maximize\), "
                                            r"model/params \(minimize\)\], not "):
            create_study(space, changed)


# --- a technique's metric as the study's metric ------------------------------------------


def test_a_metric_a_technique_declares_can_be_the_study_metric(tmp_path):
    path = write_space(tmp_path, "conf", "  confidence: {enabled: true}",
                       "n_trials: 2, metric: val/mean_confidence, warm_start: false")
    space = load_space(path, CATALOG)
    assert space.study["direction"] == "maximize"  # from the declaration
    settings = SearchSettings.from_space(space, study_name="conf", run_dir=tmp_path / "run",
                                         device="cpu")
    study = run_search(space, settings, SilentReporter(), plugins=Plugins(catalog=CATALOG))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert done and study.directions[0].name == "MAXIMIZE"
    for t in done:
        assert 0 < t.value <= 1
        assert t.value == t.user_attrs["metrics"]["val/mean_confidence"]
        assert t.intermediate_values[1] == t.value
    recipe = yaml.safe_load((tmp_path / "run" / "best_recipe.yaml").read_text())
    assert recipe["provenance"]["metric"] == "val/mean_confidence"
    assert recipe["provenance"]["trial"] == study.best_trial.number


class Silent(Technique):
    """Silent: declares a metric and never returns it (a test-only technique)."""

    name = "silent"
    metrics = {"never": "maximize"}

    @hookimpl
    def evaluate(self, state, metrics, split, prefix):
        return {}


def test_a_declared_metric_that_evaluate_does_not_return_fails_the_trial_naming_it(tmp_path):
    catalog = {**CATALOG, "silent": Silent}
    path = write_space(tmp_path, "silent", "  silent: {enabled: true}",
                       "n_trials: 1, metric: val/never")
    space = load_space(path, catalog)
    settings = SearchSettings.from_space(space, study_name="silent", run_dir=tmp_path / "run",
                                         device="cpu")
    study = run_search(space, settings, SilentReporter(), plugins=Plugins(catalog=catalog))
    trial = study.trials[0]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith(
        "MissingMetric: val/never is not among this training's metrics (model/params, "
        "train/loss, val/acc1, val/balanced_acc, val/loss)")


def test_a_technique_metric_can_be_one_of_several(tmp_path):
    path = write_space(tmp_path, "both", "  confidence: {enabled: true}",
                       "metric: [val/acc1, val/mean_confidence, model/params]")
    space = load_space(path, CATALOG)
    assert space.study["directions"] == ["maximize", "maximize", "minimize"]


# --- mistakes ------------------------------------------------------------------------------


@pytest.mark.parametrize("techniques, study, message", [
    ("", "metric: val/acc5",
     "study.metric: unknown metric 'val/acc5'; valid: val/acc1, val/loss, val/balanced_acc, "
     "model/params"),
    ("  confidence: {}", "metric: val/mean_confidence",
     "study.metric: val/mean_confidence comes from technique 'confidence', which is searched "
     "on/off here: a trial without it has no val/mean_confidence; fix it on (techniques: "
     "confidence: {enabled: true})"),
    ("  confidence: {enabled: false}", "metric: val/mean_confidence",
     "which is off here"),
    ("", "metric: [val/acc1, val/mean_confidence]", "which is not in this space"),
    ("", "metric: [val/acc1, model/params, val/acc1]", "study.metric: val/acc1 is listed twice"),
    ("", "metric: []", "study.metric: expected a metric name or a list of them"),
    ("", "metric: [val/acc1, model/params], direction: maximize",
     "study.direction: expected a list of maximize/minimize, one per metric (2), got "
     "'maximize'"),
    ("", "metric: val/loss, direction: down", "study.direction: expected maximize or "
     "minimize, got 'down'"),
    ("", "metric: [val/acc1, model/params], direction: [maximize, maximize]",
     "study.direction: model/params needs minimize"),
])
def test_a_metric_that_cannot_be_optimised_is_one_located_error(tmp_path, techniques, study,
                                                               message):
    path = write_space(tmp_path, "bad", techniques, study)
    with pytest.raises(ConfigError) as caught:
        load_space(path, CATALOG)
    text = str(caught.value)
    assert text.startswith(f"{path}:") and "study." in text
    assert message in text, text


def test_the_cli_says_it_in_one_line(tmp_path, monkeypatch):
    write_space(tmp_path, "dup", "", "metric: [val/acc1, val/acc1]")
    monkeypatch.chdir(tmp_path)
    result = invoke("search", "dup.yaml", "--device", "cpu")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: dup.yaml:8: study.metric: val/acc1 is listed twice")
    assert not (tmp_path / "runs").exists()


def test_a_technique_declaring_metrics_badly_is_refused_at_registration():
    class Bad(Technique):
        """Bad: declares a metric without a direction."""

        name = "bad"
        metrics = {"robust_acc": "higher"}

    with pytest.raises(TypeError, match=r"metrics\['robust_acc'\] must map"):
        Bad.validate_class()


def test_search_help_says_several_metrics_are_not_pruned():
    text = " ".join(invoke("search", "--help").output.split())
    assert "off for a study with several metrics" in text
    assert "Pareto front" in text


def test_a_trial_of_two_metrics_records_its_curve_and_a_late_result_keeps_both_values():
    """Optuna refuses Trial.report with several directions: the curve of the first metric is
    recorded anyway, nothing is pruned, and a result told after a sweep keeps every value."""
    import optuna

    from automl.late_results import LATE_RESULT_OF, TrialWrites
    from automl.optuna_adapter import set_trial_state

    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    writes = TrialWrites(study, trial)
    writes.report(0.5, 1)
    assert not writes.should_prune()
    assert study.trials[trial.number].intermediate_values == {1: 0.5}
    set_trial_state(study, trial, TrialState.FAIL)  # another process's sweep
    writes.report(0.6, 2)
    number = writes.tell(TrialState.COMPLETE, [0.6, 1234.0])
    late = study.trials[number]
    assert late.user_attrs[LATE_RESULT_OF] == trial.number
    assert late.values == [0.6, 1234.0] and late.intermediate_values == {1: 0.5, 2: 0.6}


def test_the_chosen_trial_breaks_ties_on_the_next_metric_then_the_lowest_number():
    import optuna
    from optuna.trial import create_trial

    from automl.objectives import best_trial, pareto_front

    study = optuna.create_study(directions=["maximize", "minimize"])
    for values in ([0.9, 500.0], [0.9, 300.0], [0.8, 100.0], [0.7, 200.0], [0.9, 300.0]):
        study.add_trial(create_trial(values=values))
    trials = study.get_trials()
    assert [t.number for t in pareto_front(trials, study.directions)] == [1, 2, 4]
    assert sorted(t.number for t in study.best_trials) == [1, 2, 4]  # Optuna agrees
    assert best_trial(study).number == 1
