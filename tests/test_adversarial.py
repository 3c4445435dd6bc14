"""Adversarial training: the attacks against hand computations, their bounds, what the attack
leaves alone (parameter gradients, batch-norm statistics, the training mode), and the
``robust_acc`` metric on a model trained on digits."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F
from automl.plugins.adversarial_training import AdversarialTraining, fgsm, input_space, pgd

from automl.discovery import hook_order, technique_catalog, training_manager
from automl.errors import ConfigError
from automl.recipe import Recipe
from automl.space import load_space
from automl.trainer import evaluate, normalise_batch, prepare, train

CPU = torch.device("cpu")
MEAN, STD = (0.2, 0.5, 0.7), (0.1, 0.3, 0.25)


def _linear(c: int = 3, side: int = 4, classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * side * side, classes))


def _uint8_images(n: int = 6, c: int = 3, side: int = 4) -> torch.Tensor:
    """Random pixels with both ends of the range present, so the clamp has work to do."""
    images = torch.randint(0, 256, (n, c, side, side), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    images[:, :, 0, 0], images[:, :, 0, 1] = 0, 255
    return images


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """As the trainer does it: (x·255 − mean·255) / (std·255)."""
    m, s = (torch.as_tensor(v).view(1, -1, 1, 1) * 255 for v in (mean, std))
    return (images.float() - m) / s


def _pixels(normalised: torch.Tensor, mean, std) -> torch.Tensor:
    """Back to [0, 1] pixel units."""
    m, s = (torch.as_tensor(v).view(1, -1, 1, 1) for v in (mean, std))
    return normalised * s + m


def _hand_input_gradient(model: torch.nn.Sequential, x: torch.Tensor, targets: torch.Tensor
                         ) -> torch.Tensor:
    """∂/∂x of Σ cross-entropy for a linear model: (softmax(Wx + b) − onehot(y)) W."""
    linear = model[1]
    flat = x.flatten(1)
    probs = torch.softmax(flat @ linear.weight.T + linear.bias, 1)
    onehot = F.one_hot(targets, probs.shape[1]).float()
    return ((probs - onehot) @ linear.weight).view_as(x)


# --- the attacks ------------------------------------------------------------------------------


def test_fgsm_adds_eps_times_the_sign_of_the_hand_computed_gradient():
    model, targets = _linear(), torch.tensor([0, 1, 2, 3, 4, 0])
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    sign = _hand_input_gradient(model, x, targets).detach().sign()
    assert (sign != 0).all()
    adv = fgsm(model, x, targets, 0.25, -float("inf"), float("inf"))
    assert torch.allclose(adv - x, 0.25 * sign, atol=1e-6)


def test_fgsm_in_pixel_units_stays_a_valid_image_within_eps():
    """ε and the [0, 1] range converted per channel: the attacked image, un-normalised, is the
    clean one moved by ε·sign(grad) and clipped to [0, 1], pixel by pixel."""
    model, images, targets = _linear(), _uint8_images(), torch.tensor([0, 1, 2, 3, 4, 0])
    x = _normalise(images, MEAN, STD)
    unit, lo, hi = input_space(MEAN, STD, 4, CPU)
    sign = _hand_input_gradient(model, x, targets).detach().sign()
    adv = _pixels(fgsm(model, x, targets, 0.1 * unit, lo, hi), MEAN, STD)
    clean = images.float() / 255
    assert torch.allclose(adv, (clean + 0.1 * sign).clamp(0, 1), atol=1e-5)
    assert adv.min() >= -1e-6 and adv.max() <= 1 + 1e-6
    assert (adv - clean).abs().max() <= 0.1 + 1e-5
    clipped = ((clean + 0.1 * sign) - adv).abs() > 1e-3
    assert clipped.any() and not clipped.all()


def test_soft_targets_are_attacked_like_the_class_indices_they_encode():
    model, targets = _linear(), torch.tensor([0, 1, 2, 3, 4, 0])
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    soft = F.one_hot(targets, 5).float()
    assert torch.equal(fgsm(model, x, soft, 0.1, -9.0, 9.0),
                       fgsm(model, x, targets, 0.1, -9.0, 9.0))


def _conv_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()


def test_pgd_stays_in_the_eps_ball_and_the_valid_range_with_per_pixel_statistics():
    images, targets = _uint8_images(n=8, side=6), torch.arange(8) % 5
    g = torch.Generator().manual_seed(4)
    mean = torch.rand(3, 6, 6, generator=g) * 0.5 + 0.25
    std = torch.rand(3, 6, 6, generator=g) * 0.2 + 0.1
    m, s = mean.unsqueeze(0), std.unsqueeze(0)
    x = (images.float() / 255 - m) / s
    unit, lo, hi = input_space(mean, std, 6, CPU)
    assert unit.shape == (1, 3, 6, 6)
    model, eps = _conv_model(), 0.05
    adv = pgd(model, x, targets, eps * unit, 2.5 * eps * unit / 5, 5, lo, hi,
              torch.Generator().manual_seed(5))
    pixels, clean = adv * s + m, images.float() / 255
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert (pixels - clean).abs().max() <= eps + 1e-5
    assert (pixels - clean).abs().max() >= eps - 1e-5  # the steps reach the ball's edge
    with torch.no_grad():
        assert F.cross_entropy(model(adv), targets) > F.cross_entropy(model(x), targets)


def test_per_pixel_bounds_follow_a_resized_batch():
    unit, lo, hi = input_space(torch.full((1, 8, 8), 0.5), torch.full((1, 8, 8), 0.25), 12, CPU)
    assert unit.shape == lo.shape == hi.shape == (1, 1, 12, 12)
    assert torch.allclose(lo, torch.full_like(lo, -2.0))
    assert torch.allclose(unit, torch.full_like(unit, 4.0))
    unit, lo, hi = input_space(MEAN, STD, 12, CPU)  # per channel: size does not matter
    assert unit.shape == (1, 3, 1, 1)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_the_attacks_leave_parameter_gradients_alone(attack):
    model, targets = _conv_model(), torch.arange(6) % 5
    x = torch.randn(6, 3, 6, 6, generator=torch.Generator().manual_seed(6))
    params = list(model.parameters())
    marks = [torch.full_like(p, 7.0) for p in params[:-1]]
    for p, mark in zip(params, marks, strict=False):
        p.grad = mark.clone()
    if attack == "fgsm":
        fgsm(model, x, targets, 0.1, -3.0, 3.0)
    else:
        pgd(model, x, targets, 0.1, 0.05, 3, -3.0, 3.0, torch.Generator().manual_seed(0))
    for p, mark in zip(params, marks, strict=False):
        assert torch.equal(p.grad, mark)
    assert params[-1].grad is None


# --- the technique in training ---------------------------------------------------------------


def _recipe(techniques: dict, epochs: int = 1) -> Recipe:
    return Recipe(model="automl_resnet8", data={"dataset": "digits", "batch_size": 32},
                  epochs=epochs, techniques={"optimizer": {}, **techniques})


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_on_batch_replaces_the_fraction_and_leaves_the_model_as_it_was(data, attack):
    """Eval-mode attack: batch-norm statistics not moved, training mode back, no gradient."""
    recipe = _recipe({"adversarial_training": {"attack": attack, "fraction": 0.25}})
    pm = training_manager(recipe)
    state = prepare(recipe, data, pm, CPU)
    model = state.model.train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    state.images = clean = normalise_batch(state, data.train.images[:32])
    state.targets = data.train.labels[:32]
    pm.hook.on_batch(state=state)
    assert model.training
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())
    changed = (state.images != clean).flatten(1).any(1)
    assert changed.sum() == 8  # a quarter of 32, the other images untouched
    unit, _, _ = input_space(state.input_mean, state.input_std, 16, CPU)
    assert ((state.images - clean) / unit).abs().max() <= 0.1 + 1e-5


def test_it_attacks_after_mixup_and_cutmix():
    catalog = technique_catalog()
    order = hook_order([catalog[n] for n in ("adversarial_training", "cutmix", "mixup",
                                              "random_erasing")])["on_batch"]
    assert order[-1] == "adversarial_training"


def test_pgd_with_mixup_trains_and_reports_robust_accuracy(data):
    recipe = _recipe({"mixup": {}, "adversarial_training": {"attack": "pgd", "pgd_steps": 2}})
    state = train(recipe, data, training_manager(recipe), device=CPU, max_steps=2)
    assert 0.0 <= state.history[-1]["val/robust_acc"] <= state.history[-1]["val/acc1"]


def test_robust_accuracy_is_clean_accuracy_at_zero_and_below_it_under_attack(data):
    """A model trained on digits (with adversarial training at ε 0.1): at eval ε 0 the metric
    is exactly the accuracy; at 0.1 FGSM lowers it."""
    recipe = _recipe({"adversarial_training": {"eval_epsilon": 0.0}}, epochs=2)
    pm = training_manager(recipe)
    state = train(recipe, data, pm, device=CPU)
    last = state.history[-1]
    assert last["val/acc1"] > 0.5
    assert last["val/robust_acc"] == pytest.approx(last["val/acc1"], abs=1e-6)
    pm.get_plugin("adversarial_training").params["eval_epsilon"] = 0.1
    attacked = evaluate(state, pm, data.val, "val")
    assert attacked["val/acc1"] == pytest.approx(last["val/acc1"])
    assert attacked["val/robust_acc"] < attacked["val/acc1"]


# --- its space ---------------------------------------------------------------------------------


def _space(tmp_path, params: str):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(f"""\
        techniques:
          optimizer: {{}}
          adversarial_training: {params}
        """))
    return load_space(path, technique_catalog())


def test_the_default_space_searches_the_attack_but_fixes_the_measurement(tmp_path):
    params = _space(tmp_path, "{}").techniques["adversarial_training"].params
    assert params["eval_epsilon"].choices == (0.1,)
    assert params["epsilon"].low < 0.1 < params["epsilon"].high
    assert params["attack"].choices == ("fgsm", "pgd")


def test_a_space_may_fix_any_eval_epsilon_but_not_search_it(tmp_path):
    params = _space(tmp_path, "{eval_epsilon: 0.031}").techniques["adversarial_training"].params
    assert params["eval_epsilon"] == 0.031
    with pytest.raises(ConfigError, match="eval_epsilon"):
        _space(tmp_path, "{eval_epsilon: {type: float, low: 0.01, high: 0.1}}")
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        _space(tmp_path, "{eval_epsilon: 2}")
    assert AdversarialTraining.check_value("eval_epsilon", True) is not None


def test_a_study_can_optimise_robust_accuracy_with_the_technique_fixed_on(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent("""\
        techniques:
          optimizer: {}
          adversarial_training: {enabled: true, eval_epsilon: 0.1}
        study: {metric: val/robust_acc}
        """))
    study = load_space(path, technique_catalog()).study
    assert (study["metric"], study["direction"]) == ("val/robust_acc", "maximize")


def test_at_zero_eps_robust_accuracy_sees_what_evaluation_sees(data):
    """Test-time augmentation (an eval_model wrapper) and inference resize (an eval_batch
    hook, reproduced through ``eval_image_size``): the metric's clean pass is evaluation's.
    One epoch, so that the model's predictions depend on the resolution it is shown."""
    recipe = _recipe({"adversarial_training": {"eval_epsilon": 0.0},
                      "test_time_augmentation": {}, "inference_resize": {"scale": 1.25}})
    state = train(recipe, data, training_manager(recipe), device=CPU)
    assert state.history[-1]["val/robust_acc"] == pytest.approx(state.history[-1]["val/acc1"],
                                                                abs=1e-6)
