"""A trial that raises fails alone: its reason is recorded and printed, the search goes on."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from automl.discovery import technique_catalog
from automl.hookspecs import hookimpl
from automl.report import ConsoleReporter
from automl.search import Plugins, SearchSettings, run_search
from automl.space import load_space
from automl.technique import Technique

MODELS: list[weakref.ref] = []


class Exploding(Technique):
    """Raises from a training hook: a plugin with a bug, or a GPU out of memory.

    Helps: testing. Suggested: never. Source: this test.
    """

    name = "exploding"
    space = {"error": CategoricalDistribution(["value", "oom"])}
    defaults = {"error": "value"}

    @hookimpl
    def on_train_start(self, state):
        MODELS.append(weakref.ref(state.model))

    @hookimpl
    def after_backward(self, state):
        if self.params["error"] == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise ValueError("the plugin has a bug")


SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 64}
epochs: 1
techniques:
  optimizer: {name: sgd, lr: {type: float, low: 0.02, high: 0.08}}
  exploding: {}
study: {sampler: random, pruner: none, n_trials: 8, seed: 0}
"""


@pytest.fixture
def catalog():
    catalog = {**technique_catalog(), "exploding": Exploding}
    MODELS.clear()
    return catalog


def test_failing_trials_name_plugin_and_hook_and_the_search_goes_on(tmp_path: Path, catalog,
                                                                    capsys):
    path = tmp_path / "exploding.yaml"
    path.write_text(SPACE)
    space = load_space(path, catalog)
    settings = SearchSettings.from_space(space, study_name="x", run_dir=tmp_path / "run",
                                         device="cpu", warm_start=False)  # sampled draws
    alive = []

    class Reporter(ConsoleReporter):
        def trial_end(self, study, trial, new_best):
            alive.append(sum(ref() is not None for ref in MODELS))
            super().trial_end(study, trial, new_best)

    study = run_search(space, settings, Reporter("val/acc1", live=False),
                       plugins=Plugins(catalog=catalog))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 8
    reasons = {"value": "plugin exploding, hook after_backward: ValueError: the plugin has a bug",
               "oom": "oom"}
    for trial in trials:
        params = trial.user_attrs["recipe"]["techniques"].get("exploding")
        if params is None:
            assert trial.state == TrialState.COMPLETE
        else:
            assert trial.state == TrialState.FAIL
            assert trial.user_attrs["fail_reason"] == reasons[params["error"]]
    failed = [t.user_attrs["recipe"]["techniques"]["exploding"]["error"] for t in trials
              if t.state == TrialState.FAIL]
    assert set(failed) == {"value", "oom"}, "the seed should draw both errors"
    assert any(t.state == TrialState.COMPLETE for t in trials[1:]), "the search went on"
    assert alive == [0] * 8, "a failed trial's model outlived it"
    out = capsys.readouterr()
    assert "failed" in out.out and "(plugin exploding, hook after_backward: ValueError" in out.out
    assert "Traceback" not in out.err


class NonFinite(Technique):
    """Makes the training loss or the validation score infinite.

    Helps: testing. Suggested: never. Source: this test.
    """

    name = "nonfinite"
    space = {"where": CategoricalDistribution(["loss", "score"])}
    defaults = {"where": "loss"}

    @hookimpl
    def after_loss(self, state):
        if self.params["where"] == "loss":
            state.loss = state.loss * float("inf")

    @hookimpl
    def evaluate(self, state, metrics):
        return {"acc1": float("inf")} if self.params["where"] == "score" else {}


def test_infinite_loss_or_score_prunes_the_trial_and_never_becomes_best(tmp_path):
    catalog = {**technique_catalog(), "nonfinite": NonFinite}
    path = tmp_path / "nonfinite.yaml"
    path.write_text(SPACE.replace("exploding", "nonfinite"))
    space = load_space(path, catalog)
    settings = SearchSettings.from_space(space, study_name="x", run_dir=tmp_path / "run",
                                         device="cpu", warm_start=False)  # sampled draws
    study = run_search(space, settings, ConsoleReporter("val/acc1", live=False),
                       plugins=Plugins(catalog=catalog))
    reasons = {"loss": "training loss is ", "score": "val/acc1 is inf in epoch 1"}
    seen = set()
    for trial in study.trials:
        where = trial.user_attrs["recipe"]["techniques"].get("nonfinite", {}).get("where")
        if where is not None:
            assert trial.state == TrialState.PRUNED
            assert trial.user_attrs["fail_reason"].startswith(reasons[where])
            assert not trial.intermediate_values
            seen.add(where)
    assert seen == {"loss", "score"}, "the seed should draw both"
    best = (tmp_path / "run" / "best_recipe.yaml").read_text()
    assert "nonfinite" not in best and study.best_value < 1.0
