"""The step-level API: the batch's outputs on the state, the closure that re-runs a step, the
evaluation and end-of-training hooks, and SAM built on them (checked against hand-computed
gradients)."""

from __future__ import annotations

import copy

import pytest
import torch
from automl.plugins.l1_penalty import l1_norm
from automl.plugins.sam import sam_perturbation

from automl.discovery import training_manager
from automl.hookspecs import hookimpl
from automl.recipe import Recipe
from automl.trainer import evaluate, fit, prepare, train

CPU = torch.device("cpu")


def _recipe(techniques: dict, batch_size: int = 16) -> Recipe:
    return Recipe(model="automl_resnet8", epochs=1, seed=3,
                  techniques={"optimizer": {"name": "sgd", "lr": 0.05}, **techniques},
                  data={"dataset": "digits", "batch_size": batch_size})


class _StepRecorder:
    """Records what after_loss sees, the batches the model saw, and the final gradients."""

    def __init__(self):
        self.outputs, self.batches, self.grads, self.params = [], [], [], []

    @hookimpl(trylast=True)
    def on_batch(self, state):
        self.batches.append((state.images.clone(), state.targets.clone()))

    @hookimpl(trylast=True)
    def after_loss(self, state):
        self.outputs.append((state.logits, state.features))

    @hookimpl(trylast=True)
    def after_backward(self, state):
        self.grads.append([p.grad.clone() for p in state.model.parameters()])
        self.params.append([p.detach().clone() for p in state.model.parameters()])


def test_logits_and_features_are_the_batch_outputs_and_the_classifier_input(data):
    recorder = _StepRecorder()
    recipe = _recipe({})
    pm = training_manager(recipe, extra_plugins=[recorder])
    state = prepare(recipe, data, pm, CPU)
    start = copy.deepcopy(state.model).train()  # the weights the step's forward used
    fit(state, pm, max_steps=1)
    (logits, features), = recorder.outputs
    images, _ = recorder.batches[0]
    assert logits.dtype == torch.float32 and features.shape == (len(images), 64)
    assert state.logits is None and state.features is None and state.closure is None
    with torch.no_grad():
        assert torch.allclose(start(images), logits, atol=1e-5)
        assert torch.allclose(start.get_classifier()(features), logits, atol=1e-5)
        pooled = start.forward_head(start.forward_features(images), pre_logits=True)
    assert torch.allclose(pooled, features, atol=1e-5)  # timm's pre-logits features


def _composed_loss(model, images, targets, loss_fn, strength):
    return loss_fn(model(images).float(), targets) + strength * l1_norm(model)


def _gradient(model, micro_batches, loss_fn, strength):
    model.zero_grad()
    for images, targets in micro_batches:
        (_composed_loss(model, images, targets, loss_fn, strength) / len(micro_batches)
         ).backward()
    return [p.grad.clone() for p in model.parameters()]


class _ClosureCaller:
    """Calls the closure once in after_backward and keeps the gradients it leaves."""

    def __init__(self):
        self.grads = []

    @hookimpl
    def after_backward(self, state):
        state.closure()
        self.grads.append([p.grad.clone() for p in state.model.parameters()])


