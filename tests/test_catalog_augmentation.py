"""Augmentation, input normalisation, weight init and L1 penalty techniques, checked on real data.

Pure functions are checked against hand computations; the hooks are observed through real
trainings of ``automl_resnet8`` on the embedded digits dataset (one or two steps each).
"""

from __future__ import annotations

import math

import pytest
import torch
from automl.plugins.augment_policy import AugmentPolicy, apply_policy
from automl.plugins.input_norm import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    cached_pixel_stats,
    constant_stats,
)
from automl.plugins.l1_penalty import l1_norm
from automl.plugins.random_erasing import AREA_MIN, random_erase
from automl.plugins.repeated_augmentation import repeated_order
from torch import nn

from automl import augment
from automl.discovery import training_manager
from automl.hookspecs import hookimpl
from automl.recipe import Recipe
from automl.trainer import evaluate, normalise_batch, prepare, train

CPU = torch.device("cpu")
DATA_CONFIG = {"dataset": "digits", "batch_size": 32}




def _recipe(techniques: dict) -> Recipe:
    return Recipe(model="automl_resnet8", data=dict(DATA_CONFIG), epochs=1,
                  techniques={"optimizer": {}, **techniques})


def _gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _distinct(images: torch.Tensor) -> int:
    return len({image.numpy().tobytes() for image in images})


# --- augment_policy and augmix ---------------------------------------------------------------


class _AugmentInput:
    """Records the first batch the augment hooks receive and the generator's state then."""

    def __init__(self):
        self.images, self.rng = None, None

    @hookimpl(tryfirst=True)
    def augment_batch(self, state):
        if self.images is None:
            self.images, self.rng = state.images.clone(), state.generator.get_state()


class _ModelInput:
    """Records the first batch the model receives (augmented, normalised)."""

    def __init__(self):
        self.images = None

    @hookimpl(trylast=True)
    def on_batch(self, state):
        if self.images is None:
            self.images = state.images.clone()


@pytest.mark.parametrize(("name", "params", "policy"), [
    ("augment_policy", {"policy": "trivialaugment"}, augment.trivial_augment),
    ("augment_policy", {"policy": "randaugment", "magnitude": 7, "num_ops": 3},
     lambda x, g: augment.rand_augment(x, 3, 7, g)),
    ("augment_policy", {"policy": "autoaugment_imagenet"},
     lambda x, g: augment.auto_augment(x, "imagenet", g)),
    ("augment_policy", {"policy": "autoaugment_cifar10"},
     lambda x, g: augment.auto_augment(x, "cifar10", g)),
    ("augment_policy", {"policy": "autoaugment_svhn"},
     lambda x, g: augment.auto_augment(x, "svhn", g)),
    ("augmix", {"severity": 5, "mixture_width": 2}, lambda x, g: augment.augmix(x, 5, 2, g)),
], ids=["trivialaugment", "randaugment", "autoaugment_imagenet", "autoaugment_cifar10",
        "autoaugment_svhn", "augmix"])
def test_policy_hooks_apply_their_batched_policy_with_the_training_generator(
        data, name, params, policy):
    recipe = _recipe({name: params})
    seen, fed = _AugmentInput(), _ModelInput()
    state = train(recipe, data, training_manager(recipe, extra_plugins=[seen, fed]),
                  device=CPU, max_steps=1)
    generator = torch.Generator()
    generator.set_state(seen.rng)
    expected = normalise_batch(state, policy(seen.images, generator))
    assert torch.equal(fed.images, expected)
    assert not torch.equal(fed.images, normalise_batch(state, seen.images)), "nothing changed"


def test_trivialaugment_is_the_default_and_unknown_policies_fail(data):
    assert AugmentPolicy().params == {"policy": "trivialaugment", "magnitude": 9, "num_ops": 2}
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        apply_policy(data.train.images[:4], "autoaugment", 9, 2, _gen())


@pytest.mark.parametrize("augment_fn", [
    *(lambda x, g, p=p: apply_policy(x, p, 9, 2, g)
      for p in AugmentPolicy.space["policy"].choices),
    lambda x, g: augment.augmix(x, 3, 3, g),
], ids=[*AugmentPolicy.space["policy"].choices, "augmix"])
def test_policies_augment_each_sample_on_its_own(data, augment_fn):
    image = data.train.images[0]
    images = image.expand(16, *image.shape).clone()  # one image, sixteen times
    out = augment_fn(images, _gen())
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert _distinct(out) > 1, "identical inputs came out identical: one draw per batch"
    assert any(not torch.equal(o, image) for o in out), "nothing was augmented"


