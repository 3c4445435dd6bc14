"""Optimisation techniques: optimizer, LR schedule, training resolution, accumulation, epochs.

Real objects only: the embedded digits dataset, ``automl_resnet8`` (or a BN-free linear model
where batch norm would blur the check), real plugin managers and the real trainer. Multi-epoch
runs train one batch per epoch (a real ``epoch_order`` plugin) so they stay fast.
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from automl.plugins.early_stopping import epochs_since_best
from automl.plugins.fixres import calibration_batches, recalibrate_batch_norm
from automl.plugins.lr_schedule import restart_factor, warmup_then
from automl.plugins.progressive_resizing import progressive_size
from timm.optim import Lamb

from automl.discovery import technique_catalog, training_manager
from automl.hookspecs import hookimpl
from automl.recipe import Recipe
from automl.space import parse_space
from automl.trainer import prepare, train

CPU = torch.device("cpu")
DATA_CONFIG = {"dataset": "digits", "batch_size": 32}




def _recipe(techniques: dict, epochs: int = 1, batch_size: int = 32) -> Recipe:
    techniques = {"optimizer": {}, **techniques}
    return Recipe(model="automl_resnet8", data={**DATA_CONFIG, "batch_size": batch_size},
                  epochs=epochs, techniques=techniques)


class OneBatchEpochs:
    """Each epoch trains on the first batch only: multi-epoch runs in a fraction of a second."""

    @hookimpl
    def epoch_order(self, state):
        return torch.arange(state.batch_size, device=state.device)


class LinearModel:
    """A model without batch norm, so a batch's gradient does not depend on how it is split."""

    @hookimpl
    def build_model(self, state):
        size = state.in_chans * state.image_size ** 2
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(size, state.num_classes))


class InputSizes:
    """Records the side of every image batch the model sees, in training and in evaluation."""

    def __init__(self):
        self.train: list[int] = []
        self.eval: list[int] = []
        self.per_epoch: dict[int, set[int]] = {}

    @hookimpl(trylast=True)
    def on_train_start(self, state):
        def record(module, args):
            side = args[0].shape[-1]
            assert args[0].shape[-2] == side
            if module.training:
                self.train.append(side)
                self.per_epoch.setdefault(state.epoch, set()).add(side)
            else:
                self.eval.append(side)

        state.model.register_forward_pre_hook(record)


# --- optimizer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "cls", "extra"), [
    ("sgd", torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    ("nesterov", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ("adamw", torch.optim.AdamW, {}),
    ("lamb", Lamb, {"always_adapt": True}),
    ("rmsprop", torch.optim.RMSprop, {"momentum": 0.9, "alpha": 0.9}),
])
def test_optimizer_choice_builds_its_class_with_lr_and_group_decays(data, name, cls, extra):
    recipe = _recipe({"optimizer": {"name": name, "lr": 0.0123},
                      "weight_decay": {"value": 0.01, "exclude_norm_bias": True}})
    state = prepare(recipe, data, training_manager(recipe), CPU)
    opt = state.optimizer
    assert type(opt) is cls
    assert [g["lr"] for g in opt.param_groups] == [0.0123, 0.0123]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    no_decay = opt.param_groups[1]["params"]
    assert no_decay and all(p.ndim == 1 for p in no_decay)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(state.model.parameters()))
    for key, value in extra.items():
        assert all(g[key] == value for g in opt.param_groups), key


# --- LR schedule ------------------------------------------------------------------------------


