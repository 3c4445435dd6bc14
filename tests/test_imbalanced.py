"""Acceptance: on an imbalanced training set, class weights and focal loss raise the recall of
the rare classes over plain cross-entropy.

The real digits data with only 10% of the training images of classes 0-4 (13 per class against
~130 for classes 5-9); validation and test stay balanced. Every loss trains automl_resnet8 for
the same 3 epochs (SGD, the default LR) with the same seeds; the score is the mean recall of
classes 0-4 on the balanced test split, averaged over the seeds.

`python -m bench.imbalanced_recall` measures the same comparison over more seeds (figures in
bench/results/); the margins asserted below sit under the smallest gain any 3 of 15 seeds gave.
"""

from __future__ import annotations

import pytest
import torch

from automl.data import DataBundle, load_data, with_fewer_samples
from automl.discovery import training_manager
from automl.recipe import Recipe
from automl.trainer import class_recall, train

CPU = torch.device("cpu")
DATA_CONFIG = {"dataset": "digits", "batch_size": 32}
MINORITY = (0, 1, 2, 3, 4)
KEEP = 0.1  # fraction of the minority classes' training images kept
SEEDS = (0, 1, 2)
EPOCHS = 3



def mean_recalls(data: DataBundle, techniques: dict) -> tuple[float, float]:
    """Minority and majority mean recall on the balanced test split, averaged over SEEDS."""
    minority = list(MINORITY)
    majority = [c for c in range(data.num_classes) if c not in MINORITY]
    runs = []
    for seed in SEEDS:
        recipe = Recipe(model="automl_resnet8", data=dict(DATA_CONFIG), epochs=EPOCHS, seed=seed,
                        techniques={"optimizer": {}, **techniques})
        pm = training_manager(recipe)
        state = train(recipe, data, pm, device=CPU)
        recalls = class_recall(state, pm, data.test)
        runs.append((recalls[minority].mean().item(), recalls[majority].mean().item()))
    return (sum(r[0] for r in runs) / len(runs), sum(r[1] for r in runs) / len(runs))


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return with_fewer_samples(load_data(DATA_CONFIG), MINORITY, KEEP)


@pytest.fixture(scope="module")
def plain(data) -> tuple[float, float]:
    return mean_recalls(data, {})


def test_the_training_split_is_imbalanced_and_held_out_splits_are_not(data):
    counts = torch.bincount(data.train.labels, minlength=10)
    assert (counts[list(MINORITY)] * 5 < counts[5:].min()).all()
    for split in (data.val, data.test):
        held_out = torch.bincount(split.labels, minlength=10)
        assert held_out.max() - held_out.min() <= 2


def test_plain_cross_entropy_neglects_the_rare_classes(plain):
    minority, majority = plain
    assert minority < majority - 0.3


def test_class_weights_raise_the_rare_classes_recall(data, plain):
    minority, _ = mean_recalls(data, {"class_weights": {"power": 0.5}})
    assert minority > plain[0] + 0.2, f"class weights {minority:.3f} vs plain {plain[0]:.3f}"


def test_focal_loss_raises_the_rare_classes_recall(data, plain):
    minority, _ = mean_recalls(data, {"focal_loss": {"gamma": 2.0}})
    assert minority > plain[0] + 0.1, f"focal loss {minority:.3f} vs plain {plain[0]:.3f}"