# --- random_erasing ---------------------------------------------------------------------------


def _box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the rectangle a 2-d boolean mask holds (asserted)."""
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    top, left = int(rows[0]), int(cols[0])
    height, width = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
    assert len(rows) == height and len(cols) == width, "erased pixels are not contiguous"
    assert int(mask.sum()) == height * width, "erased region is not a rectangle"
    return top, left, height, width


def test_random_erasing_with_p0_is_the_identity():
    images = torch.randn(16, 3, 32, 32, generator=_gen(1))
    assert torch.equal(random_erase(images, 0.0, 0.4, "random", _gen()), images)


@pytest.mark.parametrize("area_max", [0.1, 0.4])
def test_random_erasing_with_p1_zeroes_one_box_per_sample_within_the_area_range(area_max):
    n, h, w = 64, 32, 24
    images = torch.full((n, 3, h, w), 5.0)
    out = random_erase(images, 1.0, area_max, "zero", _gen())
    erased = out == 0
    assert torch.equal(out[~erased], images[~erased]), "pixels outside the box changed"
    assert (erased == erased[:, :1]).all(), "channels erased differently"
    boxes = []
    for mask in erased[:, 0]:
        top, left, height, width = _box(mask)
        boxes.append((top, left, height, width))
        slack = 0.5 * (height + width) + 0.25  # each side was rounded to whole pixels
        assert AREA_MIN * h * w - slack <= height * width <= area_max * h * w + slack
        if height < h and width < w:  # not clipped to the image: the aspect ratio holds
            assert (height + 0.5) / max(width - 0.5, 0.5) >= 0.3
            assert (height - 0.5) / (width + 0.5) <= 3.3
    assert len(set(boxes)) > n // 2, "boxes are not drawn per sample"
    areas = [b[2] * b[3] for b in boxes]
    spread = (max(areas) - min(areas)) / ((area_max - AREA_MIN) * h * w)
    assert spread > 0.5, "areas are not drawn per sample"


def test_random_erasing_random_fill_writes_standard_normal_noise():
    images = torch.full((64, 3, 32, 32), 5.0)
    out = random_erase(images, 1.0, 0.4, "random", _gen())
    changed = out != 5.0
    assert changed.any(dim=(1, 2, 3)).all(), "some sample was not erased"
    noise = out[changed]
    assert abs(noise.mean().item()) < 0.05
    assert noise.std().item() == pytest.approx(1.0, abs=0.05)
    assert not torch.equal(out[:, 0][changed[:, 0]], out[:, 1][changed[:, 1]])  # per channel


def test_random_erasing_decides_per_sample_from_the_generator():
    images = torch.full((200, 1, 16, 16), 5.0)
    torch.manual_seed(1)
    first = random_erase(images, 0.5, 0.3, "zero", _gen(7))
    torch.manual_seed(2)
    second = random_erase(images, 0.5, 0.3, "zero", _gen(7))
    assert torch.equal(first, second), "random erasing ignores its generator"
    erased = (first == 0).any(dim=(1, 2, 3)).float().mean().item()
    assert 0.35 < erased < 0.65


def test_random_erasing_runs_before_mixing(data):
    recipe = _recipe({"mixup": {}, "random_erasing": {}, "cutmix": {}})
    pm = training_manager(recipe)
    called = [impl.plugin_name for impl in reversed(pm.hook.on_batch.get_hookimpls())]
    assert called[0] == "random_erasing", called


# --- repeated_augmentation --------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(100, 3), (99, 3), (10, 4), (7, 2)])
def test_repeated_order_repeats_distinct_samples_consecutively(n, k):
    order = repeated_order(n, k, _gen())
    assert order.shape == (n,) and order.dtype == torch.int64
    values, counts = torch.unique_consecutive(order, return_counts=True)
    picks = math.ceil(n / k)
    assert len(values) == picks
    assert len(set(values.tolist())) == picks, "a sample was picked twice"
    assert ((values >= 0) & (values < n)).all()
    assert counts[:-1].tolist() == [k] * (picks - 1)
    assert counts[-1].item() == n - k * (picks - 1)


def test_repeated_order_differs_between_epochs():
    g = _gen()
    assert not torch.equal(repeated_order(100, 3, g), repeated_order(100, 3, g))


def test_repeated_augmentation_augments_each_copy_differently(data):
    class Batches:
        def __init__(self):
            self.raw, self.augmented, self.labels = [], [], []

        @hookimpl(tryfirst=True)
        def augment_batch(self, state):
            self.raw.append(state.images.clone())
            self.labels.append(state.targets.clone())

        @hookimpl(trylast=True)
        def on_batch(self, state):
            self.augmented.append(state.images.clone())

    recipe = _recipe({"repeated_augmentation": {"repeats": 3}, "random_crop": {"padding": 4}})
    batches = Batches()
    pm = training_manager(recipe, extra_plugins=[batches])
    state = train(recipe, data, pm, device=CPU, max_steps=1)
    assert state.step == 1
    raw, augmented, labels = batches.raw[0][:30], batches.augmented[0][:30], batches.labels[0]
    copies = raw.view(10, 3, *raw.shape[1:])
    assert (copies == copies[:, :1]).all(), "a batch does not hold 3 copies of each image"
    assert (labels[:30].view(10, 3) == labels[:30:3, None]).all()
    assert _distinct(raw) == 10
    views = augmented.view(10, 3, *augmented.shape[1:])
    differ = [not torch.equal(v[0], v[1]) or not torch.equal(v[0], v[2]) for v in views]
    assert sum(differ) >= 8, "copies were augmented identically"


# --- input_norm -------------------------------------------------------------------------------


def test_pixel_stats_match_a_hand_computation_and_are_cached(data):
    x = data.train.images.double() / 255
    mean, std = x.mean(0), x.std(0, unbiased=False)
    floor = max(0.25 * x.std(unbiased=False).item(), 1 / 255)  # one channel
    got_mean, got_std = cached_pixel_stats(data.train)
    assert got_mean.shape == got_std.shape == data.train.images.shape[1:]
    assert torch.allclose(got_mean.double(), mean, atol=1e-6)
    assert torch.allclose(got_std.double(), std.clamp_min(floor), atol=1e-6)
    assert (std < floor).any() and (std > floor).any()  # the floor acted on the borders only
    again = cached_pixel_stats(data.train)
    assert again[0] is got_mean and again[1] is got_std


def test_constant_stats():
    assert constant_stats("imagenet", 3) == (IMAGENET_MEAN, IMAGENET_STD)
    mean, std = constant_stats("imagenet", 1)
    assert mean == pytest.approx((0.449,)) and std == pytest.approx((0.226,))
    assert constant_stats("unit", 3) == ((0.5,) * 3, (0.5,) * 3)


class Normalised:
    """Records the uint8 batch before normalisation and the float batch after it."""

    def __init__(self):
        self.raw, self.normalised, self.eval = [], [], []

    @hookimpl(trylast=True)
    def augment_batch(self, state):
        self.raw.append(state.images.clone())

    @hookimpl(tryfirst=True)
    def on_batch(self, state):
        self.normalised.append(state.images.clone())

    @hookimpl
    def eval_batch(self, state):
        self.eval.append(state.images.clone())


@pytest.mark.parametrize("stats", ["pixel", "imagenet", "unit"])
def test_the_trainer_feeds_batches_normalised_with_the_chosen_stats(data, stats):
    if stats == "pixel":
        mean, std = (t.view(1, 1, 16, 16) for t in cached_pixel_stats(data.train))
    else:
        values = {"imagenet": (0.449, 0.226), "unit": (0.5, 0.5)}[stats]
        mean, std = (torch.full((1, 1, 1, 1), v) for v in values)
    recipe = _recipe({"input_norm": {"stats": stats}})
    recorder = Normalised()
    pm = training_manager(recipe, extra_plugins=[recorder])
    state = train(recipe, data, pm, device=CPU, max_steps=2)
    assert len(recorder.normalised) == 2
    for raw, seen in zip(recorder.raw, recorder.normalised, strict=True):
        expected = (raw.float() / 255 - mean) / std
        assert torch.allclose(seen, expected, atol=1e-4)
    recorder.eval.clear()
    evaluate(state, pm, data.val, "val", max_batches=1)
    val = data.val.images[:512].float() / 255
    assert torch.allclose(recorder.eval[0], (val - mean) / std, atol=1e-4)
    if stats == "pixel":  # per-pixel normalisation centres every pixel over the training set
        assert recorder.normalised[0].mean().abs().item() < 0.2


# --- weight_init ------------------------------------------------------------------------------


def _layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = weight[0, 0].numel()
    return weight.shape[1] * receptive, weight.shape[0] * receptive


@pytest.mark.parametrize("scheme", ["kaiming", "xavier"])
def test_weight_init_draws_weights_with_the_scheme_std(data, scheme):
    recipe = _recipe({"weight_init": {"scheme": scheme}})
    model = prepare(recipe, data, training_manager(recipe), CPU).model
    checked = 0
    for layer in _layers(model):
        w = layer.weight.detach()
        fan_in, fan_out = _fans(w)
        if scheme == "xavier":
            expected = math.sqrt(2 / (fan_in + fan_out))
        elif isinstance(layer, nn.Conv2d):
            expected = math.sqrt(2 / fan_out)
        else:
            expected = math.sqrt(1 / fan_in)
        if w.numel() >= 600:
            assert w.std().item() == pytest.approx(expected, rel=0.12), layer
            checked += 1
    assert checked >= 6
    assert torch.equal(model.head.bias, torch.zeros_like(model.head.bias))


def test_weight_init_orthogonal_and_leaves_norm_layers_alone(data):
    recipe = _recipe({"weight_init": {"scheme": "orthogonal"}})
    model = prepare(recipe, data, training_manager(recipe), CPU).model
    plain_recipe = _recipe({})
    plain = prepare(plain_recipe, data, training_manager(plain_recipe), CPU).model
    shapes = set()
    for layer in _layers(model):
        w = layer.weight.detach().flatten(1)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        assert torch.allclose(gram, torch.eye(len(gram)), atol=1e-4), layer
        shapes.add(w.shape[0] <= w.shape[1])
    assert shapes == {True, False}  # both wide and tall matrices were checked
    assert torch.equal(model.head.bias, torch.zeros_like(model.head.bias))
    plain_modules = dict(plain.named_modules())
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, plain_modules[name].weight)
            assert torch.equal(module.bias, plain_modules[name].bias)
        elif isinstance(module, nn.Conv2d):
            assert not torch.equal(module.weight, plain_modules[name].weight)


# --- l1_penalty -------------------------------------------------------------------------------


def test_l1_norm_sums_weights_but_not_biases_or_norm_scales():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    nn.init.uniform_(model[1].weight, 1, 2)
    expected = model[0].weight.abs().sum() + model[3].weight.abs().sum()
    assert torch.allclose(l1_norm(model), expected)


class LossProbe:
    """Records the loss before and after the other after_loss hooks, and the first gradients."""

    def __init__(self):
        self.before, self.after, self.l1 = [], [], []
        self.grads: dict[str, torch.Tensor] = {}

    @hookimpl(tryfirst=True)
    def after_loss(self, state):
        self.before.append(state.loss.item())

    @hookimpl(trylast=True)
    def on_batch(self, state):
        weights = [p for p in state.model.parameters() if p.ndim > 1]
        self.l1.append(sum(w.detach().abs().sum().item() for w in weights))

    @hookimpl(trylast=True)
    def after_backward(self, state):
        self.after.append(state.loss.item())
        if not self.grads:
            self.grads = {k: p.grad.clone() for k, p in state.model.named_parameters()}


def test_l1_penalty_adds_strength_times_the_weight_norm_to_loss_and_gradients(data):
    strength = 1e-3
    recipe = _recipe({"l1_penalty": {"strength": strength}})
    probe = LossProbe()
    pm = training_manager(recipe, extra_plugins=[probe])
    train(recipe, data, pm, device=CPU, max_steps=2)
    assert len(probe.after) == 2
    for before, after, l1 in zip(probe.before, probe.after, probe.l1, strict=True):
        assert after - before == pytest.approx(strength * l1, rel=1e-4)

    plain_recipe = _recipe({})
    plain = LossProbe()
    initial = prepare(plain_recipe, data, training_manager(plain_recipe), CPU).model
    train(plain_recipe, data, training_manager(plain_recipe, extra_plugins=[plain]),
          device=CPU, max_steps=1)
    assert plain.before[0] == pytest.approx(probe.before[0], rel=1e-6)  # same batch, same init
    for name, w in initial.named_parameters():
        extra = probe.grads[name] - plain.grads[name]
        expected = strength * w.detach().sign() if w.ndim > 1 else torch.zeros_like(w)
        assert torch.allclose(extra, expected, atol=1e-6), name