def test_warmup_shapes_rise_as_documented():
    total, warm = 100, 10
    linear = warmup_then("cosine", total, 0.1, "linear")
    cosine = warmup_then("cosine", total, 0.1, "cosine")
    constant = warmup_then("cosine", total, 0.1, "constant")
    for s in range(warm):
        assert linear(s) == pytest.approx((s + 1) / warm)
        assert cosine(s) == pytest.approx(0.5 * (1 - math.cos(math.pi * (s + 1) / warm)))
        assert constant(s) == pytest.approx(0.1)
    rising = [cosine(s) for s in range(warm)]
    assert all(a < b for a, b in pairwise(rising))
    assert cosine(0) < linear(0) and cosine(warm - 1) == pytest.approx(1.0)  # slow start
    for factor in (linear, cosine, constant):  # the schedule takes over at its full LR
        assert factor(warm) == pytest.approx(1.0)


def test_cosine_restarts_restart_at_the_doubling_points():
    assert [restart_factor(p, 3) for p in (0.0, 1 / 7, 3 / 7)] == pytest.approx([1.0] * 3)
    assert restart_factor(1.0, 3) == pytest.approx(0.0, abs=1e-12)
    assert restart_factor(0.5 / 7, 3) == pytest.approx(0.5)  # middle of the first cycle
    assert restart_factor(2 / 7, 3) == pytest.approx(0.5)  # middle of the second (length 2/7)
    assert restart_factor(5 / 7, 3) == pytest.approx(0.5)  # middle of the third (length 4/7)
    assert restart_factor(1 / 3, 2) == pytest.approx(1.0)
    assert [restart_factor(p / 15, 4) for p in (1, 3, 7)] == pytest.approx([1.0] * 3)


def test_cosine_restarts_per_step_return_to_the_peak_exactly_at_restarts():
    warm, post = 10, 70  # 3 cycles of 10, 20 and 40 steps after a 10-step warmup
    factor = warmup_then("cosine_restarts", warm + post, warm / (warm + post), cycles=3)
    values = [factor(s) for s in range(warm + post + 1)]
    rises = [s for s in range(warm + 1, len(values)) if values[s] > values[s - 1]]
    assert rises == [warm + 10, warm + 30]
    for s in (warm, warm + 10, warm + 30):
        assert values[s] == pytest.approx(1.0)
        assert values[s - 1] < 0.05 or s == warm
    assert values[-1] == pytest.approx(0.0, abs=1e-12)


def test_cosine_restarts_drive_the_optimizer_lr(data):
    recipe = _recipe({"optimizer": {"lr": 0.1},
                      "lr_schedule": {"schedule": "cosine_restarts", "cycles": 2,
                                      "warmup": 0.0}}, batch_size=43)  # 30 steps
    state = prepare(recipe, data, training_manager(recipe), CPU)
    total = state.total_steps
    lrs = []
    for _ in range(total):
        lrs.append(state.optimizer.param_groups[0]["lr"])
        state.optimizer.step()
        state.scheduler.step()
    restart = round(total / 3)
    assert total % 3 == 0  # the restart lands on a step
    assert lrs[0] == pytest.approx(0.1) and lrs[restart] == pytest.approx(0.1)
    assert lrs[restart - 1] < 0.01
    assert max(lrs[1:restart] + lrs[restart + 1:]) < 0.1


# --- progressive resizing ---------------------------------------------------------------------


def test_progressive_size_grows_linearly_to_full_size():
    assert [progressive_size(16, e, 5, 0.5, 0.5) for e in range(5)] == [8, 12, 16, 16, 16]
    assert [progressive_size(16, e, 4, 0.5, 1.0) for e in range(4)] == [8, 11, 13, 16]
    assert progressive_size(16, 0, 1, 0.5, 1.0) == 16  # a single epoch is the last one
    assert progressive_size(10, 0, 3, 0.5, 1.0) == 8  # never below 8 px
    assert progressive_size(6, 0, 3, 0.5, 1.0) == 6  # nor above the final size


def test_progressive_resizing_trains_each_epoch_at_its_size(data):
    recipe = _recipe({"progressive_resizing": {"start_scale": 0.6, "full_size_at": 0.5}},
                     epochs=3)
    sizes = InputSizes()
    pm = training_manager(recipe, extra_plugins=[OneBatchEpochs(), sizes])
    train(recipe, data, pm, device=CPU)
    assert sizes.per_epoch == {0: {10}, 1: {16}, 2: {16}}  # 0.6 × 16 = 9.6 -> 10
    assert set(sizes.eval) == {16}