def test_the_closure_recomputes_every_micro_batch_with_every_loss_term(data):
    recorder, caller = _StepRecorder(), _ClosureCaller()
    recipe = _recipe({"grad_accumulation": {"steps": 2}, "l1_penalty": {"strength": 1e-3}})
    pm = training_manager(recipe, extra_plugins=[recorder, caller])
    state = prepare(recipe, data, pm, CPU)
    start = copy.deepcopy(state.model)
    fit(state, pm, max_steps=1, validate=False)
    assert len(recorder.batches) == 2  # two micro-batches made the one step
    expected = _gradient(start.train(), recorder.batches, state.loss_fn, 1e-3)
    for got, want in zip(caller.grads[0], expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    first = recorder.grads[0]  # the trainer's own gradient is the same computation
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(first, expected, strict=True))


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_steps_with_the_gradient_at_the_perturbed_weights(data, adaptive):
    """SAM with gradient accumulation and an extra loss term (l1): its second gradient is
    the hand-computed gradient of the whole composed loss at w + ρ·g/‖g‖, over both
    micro-batches, and the weights are back at w when the optimizer steps."""
    rho = 0.5 if adaptive else 0.05
    recorder = _StepRecorder()
    recipe = _recipe({"grad_accumulation": {"steps": 2}, "l1_penalty": {"strength": 1e-3},
                      "sam": {"rho": rho, "adaptive": adaptive}})
    pm = training_manager(recipe, extra_plugins=[recorder])
    state = prepare(recipe, data, pm, CPU)
    start = copy.deepcopy(state.model).train()
    once = copy.deepcopy(state.model).train()  # each batch through batch norm once
    fit(state, pm, max_steps=1, validate=False)
    with torch.no_grad():
        for images, _ in recorder.batches:
            once(images)
    g1 = _gradient(start, recorder.batches, state.loss_fn, 1e-3)
    params = list(start.parameters())
    steps = sam_perturbation([p.detach() for p in params], g1, rho, adaptive)
    with torch.no_grad():
        for p, e in zip(params, steps, strict=True):
            p.add_(e)
    g2 = _gradient(start, recorder.batches, state.loss_fn, 1e-3)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2, strict=True))
    for got, want in zip(recorder.grads[0], g2, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    w = [p.detach() for p in copy.deepcopy(start).parameters()]
    for got, perturbed, e in zip(recorder.params[0], w, steps, strict=True):
        assert torch.allclose(got, perturbed - e, atol=1e-6)  # back at w
    # the first pass alone moved the running statistics (the second one left them)
    for got, want in zip(state.model.buffers(), once.buffers(), strict=True):
        assert torch.allclose(got.float(), want.float(), atol=1e-6)


class _HookCounter:
    def __init__(self):
        self.calls: list[tuple] = []
        self.train_model_at_start = None

    @hookimpl
    def on_train_start(self, state):
        self.train_model_at_start = state.train_model

    @hookimpl
    def on_eval_start(self, state, split, prefix):
        self.calls.append(("start", prefix, len(split.labels)))

    @hookimpl(tryfirst=True)
    def eval_model(self, state):
        self.calls.append(("eval_model",))

    @hookimpl
    def evaluate(self, state, split, prefix):
        assert state.eval_model is not None
        self.calls.append(("evaluate", prefix))
        return {"seen": float(len(split.labels))}

    @hookimpl
    def on_eval_end(self, state, prefix, metrics):
        self.calls.append(("end", prefix, metrics[f"{prefix}/seen"]))

    @hookimpl
    def on_train_end(self, state):
        self.calls.append(("train_end",))


def test_evaluation_and_training_hooks_run_once_each_where_documented(data):
    counter = _HookCounter()
    recipe = _recipe({"ema": {}, "fixres": {"calibration_batches": 2}})
    recipe.epochs = 2
    pm = training_manager(recipe, extra_plugins=[counter])
    state = train(recipe, data, pm, device=CPU, max_steps=4)
    assert counter.train_model_at_start is state.model
    n = len(data.val.labels)
    one_evaluation = [("start", "val", n), ("eval_model",), ("evaluate", "val"),
                      ("end", "val", float(n))]
    epochs = len(state.history)
    assert counter.calls == one_evaluation * epochs + [("train_end",)]
    assert state.history[-1]["val/seen"] == n and state.eval_model is None
    calibrated = state.extras["fixres_model"]  # one copy per trial, recalibrated per evaluation
    metrics = evaluate(state, pm, data.test, "test")
    assert state.extras["fixres_model"] is calibrated and metrics["test/seen"] == len(
        data.test.labels)


def test_fixres_once_per_evaluation_matches_a_fresh_recalibrated_copy(data):
    from automl.plugins.fixres import calibration_batches, recalibrate_batch_norm
    recipe = _recipe({"ema": {}, "fixres": {"calibration_batches": 2}})
    pm = training_manager(recipe)
    state = train(recipe, data, pm, device=CPU, max_steps=2)
    ours = evaluate(state, pm, data.val, "val")
    fresh = recalibrate_batch_norm(state.extras["ema"], calibration_batches(state, 2))
    with torch.no_grad():
        logits_fresh = fresh(_first_batch(state, data))
        logits_ours = state.extras["fixres_model"](_first_batch(state, data))
    assert torch.allclose(logits_fresh, logits_ours, atol=1e-5)
    assert 0.0 <= ours["val/acc1"] <= 1.0


def _first_batch(state, data):
    from automl.trainer import normalise_batch
    return normalise_batch(state, data.val.images[:16])
