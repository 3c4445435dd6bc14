"""The order techniques act in is the techniques' own, never the space file's: each hook
calls them by pluggy's tiers (tryfirst, plain, trylast) and by name within a tier, sampling
asks them by name, and a study records the order, so a reordered file runs the same trials
and resumes the same study while a change of the order is refused."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from automl.plugins.cutmix import cutmix
from automl.plugins.mixup import mixup

from automl.discovery import hook_order, technique_catalog, training_manager
from automl.errors import UserError
from automl.functional import soft_targets
from automl.recipe import Recipe
from automl.report import SilentReporter
from automl.search import SearchSettings, run_search
from automl.space import RULES_VERSION, definition_difference, load_space
from automl.state import TrainState

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = """\
model: automl_resnet8
data: {{dataset: digits, batch_size: 128}}
epochs: 1
techniques:
{techniques}
study: {{sampler: random, pruner: none, n_trials: {n_trials}, seed: 3, warm_start: false,
        confirm_top: 0}}
"""
TECHNIQUES = ["  optimizer: {name: sgd, lr: {type: float, low: 0.02, high: 0.2}}",
              "  mixup: {enabled: true}", "  cutmix: {enabled: true}", "  flip: {}",
              "  label_smoothing: {}"]


def write_space(path: Path, techniques: list[str], n_trials: int = 3) -> Path:
    path.write_text(SPACE.format(techniques="\n".join(techniques), n_trials=n_trials))
    return path


def search(space_file: Path, run_dir: Path, **overrides) -> optuna.Study:
    space = load_space(space_file, technique_catalog())
    settings = SearchSettings.from_space(space, study_name="order", run_dir=run_dir,
                                         device="cpu", **overrides)
    return run_search(space, settings, SilentReporter())


def on_batch(techniques: dict, data) -> tuple[torch.Tensor, torch.Tensor]:
    """One real on_batch call of a manager built for ``techniques``, on 16 digits."""
    recipe = Recipe(model="automl_resnet8", data={"dataset": "digits"}, epochs=1,
                    techniques=techniques)
    state = TrainState(recipe=recipe, data=data, device=torch.device("cpu"), epochs=1,
                       batch_size=16, batches_per_epoch=1,
                       generator=torch.Generator().manual_seed(0))
    state.images = data.train.images[:16].float() / 255
    state.targets = data.train.labels[:16]
    training_manager(recipe).hook.on_batch(state=state)
    return state.images, state.targets


def test_cutmix_acts_before_mixup_whichever_is_listed_first(data):
    listed = on_batch({"mixup": {"alpha": 0.4}, "cutmix": {"alpha": 1.0}}, data)
    swapped = on_batch({"cutmix": {"alpha": 1.0}, "mixup": {"alpha": 0.4}}, data)
    assert torch.equal(listed[0], swapped[0]) and torch.equal(listed[1], swapped[1])

    images, targets = data.train.images[:16].float() / 255, data.train.labels[:16]
    targets = soft_targets(targets, data.num_classes)
    g = torch.Generator().manual_seed(0)
    cut = cutmix(images, targets, 1.0, g)
    expected = mixup(*cut, 0.4, g)  # the documented order: by name, cutmix then mixup
    assert torch.equal(listed[0], expected[0]) and torch.equal(listed[1], expected[1])
    g = torch.Generator().manual_seed(0)
    other = cutmix(*mixup(images, targets, 0.4, g), 1.0, g)
    assert not torch.equal(listed[0], other[0])  # the order is visible in the batch


def test_declared_tiers_come_before_names():
    catalog = technique_catalog()
    order = hook_order([catalog[n] for n in ("mixup", "augment_policy", "random_erasing",
                                             "cutmix", "random_crop", "flip", "augmix")])
    assert order["augment_batch"] == ["flip", "random_crop", "augment_policy", "augmix"]
    assert order["on_batch"] == ["random_erasing", "cutmix", "mixup"]  # erasing: tryfirst


def test_the_definition_records_the_order_not_the_file_order(tmp_path):
    catalog = technique_catalog()
    first = load_space(write_space(tmp_path / "a.yaml", TECHNIQUES), catalog)
    second = load_space(write_space(tmp_path / "b.yaml", TECHNIQUES[::-1]), catalog)
    assert list(first.techniques) == list(second.techniques) == sorted(first.techniques)
    assert first.definition() == second.definition()
    assert first.definition()["order.on_batch"] == "cutmix, mixup"


def test_a_reordered_space_runs_the_same_trials_and_resumes_the_study(tmp_path):
    listed = write_space(tmp_path / "listed.yaml", TECHNIQUES)
    reordered = write_space(tmp_path / "reordered.yaml", [TECHNIQUES[i] for i in (3, 2, 4, 1, 0)])
    a = search(listed, tmp_path / "a")
    b = search(reordered, tmp_path / "b")
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert len({str(t.params) for t in a.trials}) == 3
    assert [t.value for t in a.trials] == [t.value for t in b.trials]  # same training
    resumed = search(reordered, tmp_path / "a", n_trials=4)  # the same study: accepted
    assert len(resumed.trials) == 4


def test_a_study_under_another_order_or_older_rules_is_refused(tmp_path):
    space_file = write_space(tmp_path / "space.yaml", TECHNIQUES, n_trials=1)
    study = search(space_file, tmp_path / "run")
    stored = dict(study.user_attrs["space_definition"])
    assert stored["definition_rules"] == RULES_VERSION

    study.set_user_attr("space_definition", {**stored, "order.on_batch": "mixup, cutmix"})
    with pytest.raises(UserError, match="order.on_batch was mixup, cutmix, now cutmix, mixup"):
        search(space_file, tmp_path / "run", n_trials=2)

    older = {k: v for k, v in stored.items() if not k.startswith("order.")
             and k != "definition_rules"}
    study.set_user_attr("space_definition", older)
    with pytest.raises(UserError, match="older rules"):
        search(space_file, tmp_path / "run", n_trials=2)
    assert "older rules" in definition_difference(older, stored)
    assert definition_difference(stored, stored) is None
