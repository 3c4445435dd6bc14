"""Test-time augmentation: evaluation averages the model's logits over views of each batch,
and the model `automl train` saves averages the same views.

Real objects only: ``automl_resnet8`` on the embedded digits dataset, real plugin managers,
real training runs of a few steps on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from automl.plugins.test_time_augmentation_layer import ViewAverage
from torch import nn

import automl
from automl.data import load_data
from automl.discovery import hook_order, technique_catalog, training_manager
from automl.model_file import load_model
from automl.recipe import Recipe
from automl.replay import replay
from automl.trainer import evaluate, evaluate_with_confusion, fit, prepare

CPU = torch.device("cpu")
DATA = {"dataset": "digits", "batch_size": 64}


def _recipe(tta: dict, **techniques) -> Recipe:
    return Recipe(model="automl_resnet8", data=dict(DATA), epochs=1, seed=0,
                  techniques={"optimizer": {"name": "sgd", "lr": 0.1},
                              "test_time_augmentation": tta, **techniques})


def _trained(data, recipe: Recipe, extra_plugins=(), steps: int = 10):
    pm = training_manager(recipe, extra_plugins=list(extra_plugins))
    state = prepare(recipe, data, pm, CPU)
    fit(state, pm, max_steps=steps)
    return state, pm


def _by_hand_shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` moved by one pixel along one axis, the edge row or column repeated."""
    if dx == 1:
        return torch.cat([x[..., :1], x[..., :-1]], -1)
    if dx == -1:
        return torch.cat([x[..., 1:], x[..., -1:]], -1)
    if dy == 1:
        return torch.cat([x[..., :1, :], x[..., :-1, :]], -2)
    return torch.cat([x[..., 1:, :], x[..., -1:, :]], -2)


def test_the_evaluated_model_averages_the_logits_of_the_batch_and_its_mirror(data):
    state, pm = _trained(data, _recipe({"views": "flip"}), steps=3)
    model = pm.hook.eval_model(state=state).eval()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    net = state.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), (net(x) + net(x.flip(-1))) / 2)


def test_shifted_views_are_the_mirror_and_four_one_pixel_moves_of_each(data):
    state, pm = _trained(data, _recipe({"views": "flip_shift", "shift": 1}), steps=3)
    model = pm.hook.eval_model(state=state).eval()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    net = state.model.eval()
    base = [x, x.flip(-1)]
    views = base + [_by_hand_shift(v, dy, dx) for v in base
                    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0))]
    with torch.no_grad():
        expected = sum(net(v) for v in views) / 10
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)


class Symmetrised(nn.Module):
    """A model whose output cannot change when its input is mirrored: it sees x + mirror(x),
    which a mirrored input gives bit for bit (addition commutes)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + x.flip(-1))


class MakeSymmetric:
    @automl.hookimpl
    def modify_model(self, state):
        state.model = Symmetrised(state.model)


def test_a_flip_symmetric_model_gets_identical_metrics(data):
    state, pm = _trained(data, _recipe({"views": "flip"}), [MakeSymmetric()])
    with_tta = evaluate(state, pm, data.val, "val")
    without = evaluate_with_confusion(state, pm, data.val, "val", model=state.model)[0]
    assert with_tta == without


def test_an_ordinary_model_gets_other_metrics_with_views(data):
    """The control of the test above: the same comparison can fail."""
    state, pm = _trained(data, _recipe({"views": "flip"}))
    with_tta = evaluate(state, pm, data.val, "val")
    without = evaluate_with_confusion(state, pm, data.val, "val", model=state.model)[0]
    assert with_tta["val/loss"] != without["val/loss"]


def test_it_wraps_ema_weights_and_fixres_copy_from_outside(data):
    catalog = technique_catalog()
    order = hook_order([catalog[n] for n in ("ema", "fixres", "test_time_augmentation")])
    assert order["eval_model"] == ["test_time_augmentation", "fixres", "ema"]
    recipe = _recipe({"views": "shift", "shift": 2}, ema={"decay": 0.9},
                     fixres={"train_scale": 0.75, "calibration_batches": 2})
    state, pm = _trained(data, recipe, steps=2)
    model = pm.hook.eval_model(state=state)
    assert isinstance(model, ViewAverage) and (model.flip, model.shift) == (False, 2)
    assert model.module is state.extras["fixres_model"]  # FixRes' recalibrated EMA copy
    assert model.module is not state.model and model.module is not state.extras["ema"]


@pytest.mark.parametrize("techniques", [
    {"test_time_augmentation": {"views": "flip_shift", "shift": 1},
     "inference_resize": {"scale": 1.25}},
    {"test_time_augmentation": {"views": "flip"}, "ema": {"decay": 0.9},
     "fixres": {"train_scale": 0.75, "calibration_batches": 2}},
], ids=["views-resize", "flip-ema-fixres"])
def test_the_saved_model_averages_the_same_views_and_reproduces_the_test_accuracy(
        tmp_path, techniques):
    recipe = Recipe(model="automl_resnet8", data=dict(DATA), epochs=1, seed=0,
                    techniques={"optimizer": {"name": "sgd", "lr": 0.1}, **techniques})
    metrics = replay(recipe, tmp_path, device="cpu")
    model, preprocess, info = load_model(tmp_path / "model.pt")
    assert info.eval_wrappers == ["test_time_augmentation"]
    assert isinstance(model, ViewAverage) and not isinstance(model.module, ViewAverage)
    record = torch.load(tmp_path / "model.pt", weights_only=True)
    assert record["format_version"] == 2
    assert not any(key.startswith("module.") for key in record["state_dict"])
    test = load_data(DATA).test
    with torch.no_grad():
        inputs = preprocess(test.images)
        predicted = model(inputs).argmax(1)
        plain = model.module(inputs)
    assert int((predicted == test.labels).sum()) / len(test.labels) == pytest.approx(
        metrics["test/acc1"], abs=1e-7)
    assert not torch.equal(model(inputs), plain)  # the views are averaged, not skipped


def test_a_model_trained_without_views_is_saved_as_version_1(tmp_path):
    """Files without a wrapper stay readable by automl-recipes releases that know only 1."""
    recipe = Recipe(model="automl_resnet8", data=dict(DATA), epochs=1, seed=0,
                    techniques={"optimizer": {"name": "sgd", "lr": 0.1}})
    replay(recipe, tmp_path, device="cpu")
    record = torch.load(tmp_path / "model.pt", weights_only=True)
    assert record["format_version"] == 1 and record["eval_wrappers"] == []
    assert load_model(tmp_path).info.eval_wrappers == []