def test_progressive_resizing_grows_to_the_fixres_training_size(data):
    recipe = _recipe({"fixres": {"train_scale": 0.75, "calibration_batches": 2},
                      "progressive_resizing": {"start_scale": 0.6, "full_size_at": 1.0}},
                     epochs=3)
    sizes = InputSizes()
    pm = training_manager(recipe, extra_plugins=[OneBatchEpochs(), sizes])
    state = train(recipe, data, pm, device=CPU)
    # final 12 (= 0.75 × 16); 0.6 × 12 = 7.2 -> 8 px minimum; 0.8 × 12 = 9.6 -> 10
    assert state.extras["progressive_resizing_final"] == 12
    assert sizes.per_epoch == {0: {8}, 1: {10}, 2: {12}}
    assert set(sizes.eval) == {16}


# --- FixRes -----------------------------------------------------------------------------------


def test_recalibrate_batch_norm_averages_the_batches_with_dropout_off():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.BatchNorm2d(3))
    model[1].running_mean.fill_(7.0)
    model[1].train()
    batches = [torch.randn(4, 3, 5, 5) * (i + 1) + i for i in range(3)]
    out = recalibrate_batch_norm(model, batches)
    bn = out[1]
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches])
    variances = torch.stack([b.transpose(0, 1).reshape(3, -1).var(dim=1) for b in batches])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, variances.mean(0), atol=1e-4)
    assert bn.num_batches_tracked.item() == 3
    assert not out.training and not bn.training
    assert torch.all(model[1].running_mean == 7.0), "the original model was changed"
    assert model[1].training


def test_calibration_batches_are_normalised_at_the_eval_size(data):
    recipe = _recipe({"fixres": {}, "inference_resize": {"scale": 1.25}})
    state = prepare(recipe, data, training_manager(recipe), CPU)
    batches = list(calibration_batches(state, 3))
    assert [tuple(b.shape) for b in batches] == [(32, 1, 20, 20)] * 3
    assert all(b.dtype == torch.float32 for b in batches)
    pixels = torch.cat([b.flatten() for b in batches])
    assert abs(pixels.mean().item()) < 0.3 and 0.7 < pixels.std().item() < 1.3
    again = list(calibration_batches(state, 3))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    assert not torch.equal(batches[0], batches[1])


def test_fixres_trains_small_and_evaluates_a_recalibrated_copy(data):
    recipe = _recipe({"fixres": {"train_scale": 0.75, "calibration_batches": 3}})
    sizes = InputSizes()
    pm = training_manager(recipe, extra_plugins=[sizes])
    state = train(recipe, data, pm, device=CPU, max_steps=2)
    assert state.train_image_size == 12
    assert set(sizes.train) == {12}
    assert set(sizes.eval) == {16}
    before = {k: v.clone() for k, v in state.model.named_buffers()}
    model = pm.hook.eval_model(state=state)
    assert model is not state.model
    assert not model.training
    for k, v in state.model.named_buffers():
        assert torch.equal(v, before[k]), f"evaluation changed the trained model's {k}"
    buffers = dict(model.named_buffers())
    tracked = [v.item() for k, v in buffers.items() if k.endswith("num_batches_tracked")]
    assert tracked and set(tracked) == {3}
    assert not torch.allclose(buffers["stem.1.running_mean"], before["stem.1.running_mean"])
    for k, v in model.named_parameters():
        assert torch.equal(v, dict(state.model.named_parameters())[k])


