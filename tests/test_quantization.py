"""The quantization technique: an int8 copy of the evaluated model, scored at every evaluation.

Real runs only: ``automl_resnet8`` trained for three epochs on the embedded digits dataset on
the CPU, its int8 copy made by torch's own FX quantization.
"""

from __future__ import annotations

import math

import pytest
import torch
from automl.plugins.fixres import calibration_batches
from automl.plugins.ghost_batch_norm_layer import GhostBatchNorm2d, to_ghost_batch_norm
from automl.plugins.quantization import evaluation_batches
from automl.plugins.quantization_int8 import (
    accuracy,
    cpu_float_copy,
    engine,
    network,
    quantize,
    state_dict_bytes,
)
from automl.plugins.test_time_augmentation_layer import ViewAverage

import automl.models
from automl.discovery import technique_catalog, training_manager
from automl.recipe import Recipe
from automl.trainer import evaluate, fit, prepare

CPU = torch.device("cpu")
DATA = {"dataset": "digits", "batch_size": 64}
METRICS = ("int8_acc", "model_bytes", "float_bytes", "latency_ms", "float_latency_ms")
#: int8 against float32 top-1 accuracy on digits' small splits (290 val, 359 test images: one
#: image is 0.3 points). The issue's 1-point acceptance is measured by bench.stages on
#: Fashion-MNIST's 10,000 test images; here 2 points leaves room for six images, no more.
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def trained(data):
    """Three epochs at lr 0.1 with quantization on: the state, its manager and its history."""
    recipe = Recipe(model="automl_resnet8", data=dict(DATA), epochs=3, seed=0,
                    techniques={"optimizer": {"name": "sgd", "lr": 0.1},
                                "quantization": {"calibration_batches": 4}})
    pm = training_manager(recipe)
    state = prepare(recipe, data, pm, CPU)
    fit(state, pm)
    return state, pm


def test_it_declares_its_study_metrics():
    cls = technique_catalog()["quantization"]
    assert cls.metrics == {"int8_acc": "maximize", "model_bytes": "minimize",
                           "latency_ms": "minimize"}


def test_every_validation_of_a_real_training_reports_the_int8_metrics(trained):
    state, _ = trained
    assert len(state.history) == 3
    for epoch in state.history:
        assert {f"val/{name}" for name in METRICS} <= set(epoch)
        assert 0 <= epoch["val/int8_acc"] <= 1
        assert epoch["val/latency_ms"] > 0 and math.isfinite(epoch["val/latency_ms"])
        assert epoch["val/float_latency_ms"] > 0


def test_int8_accuracy_is_close_to_float_and_the_model_three_times_smaller(trained, data):
    state, pm = trained
    final = state.history[-1]
    test = evaluate(state, pm, data.test, "test")
    assert final["val/acc1"] > 0.7  # trained: the comparison means something
    for metrics, prefix in ((final, "val"), (test, "test")):
        assert abs(metrics[f"{prefix}/int8_acc"] - metrics[f"{prefix}/acc1"]) <= TOLERANCE
        assert 3 * metrics[f"{prefix}/model_bytes"] <= metrics[f"{prefix}/float_bytes"]
    assert test["test/float_bytes"] == state_dict_bytes(state.model)


def test_int8_accuracy_is_the_int8_model_calibrated_on_training_batches(trained, data):
    """The metric recomputed from the public pieces: a CPU copy quantized on the first
    un-augmented training batches (never val or test), scored on the split by hand."""
    state, pm = trained
    test = evaluate(state, pm, data.test, "test")
    calibration = [images.cpu() for images in calibration_batches(state, 4)]
    int8 = quantize(cpu_float_copy(state.model), calibration, engine())
    hits = 0
    with torch.no_grad():
        for images, labels in evaluation_batches(state, data.test):
            hits += int((int8(images).argmax(1) == labels).sum())
    assert test["test/int8_acc"] == hits / len(data.test.labels)
    convs = [type(m).__module__ for m in int8.modules() if type(m).__name__ == "Conv2d"]
    assert convs and all(module.startswith("torch.ao.nn.quantized") for module in convs)


def test_the_int8_model_agrees_with_the_float_model_on_nearly_every_image(trained, data):
    state, _ = trained
    calibration = [images.cpu() for images in calibration_batches(state, 4)]
    model = cpu_float_copy(state.model)
    int8 = quantize(cpu_float_copy(state.model), calibration, engine())
    images, _ = next(evaluation_batches(state, data.test))
    with torch.no_grad():
        agree = (int8(images).argmax(1) == model(images).argmax(1)).float().mean().item()
    assert agree >= 0.95


def _batches(n: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(16, 1, 8, 8, generator=gen) for _ in range(n)]


def test_test_time_augmentation_views_stay_around_the_int8_network():
    model = ViewAverage(automl.models.automl_resnet8(num_classes=10, in_chans=1), True, 1)
    int8 = quantize(cpu_float_copy(model), _batches(), engine())
    assert isinstance(int8, ViewAverage) and (int8.flip, int8.shift) == (True, 1)
    assert network(int8) is int8.module
    assert accuracy(int8, [(_batches(1)[0], torch.zeros(16, dtype=torch.long))], engine()) >= 0


def test_a_layer_fx_cannot_trace_into_is_kept_whole_in_float():
    """Ghost batch norm subclasses BatchNorm2d, which FX does not trace into; its subclass is
    traced, and fails: it is kept as one float module, the convolutions still int8."""
    model = automl.models.automl_resnet8(num_classes=10, in_chans=1)
    assert to_ghost_batch_norm(model, 8)
    int8 = quantize(cpu_float_copy(model.eval()), _batches(), engine())
    assert any(isinstance(m, GhostBatchNorm2d) for m in int8.modules())
    assert 2 * state_dict_bytes(int8) < state_dict_bytes(model)
    x = _batches(1)[0]
    with torch.no_grad():
        assert torch.allclose(int8(x), model.eval()(x), atol=0.5)
