"""Declared conflicts: two techniques that cannot work together are never both on.

A technique names the techniques it cannot be on with (``conflicts``, either side is enough);
the space never samples the pair, a space or recipe that fixes both on is refused, and warm
start leaves the later one off with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from automl.cli import cli
from automl.discovery import technique_catalog
from automl.errors import UserError
from automl.report import SilentReporter
from automl.search import Plugins, SearchSettings, run_search
from automl.space import load_space
from automl.technique import Technique, conflict, conflicts_of
from automl.warm_start import read_known_recipe, warm_start_params

REASON = "both rewrite the targets of the batch"


class Alpha(Technique):
    """Test technique that conflicts with t_beta.

    Helps: testing. Suggested: never. Source: this test.
    """

    name = "t_alpha"
    space = {"x": FloatDistribution(0.0, 1.0)}
    defaults = {"x": 0.5}
    conflicts = {"t_beta": REASON}
    default_enabled = True


class Beta(Technique):
    """Test technique named by t_alpha's conflicts (declares none itself).

    Helps: testing. Suggested: never. Source: this test.
    """

    name = "t_beta"
    space = {"y": FloatDistribution(0.0, 1.0)}
    defaults = {"y": 0.5}
    default_enabled = True


class Gamma(Technique):
    """Test technique without conflicts.

    Helps: testing. Suggested: never. Source: this test.
    """

    name = "t_gamma"


CATALOG = {**technique_catalog(), "t_alpha": Alpha, "t_beta": Beta, "t_gamma": Gamma}


def space_file(tmp_path: Path, techniques: str, study: str = "") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("model: automl_resnet8\n"
                    "data: {dataset: digits, batch_size: 128, train_fraction: 0.3}\n"
                    f"epochs: 1\ntechniques:\n{techniques}{study}")
    return path


SEARCHED = "  t_alpha: {}\n  t_beta: {}\n  t_gamma: {}\n"


# --- the declaration ---------------------------------------------------------------------------


@pytest.mark.parametrize("conflicts, problem", [
    (["t_beta"], "must be a dict"),
    ({"Beta!": REASON}, "is not a technique name"),
    ({"t_alpha": REASON}, "cannot conflict with itself"),
    ({"t_beta": ""}, "expected a reason"),
    ({"t_beta": None}, "expected a reason"),
])
def test_a_malformed_declaration_is_refused_at_registration(conflicts, problem):
    bad = type("Bad", (Alpha,), {"conflicts": conflicts, "__doc__": Alpha.__doc__})
    with pytest.raises(TypeError, match=problem):
        bad.validate_class()


def test_a_conflict_declared_on_one_side_holds_both_ways():
    Alpha.validate_class()  # a name not installed is allowed: another plugin's technique
    assert conflict(Alpha, Beta) == conflict(Beta, Alpha) == REASON
    assert conflict(Alpha, Gamma) is None
    assert conflicts_of(Beta, CATALOG) == {"t_alpha": REASON}
    assert conflicts_of(Alpha, CATALOG) == {"t_beta": REASON}
    assert conflicts_of(Gamma, CATALOG) == {}


def test_the_builtin_conflict_is_listed_by_automl_techniques():
    catalog = technique_catalog()
    assert conflicts_of(catalog["ghost_batch_norm"], catalog).keys() == {"norm_layer",
                                                                         "sync_batch_norm"}
    result = CliRunner().invoke(cli, ["techniques", "ghost_batch_norm"])
    assert result.exit_code == 0, result.output
    assert "never on with norm_layer: norm_layer replaces every batch norm" in result.output
    assert "never on with" not in CliRunner().invoke(cli, ["techniques", "flip"]).output


# --- sampling ----------------------------------------------------------------------------------


def sampled(space, n=200):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((space.sample(trial), trial.params))
    return out


def test_the_space_never_samples_both_and_never_asks_about_the_later_one(tmp_path):
    space = load_space(space_file(tmp_path, SEARCHED), CATALOG)
    draws = sampled(space)
    for recipe, params in draws:
        assert not {"t_alpha", "t_beta"} <= recipe.techniques.keys()
        # canonical (name) order: t_alpha is decided first; when it is on, t_beta's on/off is
        # not a parameter of the trial at all
        assert ("t_beta.enabled" in params) == (not params["t_alpha.enabled"])
    assert any("t_alpha" in r.techniques for r, _ in draws)
    assert any("t_beta" in r.techniques for r, _ in draws)
    assert any({"t_alpha", "t_gamma"} <= r.techniques.keys() for r, _ in draws)


def test_tpe_models_a_space_whose_flags_come_and_go_with_the_conflict(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(space_file(tmp_path, SEARCHED), CATALOG)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(n_startup_trials=3, seed=0))
    seen = set()
    for i in range(30):
        trial = study.ask()
        names = space.sample(trial).techniques.keys() & {"t_alpha", "t_beta"}
        assert names != {"t_alpha", "t_beta"}
        seen.add(frozenset(names))
        study.tell(trial, i % 7 / 7)
    assert {frozenset({"t_alpha"}), frozenset({"t_beta"})} <= seen


def test_a_technique_fixed_on_keeps_its_conflict_off(tmp_path):
    space = load_space(space_file(tmp_path, "  t_alpha: {}\n  t_beta: {enabled: true}\n"),
                       CATALOG)
    for recipe, params in sampled(space, 50):
        assert "t_beta" in recipe.techniques and "t_alpha" not in recipe.techniques
        assert "t_alpha.enabled" not in params
    off = load_space(space_file(tmp_path, "  t_alpha: {enabled: false}\n  t_beta: {}\n"),
                     CATALOG)
    assert {"t_beta" in r.techniques for r, _ in sampled(off, 50)} == {True, False}


def test_baseline_and_known_settings_keep_the_first_of_a_conflicting_pair(tmp_path):
    space = load_space(space_file(tmp_path, SEARCHED), CATALOG)
    baseline = space.baseline_params()  # both are default_enabled
    assert baseline["t_alpha.enabled"] is True and "t_beta.enabled" not in baseline
    wanted = {"t_alpha": {"x": 0.1}, "t_beta": {"y": 0.2}, "t_gamma": {}}
    assert space.conflicts_left_off(wanted) == [("t_beta", "t_alpha", REASON)]
    assert space.conflicts_left_off({"t_beta": {}}) == []
    study = optuna.create_study()
    study.enqueue_trial(space.params_for(wanted))
    recipe = space.sample(study.ask())
    assert recipe.techniques.keys() >= {"t_alpha", "t_gamma"} and "t_beta" not in recipe.techniques


# --- refused: both fixed on --------------------------------------------------------------------


def test_a_space_that_fixes_both_on_is_refused_naming_file_techniques_and_reason(tmp_path):
    path = space_file(tmp_path, "  t_alpha: {enabled: true}\n  t_beta: {enabled: true}\n")
    with pytest.raises(UserError) as caught:
        load_space(path, CATALOG)
    message = str(caught.value)
    assert message.startswith(f"{path}:6: techniques.t_beta: ")
    assert "'t_alpha' and 't_beta' cannot both be on" in message and REASON in message


def test_automl_train_refuses_a_recipe_with_a_builtin_conflicting_pair(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: automl_resnet8\ndata: {dataset: digits, batch_size: 128}\n"
                      "epochs: 1\ntechniques:\n"
                      "  ghost_batch_norm: {enabled: true, virtual_batch: 16}\n"
                      "  norm_layer: {enabled: true, kind: group, groups: 8}\n")
    result = CliRunner().invoke(cli, ["train", str(recipe), "--out", str(tmp_path / "T")])
    assert result.exit_code == 2, result.output
    assert f"Error: {recipe}:6: techniques.norm_layer: 'ghost_batch_norm' and 'norm_layer' " \
           "cannot both be on: norm_layer replaces every batch norm" in result.output
    assert not (tmp_path / "T").exists()


# --- warm start --------------------------------------------------------------------------------


def test_warm_start_leaves_a_conflicting_technique_off_and_says_so(tmp_path, monkeypatch, caplog):
    """page_2019_cifar10_fast uses ghost batch norm; a space with norm_layer fixed on runs it
    without, with a warning (the built-in conflict, the shipped recipe)."""
    monkeypatch.setattr(logging.getLogger("automl"), "propagate", True)
    space = load_space(space_file(tmp_path, "  ghost_batch_norm: {}\n  optimizer: {}\n"
                                  "  norm_layer: {enabled: true}\n"), technique_catalog())
    with caplog.at_level(logging.WARNING, logger="automl"):
        queued = dict(warm_start_params(space))
    assert "page_2019_cifar10_fast" in queued
    assert all("ghost_batch_norm.enabled" not in params for params in queued.values())
    assert "warm start: known recipe page_2019_cifar10_fast runs without ghost_batch_norm, " \
           "which cannot be on with norm_layer (norm_layer replaces every batch norm" in caplog.text


def test_a_known_recipe_file_with_a_conflicting_pair_is_refused(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("name: both\nsource: this test\nsummary: two conflicting techniques\n"
                    "batch_size: 128\nepochs: 10\ntechniques:\n"
                    "  ghost_batch_norm: {virtual_batch: 32}\n  norm_layer: {kind: group}\n")
    with pytest.raises(ValueError, match=r"both.yaml:8: techniques.norm_layer: "
                                         r"'ghost_batch_norm' and 'norm_layer' cannot both"):
        read_known_recipe(path)


# --- a real search -----------------------------------------------------------------------------


def test_a_real_search_never_trains_both(tmp_path):
    """Every trial trains, none with both techniques on (the seed is one whose draws turn
    each of them on in some trial)."""
    study_yaml = ("study: {sampler: random, pruner: none, n_trials: 4, warm_start: false, "
                  "confirm_top: 0, seed: 7}\n")
    space = load_space(space_file(tmp_path, SEARCHED, study_yaml), CATALOG)
    settings = SearchSettings.from_space(space, study_name="conflicts",
                                         run_dir=tmp_path / "run", device="cpu")
    study = run_search(space, settings, SilentReporter(), plugins=Plugins(catalog=CATALOG))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    used = [set(t.user_attrs["recipe"]["techniques"]) for t in trials]
    assert not any({"t_alpha", "t_beta"} <= names for names in used), used
    assert "t_alpha" in used[0] and "t_beta" not in used[0]  # the baseline wanted both
    assert any("t_beta" in names for names in used), used
    assert all(("t_beta.enabled" in t.params) != t.params["t_alpha.enabled"] for t in trials)