def test_fixres_recalibrates_at_the_inference_resize_size(data):
    recipe = _recipe({"fixres": {"train_scale": 0.75, "calibration_batches": 2},
                      "inference_resize": {"scale": 1.25}})
    calls = []

    class StemNorm:
        @hookimpl(trylast=True)
        def on_train_start(self, state):
            original = state.model.stem[1]

            def record(module, args):
                calls.append((module is original, module.training, args[0].shape[-1]))

            original.register_forward_pre_hook(record)  # copies keep it (deepcopy)

    pm = training_manager(recipe, extra_plugins=[StemNorm()])
    train(recipe, data, pm, device=CPU, max_steps=2)
    calibration = [side for original, training, side in calls if not original and training]
    evaluation = [side for original, training, side in calls if not original and not training]
    assert calibration == [20, 20]  # one validation, two calibration batches at 1.25 × 16
    assert evaluation and set(evaluation) == {20}
    assert {side for original, _, side in calls if original} == {12}


def test_fixres_recalibrates_the_ema_weights(data):
    recipe = _recipe({"ema": {"decay": 0.9}, "fixres": {"calibration_batches": 5}})
    pm = training_manager(recipe)
    state = train(recipe, data, pm, device=CPU, max_steps=2)
    ema = state.extras["ema"]
    model = pm.hook.eval_model(state=state)
    assert model is not ema and model is not state.model
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in ema.named_parameters())
    assert any(not torch.equal(params[k], v) for k, v in state.model.named_parameters())
    assert dict(model.named_buffers())["stem.1.num_batches_tracked"].item() == 5
    assert dict(ema.named_buffers())["stem.1.num_batches_tracked"].item() == 2  # 2 steps


def test_fixres_leaves_models_without_batch_norm_unchanged(data):
    recipe = _recipe({"fixres": {}})
    pm = training_manager(recipe, extra_plugins=[LinearModel()])
    state = prepare(recipe, data, pm, CPU)
    assert pm.hook.eval_model(state=state) is state.model


# --- gradient accumulation --------------------------------------------------------------------


class Steps:
    """Counts micro-batches and optimizer steps, and keeps the gradients of each step."""

    def __init__(self):
        self.micro_batches = 0
        self.optimizer_steps = 0
        self.grads: list[dict[str, torch.Tensor]] = []

    @hookimpl
    def on_train_start(self, state):
        def count(*_):
            self.optimizer_steps += 1

        state.optimizer.register_step_post_hook(count)

    @hookimpl
    def on_batch(self, state):
        self.micro_batches += 1

    @hookimpl(trylast=True)
    def after_backward(self, state):
        self.grads.append({k: p.grad.clone() for k, p in state.model.named_parameters()})


@pytest.mark.parametrize("k", [2, 3])
def test_grad_accumulation_steps_once_per_k_micro_batches(data, k):
    recipe = _recipe({"grad_accumulation": {"steps": k}})
    steps = Steps()
    pm = training_manager(recipe, extra_plugins=[steps])
    state = train(recipe, data, pm, device=CPU, max_steps=2)
    assert state.accumulation_steps == k
    assert state.steps_per_epoch == state.batches_per_epoch // k
    assert (steps.micro_batches, steps.optimizer_steps, len(steps.grads)) == (2 * k, 2, 2)
    assert state.step == 2


def test_accumulated_gradient_is_the_gradient_of_the_mean_loss(data):
    """k micro-batches of 32 accumulate the gradient of one batch of 32k (same samples, since
    the epoch order comes from the same seeded generator); no batch norm to tell them apart."""
    k = 4
    runs = []
    for techniques, batch_size in (({"grad_accumulation": {"steps": k}}, 32), ({}, 32 * k)):
        recipe = _recipe(techniques, batch_size=batch_size)
        steps = Steps()
        pm = training_manager(recipe, extra_plugins=[LinearModel(), steps])
        train(recipe, data, pm, device=CPU, max_steps=1)
        assert steps.optimizer_steps == 1
        runs.append(steps)
    accumulated, whole = runs
    assert accumulated.micro_batches == k and whole.micro_batches == 1
    for name, grad in whole.grads[0].items():
        assert grad.abs().max() > 0
        assert torch.allclose(accumulated.grads[0][name], grad, rtol=1e-4, atol=1e-6), name


