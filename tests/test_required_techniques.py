"""A required technique (optimizer, lr_schedule) is always on: a space or recipe that leaves
it out has it at its defaults, fixed, and says so in its parsed form, its recipes and the
trials it stores; no trial trains on a fallback nobody chose."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution

from automl.cli import cli
from automl.discovery import technique_catalog, training_manager
from automl.errors import ConfigError
from automl.space import load_recipe, load_space
from automl.technique import Technique
from automl.trainer import train

BARE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: 1
techniques:
  flip: {enabled: true, p: 0.5}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_space_that_leaves_them_out_has_them_at_their_defaults(tmp_path):
    catalog = technique_catalog()
    required = sorted(name for name, cls in catalog.items() if not cls.optional)
    assert required == ["lr_schedule", "optimizer"]
    space = load_space(write(tmp_path, BARE), catalog)
    for name in required:
        t = space.techniques[name]
        assert t.enabled is True and not t.listed and t.is_fixed()
    assert space.techniques["optimizer"].params == {"name": "sgd", "lr": 0.05}
    # cycles applies to cosine_restarts only: absent at the default cosine
    assert space.techniques["lr_schedule"].params == {"schedule": "cosine", "warmup": 0.0,
                                                      "warmup_shape": "linear"}
    assert space.techniques["flip"].listed and space.free_keys() == []
    assert space.unlisted_note() == (  # what `automl search` prints
        "not listed, so at their defaults (required): lr_schedule(schedule=cosine, "
        "warmup=0.0, warmup_shape=linear) optimizer(name=sgd, lr=0.05)")


def test_leaving_them_out_is_the_same_study_as_writing_their_defaults(tmp_path):
    catalog = technique_catalog()
    bare = load_space(write(tmp_path, BARE), catalog)
    written = load_space(write(tmp_path, BARE + """\
          optimizer: {name: sgd, lr: 0.05}
          lr_schedule: {schedule: cosine, warmup: 0.0, warmup_shape: linear}
        """.replace("        ", ""), "written.yaml"), catalog)
    assert bare.definition() == written.definition()
    searched = load_space(write(tmp_path, BARE + "  optimizer: {}\n", "searched.yaml"), catalog)
    assert "optimizer.name" in searched.free_keys()  # listed with {}: its own space


def test_a_recipe_without_them_trains_with_them(tmp_path, data):
    recipe = load_recipe(write(tmp_path, BARE), technique_catalog())
    assert recipe.techniques["optimizer"] == {"name": "sgd", "lr": 0.05}
    assert recipe.to_dict()["techniques"]["lr_schedule"]["schedule"] == "cosine"
    state = train(recipe, data, training_manager(recipe), device=torch.device("cpu"),
                  max_steps=2)
    assert isinstance(state.scheduler, torch.optim.lr_scheduler.LambdaLR)
    assert state.optimizer.param_groups[0]["lr"] < 0.05  # the cosine schedule has stepped


class NeedsPath(Technique):
    """A required technique whose path only the user can give.

    Helps: testing. Suggested: never. Source: this test.
    """

    name = "needs_path"
    optional = False
    space = {"path": CategoricalDistribution(["<path>"])}
    defaults = {"path": "<path>"}

    @classmethod
    def check_value(cls, param, value):
        return "set a real path" if value == "<path>" else None


def test_a_required_technique_with_a_value_only_the_user_knows_must_be_listed(tmp_path):
    with pytest.raises(ConfigError, match="technique 'needs_path' is required: list it and "
                                          "set path"):
        load_space(write(tmp_path, BARE.replace("  flip: {enabled: true, p: 0.5}\n", "")),
                   {"needs_path": NeedsPath})


def test_automl_techniques_says_what_required_means():
    result = CliRunner().invoke(cli, ["techniques"])
    assert result.exit_code == 0, result.output
    assert "optimizer (required: always on, at its defaults unless listed)" in result.output
    assert "flip (optional)" in result.output
