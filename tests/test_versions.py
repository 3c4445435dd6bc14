"""Versions: a study and a training run record the project's, the libraries' and the plugins'
versions; a resumed study or a retrain under other versions says so (a warning, never an
error)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import optuna
import pytest
import yaml

from automl.discovery import technique_catalog
from automl.provenance import ENVIRONMENT, environment, environment_differences
from automl.replay import replay
from automl.search import SearchSettings
from automl.space import load_recipe, load_space
from automl.storage import open_storage
from automl.study_lifecycle import create_study

TORCH = environment()["versions"]["torch"]

SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128, train_fraction: 0.3}
epochs: 1
techniques:
  optimizer: {name: sgd, lr: {type: float, low: 0.02, high: 0.08}}
study: {n_trials: 1, warm_start: false, confirm_top: 0}
"""


@pytest.fixture
def warnings(monkeypatch, caplog):
    """The ``automl`` logger's warnings (the CLI prints them on stderr as ``warning: ...``)."""
    monkeypatch.setattr(logging.getLogger("automl"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="automl")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "automl"]


def other_environment() -> dict:
    env = copy.deepcopy(environment())
    env["versions"]["torch"] = "2.3.0"
    env["plugins"]["input_noise"] = "automl-input-noise 0.1.0"  # since uninstalled
    env["plugins"]["builtins"] = "automl-recipes 0.0.1 (built-in)"
    return env


# --- comparing two records ---------------------------------------------------------------------


def test_each_difference_is_one_line_and_the_same_environment_none():
    assert environment_differences(environment(), "study 's' was created") == []
    lines = environment_differences(other_environment(), "study 's' was created")
    builtins = environment()["plugins"]["builtins"]
    assert lines == [
        f"study 's' was created with torch 2.3.0, this process has {TORCH}",
        "study 's' was created with plugin builtins from automl-recipes 0.0.1 (built-in), "
        f"this process has {builtins}",
        "study 's' was created with plugin input_noise (automl-input-noise 0.1.0), this "
        "process does not load it",
    ]
    current = copy.deepcopy(environment())
    current["plugins"]["extra"] = "automl-extra 1.0"
    assert environment_differences(environment(), "x", current) == [
        "x without plugin extra, this process loads it (automl-extra 1.0)"]


@pytest.mark.parametrize("recorded", [None, 42, {}, {"study": "s", "trial": 3},
                                      {"versions": "torch 2", "plugins": ["builtins"]}])
def test_a_record_without_versions_has_nothing_to_compare(recorded):
    assert environment_differences(recorded, "the recipe was trained") == []


# --- a study -----------------------------------------------------------------------------------


def settings_for(tmp_path: Path):
    (tmp_path / "s.yaml").write_text(SPACE)
    space = load_space(tmp_path / "s.yaml", technique_catalog())
    return space, SearchSettings.from_space(space, study_name="v", run_dir=tmp_path / "run",
                                            device="cpu")


def stored_study(settings) -> optuna.Study:
    """The study as another process reads it from the storage."""
    return optuna.load_study(study_name=settings.study_name,
                             storage=open_storage(settings.storage, settings.run_dir))


def test_a_study_records_its_versions_and_a_resume_under_others_says_so(tmp_path, warnings):
    space, settings = settings_for(tmp_path)
    create_study(space, settings)
    recorded = stored_study(settings).user_attrs[ENVIRONMENT]
    assert recorded == environment()
    assert set(recorded["versions"]) == {"automl-recipes", "python", "torch", "timm", "optuna"}
    assert recorded["plugins"]["builtins"].startswith("automl-recipes")

    create_study(space, settings)  # resumed under the same versions: nothing to say
    assert warnings() == []

    stored_study(settings).set_user_attr(ENVIRONMENT, other_environment())
    create_study(space, settings)
    said = warnings()
    assert said == environment_differences(other_environment(), "study 'v' was created")
    assert said[0] == f"study 'v' was created with torch 2.3.0, this process has {TORCH}"
    assert len(said) == 3
    # a --jobs worker joins silently: its parent said it
    create_study(space, settings, say_versions=False)
    assert warnings() == said
    # the record is the creator's: a resume does not overwrite it
    assert stored_study(settings).user_attrs[ENVIRONMENT] == other_environment()


def test_a_study_of_an_older_release_resumes_without_a_word(tmp_path, warnings):
    space, settings = settings_for(tmp_path)
    create_study(space, settings)
    stored_study(settings).set_user_attr(ENVIRONMENT, None)  # as if never recorded
    create_study(space, settings)
    assert warnings() == []


# --- automl train ------------------------------------------------------------------------------


def recipe_file(tmp_path: Path, provenance: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text("model: automl_resnet8\ndata: {dataset: digits, batch_size: 128}\n"
                    "epochs: 1\ntechniques:\n  optimizer: {name: sgd, lr: 0.05}\n"
                    + yaml.safe_dump({"provenance": provenance}))
    return path


def test_train_says_and_records_where_the_recipe_was_trained_under_other_versions(tmp_path,
                                                                                  warnings):
    """The warnings reach stderr as ``warning: ...`` lines (the CLI's show_warnings, as for
    a broken provenance block: tests/test_exports.py runs `automl train` for that)."""
    provenance = {"study": "s", "trial": 3, **other_environment()}
    recipe = load_recipe(recipe_file(tmp_path, provenance), technique_catalog())
    replay(recipe, tmp_path / "T", device="cpu", train_fraction=0.3)
    expected = environment_differences(provenance, "trial 3 of study 's' was trained")
    assert expected[0] == (f"trial 3 of study 's' was trained with torch 2.3.0, this process "
                           f"has {TORCH}")
    assert warnings() == expected
    record = json.loads((tmp_path / "T" / "metrics.json").read_text())
    assert record["environment"] == environment()
    assert record["environment_differences"] == expected
    assert record["recipe_provenance"] == provenance


def test_train_under_the_recipes_own_versions_records_them_and_no_difference(tmp_path,
                                                                           warnings):
    recipe = load_recipe(recipe_file(tmp_path, {"study": "s", "trial": 3, **environment()}),
                         technique_catalog())
    replay(recipe, tmp_path / "T", device="cpu", train_fraction=0.3)
    record = json.loads((tmp_path / "T" / "metrics.json").read_text())
    assert record["environment"] == environment()
    assert "environment_differences" not in record
    assert warnings() == []