# --- long training ----------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "expected"), [
    ({}, 30),  # searched multiplier: the budget spans its high end, 3.0
    ({"multiplier": 1.5}, 15),
    ({"multiplier": {"type": "float", "low": 1.0, "high": 2.5, "step": 0.5}}, 25),
    ({"multiplier": {"type": "categorical", "choices": [2.0, 1.5]}}, 20),
    ({"enabled": False}, 10),
])
def test_long_training_sets_the_pruning_budget(entry, expected):
    space = parse_space({"epochs": 10, "techniques": {"long_training": entry, "mixup": {}}},
                        {}, "<test>", technique_catalog())
    assert space.max_epochs() == expected


def test_long_training_runs_the_multiplied_epochs(data):
    recipe = _recipe({"long_training": {"multiplier": 1.5}}, epochs=2)
    pm = training_manager(recipe, extra_plugins=[OneBatchEpochs()])
    state = train(recipe, data, pm, device=CPU)
    assert state.epochs == 3
    assert [h["epoch"] for h in state.history] == [1, 2, 3]
    assert state.total_steps == 3 * state.steps_per_epoch  # the LR schedule spans all of them


# --- early stopping ---------------------------------------------------------------------------


def test_epochs_since_best_counts_strict_improvements():
    assert epochs_since_best([0.5], lower_is_better=False) == 0
    assert epochs_since_best([0.5, 0.6, 0.6, 0.55], lower_is_better=False) == 2
    assert epochs_since_best([0.5, 0.4, 0.7], lower_is_better=False) == 0
    assert epochs_since_best([1.0, 0.8, 0.9], lower_is_better=True) == 1
    assert epochs_since_best([1.0, 1.2, 1.1, 0.5], lower_is_better=True) == 0


@pytest.mark.parametrize(("monitor", "values"), [
    ("val/acc1", [0.5, 0.7, 0.7, 0.6, 0.69, 0.65]),  # best at epoch 2, then no improvement
    ("val/loss", [2.0, 1.0, 1.0, 1.5, 1.01, 1.2]),
])
@pytest.mark.parametrize("patience", [1, 2, 3])
def test_early_stopping_stops_after_patience_epochs_without_improvement(data, monitor, values,
                                                                         patience):
    recipe = _recipe({"early_stopping": {"patience": patience, "monitor": monitor}})
    pm = training_manager(recipe)
    state = prepare(recipe, data, pm, CPU)
    other = "val/loss" if monitor == "val/acc1" else "val/acc1"
    stopped_after = None
    for epoch, value in enumerate(values, start=1):
        # the other metric improves every epoch: only the monitored one counts
        improving = epoch / 10 if other == "val/acc1" else 1 / epoch
        pm.hook.on_validation(state=state, metrics={monitor: value, other: improving})
        if state.stop_training:
            stopped_after = epoch
            break
    assert stopped_after == 2 + patience


class FeedMetric:
    """Replaces the monitored metric with a fixed sequence before other plugins see it."""

    def __init__(self, values: list[float]):
        self.values = values

    @hookimpl(tryfirst=True)
    def on_validation(self, state, metrics):
        metrics["val/acc1"] = self.values[state.epoch]


def test_early_stopping_ends_a_real_training_early(data):
    recipe = _recipe({"early_stopping": {"patience": 2, "monitor": "val/acc1"}}, epochs=8)
    pm = training_manager(recipe, extra_plugins=[OneBatchEpochs(),
                                                 FeedMetric([0.3, 0.5, 0.5, 0.4] + [0.9] * 4)])
    state = train(recipe, data, pm, device=CPU)
    assert state.stop_training
    assert len(state.history) == 4 < state.epochs
