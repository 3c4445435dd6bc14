"""Every technique trained for two steps at the edges of its space, and its pure functions checked.

The generic checks are automl.testing's, the ones a plugin author's own tests call; they run
here for every installed technique, built-in or not.

Real objects only: the embedded digits dataset, the small ``automl_resnet8`` network, real plugin
managers. Each training is two optimizer steps plus one validation pass, so the whole file stays
fast on a CPU.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from automl.plugins import BUILTIN_TECHNIQUES
from automl.plugins.cutmix import cutmix
from automl.plugins.flip import random_hflip
from automl.plugins.lr_schedule import warmup_then
from automl.plugins.mixup import mixup
from automl.plugins.random_crop import random_translate
from automl.plugins.weight_decay import decay_groups
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from timm.layers import DropPath

from automl.discovery import check_technique_hooks, technique_catalog, training_manager
from automl.errors import UserError
from automl.hookspecs import hookimpl
from automl.recipe import Recipe
from automl.technique import Technique
from automl.testing import (
    check_round_trip,
    check_technique_class,
    edge_params,
    train_a_few_batches,
)
from automl.trainer import fit, prepare, train

CPU = torch.device("cpu")
DATA_CONFIG = {"dataset": "digits", "batch_size": 32}


# --- helpers ---------------------------------------------------------------------------------


def _cases() -> list:
    """(technique, case) for every installed technique: the edges of its space, as
    :func:`automl.testing.edge_params` names them."""
    cases = []
    for name, cls in technique_catalog().items():
        placeholders = dict.fromkeys(cls.user_set_params(), "")
        cases += [pytest.param(name, case, id=f"{name}-{case}")
                  for case in edge_params(cls, placeholders)]
    return cases


def _recipe(techniques: dict, epochs: int = 1) -> Recipe:
    techniques = {"optimizer": {}, **techniques}
    return Recipe(model="automl_resnet8", data=dict(DATA_CONFIG), epochs=epochs,
                  techniques=techniques)


class Recorder:
    """A real plugin that records what training did: initial weights and optimizer steps."""

    def __init__(self):
        self.initial: dict[str, torch.Tensor] = {}
        self.optimizer_steps = 0
        self.eval_input_shapes: list[tuple[int, ...]] = []
        self.train_input_shapes: list[tuple[int, ...]] = []
        self.clipped_norms: list[float] = []

    @hookimpl(tryfirst=True)
    def on_train_start(self, state):
        self.initial = {k: v.detach().clone() for k, v in state.model.named_parameters()}

        def count(*_):
            self.optimizer_steps += 1

        state.optimizer.register_step_post_hook(count)

    @hookimpl(trylast=True)
    def on_batch(self, state):
        self.train_input_shapes.append(tuple(state.images.shape))

    @hookimpl(trylast=True)
    def after_backward(self, state):  # after every technique's gradient change (clipping)
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        self.clipped_norms.append(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())




# --- every technique, trained at the edges of its space --------------------------------------


def test_catalog_has_the_builtin_techniques():
    names = set(technique_catalog())
    assert {"optimizer", "lr_schedule", "weight_decay", "flip", "random_crop", "augment_policy",
            "dropout", "stochastic_depth", "label_smoothing", "mixup", "cutmix", "ema",
            "grad_clip", "inference_resize"} <= names


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """A weights file for the digits model: the value only a user can give a checkpoint path."""
    recipe = _recipe({})
    state = prepare(recipe, data, training_manager(recipe), CPU)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(state.model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def user_values(checkpoint):
    """Values only a user can give (Technique.user_set_params), for the built-ins that have
    them. An installed technique with others is checked by its own tests (they give
    automl.testing.edge_params its values), not here."""
    return {"transfer_learning": {"checkpoint": checkpoint}}


def _edge_case(name: str, case: str, user_values: dict) -> tuple[type[Technique], dict]:
    cls = technique_catalog()[name]
    given = user_values.get(name, {})
    if set(cls.user_set_params()) - set(given):
        pytest.skip(f"{name}: sets {', '.join(cls.user_set_params())}, values only its "
                    "plugin's own tests can give")
    return cls, edge_params(cls, given)[case]


@pytest.mark.parametrize(("name", "case"), _cases())
def test_technique_trains_two_steps(name, case, user_values):
    cls, params = _edge_case(name, case, user_values)
    state = train_a_few_batches(cls, params, steps=2)
    assert len(state.history) == 1


@pytest.mark.parametrize(("name", "case"), _cases())
def test_technique_round_trips_through_a_recipe(name, case, user_values):
    cls, params = _edge_case(name, case, user_values)
    check_round_trip(cls, params)


@pytest.mark.parametrize("cls", BUILTIN_TECHNIQUES, ids=lambda cls: cls.name)
def test_builtin_technique_passes_the_plugin_authors_class_check(cls):
    check_technique_class(cls)


def test_every_builtin_user_set_parameter_is_given_here(user_values):
    assert {cls.name: cls.user_set_params() for cls in BUILTIN_TECHNIQUES
            if cls.user_set_params()} == {name: list(v) for name, v in user_values.items()}


# --- pure functions ---------------------------------------------------------------------------


def _gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _asymmetric_images(n: int = 64, c: int = 1, h: int = 8, w: int = 8) -> torch.Tensor:
    """uint8 images whose left-right mirror differs from themselves."""
    base = torch.arange(h * w, dtype=torch.uint8).view(1, 1, h, w) + 1
    return (base + torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)).expand(n, c, h, w).clone()


def test_random_hflip_p0_is_identity_and_p1_mirrors_every_image():
    images = _asymmetric_images()
    assert torch.equal(random_hflip(images, 0.0, _gen()), images)
    assert torch.equal(random_hflip(images, 1.0, _gen()), images.flip(-1))


def test_random_hflip_decides_per_sample():
    images = _asymmetric_images(n=64)
    out = random_hflip(images, 0.5, _gen())
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


@pytest.mark.parametrize("mode", ["reflect", "constant"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_translate_keeps_shape_and_dtype(mode, dtype):
    images = _asymmetric_images(n=5, c=3, h=6, w=7).to(dtype)
    for padding in (0, 2, 10):  # 10 > side: reflect padding must clip, not fail
        out = random_translate(images, padding, mode, _gen())
        assert out.shape == images.shape
        assert out.dtype == images.dtype
    assert torch.equal(random_translate(images, 0, mode, _gen()), images)


def test_random_translate_shifts_each_sample_by_its_own_offset():
    n, h, w, padding = 32, 8, 8, 2
    one = torch.arange(1, h * w + 1, dtype=torch.uint8).view(1, 1, h, w)  # unique, non-zero
    images = one.expand(n, 1, h, w).clone()
    out = random_translate(images, padding, "constant", _gen())
    padded = torch.nn.functional.pad(one, (padding,) * 4)
    offsets = []
    for sample in out:
        matches = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                   if torch.equal(padded[0, :, dy:dy + h, dx:dx + w], sample)]
        assert len(matches) == 1, "output is not a window of the padded image"
        offsets.append(matches[0])
    assert len(set(offsets)) > 1, "every sample got the same offset (one draw per batch)"


def _mix_inputs(n: int = 10):
    """Constant images with distinct values, one distinct class each: mixing is then readable."""
    values = torch.arange(n, dtype=torch.float32) * 10 + 5
    images = values.view(n, 1, 1, 1).expand(n, 3, 16, 16).clone()
    targets = torch.eye(n)
    return images, targets, values


@pytest.mark.parametrize("fn", [mixup, cutmix], ids=["mixup", "cutmix"])
def test_mixing_gives_normalised_soft_targets_drawn_per_sample(fn):
    torch.manual_seed(0)
    images, targets, values = _mix_inputs()
    mixed, soft = fn(images, targets, 1.0, _gen())
    assert mixed.shape == images.shape
    assert soft.shape == targets.shape
    assert torch.allclose(soft.sum(1), torch.ones(len(soft)))
    assert (soft >= 0).all()
    # each mixed image is the label-weighted blend of the sources (mean over pixels)
    expected_means = soft @ values
    assert torch.allclose(mixed.mean(dim=(1, 2, 3)), expected_means, atol=1e-4)
    own_weight = soft.diagonal()
    assert len(torch.unique(own_weight)) > 2, "one mixing weight for the whole batch"


def test_cutmix_label_weight_is_the_fraction_of_pixels_kept():
    torch.manual_seed(1)
    images, targets, values = _mix_inputs(n=12)
    mixed, soft = cutmix(images, targets, 1.0, _gen(3))
    for i in range(len(images)):
        kept = (mixed[i] == values[i]).float().mean()
        assert soft[i, i].item() == pytest.approx(kept.item(), abs=1e-6)
        others = soft[i].clone()
        others[i] = 0
        if kept < 1:  # the rest of the weight is on the single partner whose pixels were pasted
            partner = int(others.argmax())
            pasted = (mixed[i] == values[partner]).float().mean()
            assert others.sum().item() == pytest.approx(pasted.item(), abs=1e-6)


@pytest.mark.parametrize("name", ["flip", "random_crop", "mixup", "cutmix"])
def test_batch_randomness_comes_from_the_given_generator(name):
    """Same generator seed, same result, whatever the global RNG did in between.

    Trials in threads share the global RNG; a technique must draw from ``state.generator``.
    """
    images, targets, _ = _mix_inputs(n=16)
    byte_images = images.to(torch.uint8)
    call = {
        "flip": lambda g: (random_hflip(byte_images, 0.5, g),),
        "random_crop": lambda g: (random_translate(byte_images, 2, "constant", g),),
        "mixup": lambda g: mixup(images, targets, 0.4, g),
        "cutmix": lambda g: cutmix(images, targets, 0.4, g),
    }[name]
    torch.manual_seed(1)
    first = call(_gen(7))
    torch.manual_seed(2)
    second = call(_gen(7))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b), f"{name} ignores its generator (uses the global RNG)"


def test_warmup_then_rises_linearly_and_cosine_ends_near_zero():
    total, warmup = 100, 0.1
    factor = warmup_then("cosine", total, warmup)
    warm = [factor(s) for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)])
    steps = [factor(s) for s in range(10, total + 1)]
    assert steps[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in pairwise(steps)), "cosine must not increase"
    assert factor(total - 1) < 0.01
    assert factor(total) == pytest.approx(0.0, abs=1e-9)
    assert warmup_then("cosine", total, 0.0)(0) == pytest.approx(1.0)  # no warmup: full LR


@pytest.mark.parametrize(("schedule", "end"), [("constant", 1.0), ("exponential", 0.01),
                                               ("step", 0.01)])
def test_warmup_then_other_schedules_end_where_documented(schedule, end):
    factor = warmup_then(schedule, 40, 0.0)
    assert factor(0) == pytest.approx(1.0)
    assert factor(40) == pytest.approx(end)


def test_decay_groups_put_one_dimensional_params_in_a_zero_decay_group():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    groups = decay_groups(model, 0.05, exclude_norm_bias=True)
    by_decay = {g["weight_decay"]: g["params"] for g in groups}
    assert set(by_decay) == {0.05, 0.0}
    assert all(p.ndim > 1 for p in by_decay[0.05]) and len(by_decay[0.05]) == 2
    assert all(p.ndim == 1 for p in by_decay[0.0]) and len(by_decay[0.0]) == 4
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())

    (single,) = decay_groups(model, 0.05, exclude_norm_bias=False)
    assert single["weight_decay"] == 0.05
    assert len(single["params"]) == len(list(model.parameters()))


def test_weight_decay_groups_reach_the_optimizer(data):
    recipe = _recipe({"weight_decay": {"value": 0.01, "exclude_norm_bias": True}})
    state = prepare(recipe, data, training_manager(recipe), CPU)
    decays = sorted(g["weight_decay"] for g in state.optimizer.param_groups)
    assert decays == [0.0, 0.01]
    no_decay = next(g for g in state.optimizer.param_groups if g["weight_decay"] == 0.0)
    assert all(p.ndim == 1 for p in no_decay["params"])


# --- techniques observed through training ---------------------------------------------------


def test_ema_evaluates_an_averaged_copy(data):
    recipe = _recipe({"ema": {"decay": 0.99}})
    recorder = Recorder()
    pm = training_manager(recipe, extra_plugins=[recorder])
    state = train(recipe, data, pm, device=CPU, max_steps=2)
    ema = pm.hook.eval_model(state=state)
    assert ema is not state.model
    assert isinstance(ema, type(state.model))
    ema_params = dict(ema.named_parameters())
    assert any(not torch.equal(ema_params[k], v) for k, v in state.model.named_parameters())
    # it is an average of the trajectory, not the init: it moved away from the initial weights
    assert any(not torch.equal(ema_params[k], v) for k, v in recorder.initial.items())
    assert not any(p.requires_grad for p in ema.parameters())
    for (name, a), b in zip(ema.named_buffers(), state.model.buffers(), strict=True):
        assert torch.equal(a, b), f"buffer {name} not copied to the EMA model"


def test_ema_update_is_the_documented_average(data):
    """ema_k = d_k * ema_{k-1} + (1 - d_k) * model_k with d_k = min(decay, (1+k)/(10+k))."""

    class Snapshots:
        def __init__(self):
            self.models: list[dict[str, torch.Tensor]] = []

        @hookimpl(tryfirst=True)
        def after_step(self, state):
            self.models.append({k: v.detach().clone()
                                for k, v in state.model.named_parameters()})

    recipe = _recipe({"ema": {"decay": 0.9}})
    snaps, recorder = Snapshots(), Recorder()
    pm = training_manager(recipe, extra_plugins=[snaps, recorder])
    state = train(recipe, data, pm, device=CPU, max_steps=3)
    expected = dict(recorder.initial)
    for k, model in enumerate(snaps.models):
        d = min(0.9, (1 + k) / (10 + k))
        expected = {n: d * expected[n] + (1 - d) * model[n] for n in expected}
    ema = dict(state.extras["ema"].named_parameters())
    for n, value in expected.items():
        assert torch.allclose(ema[n], value, atol=1e-6), n


@pytest.mark.parametrize("scale", [0.75, 1.25])
def test_inference_resize_feeds_the_resized_images_to_the_eval_model(data, scale):
    recipe = _recipe({"inference_resize": {"scale": scale}})
    recorder = Recorder()
    pm = training_manager(recipe, extra_plugins=[recorder])
    state = prepare(recipe, data, pm, CPU)
    eval_shapes = []

    def record(module, args):
        if not module.training:
            eval_shapes.append(tuple(args[0].shape))

    pm.hook.eval_model(state=state).register_forward_pre_hook(record)
    fit(state, pm, max_steps=2)
    size = round(data.image_size * scale)
    assert size != data.image_size
    assert eval_shapes, "the eval model was never called"
    assert all(s[1:] == (data.in_chans, size, size) for s in eval_shapes)
    assert all(s[2:] == (data.image_size, data.image_size) for s in recorder.train_input_shapes)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_dropout_sets_the_classifier_dropout(data, rate):
    recipe = _recipe({"dropout": {"rate": rate}})
    state = prepare(recipe, data, training_manager(recipe), CPU)
    assert state.model.dropout.p == rate


def test_no_dropout_technique_means_no_dropout(data):
    recipe = _recipe({})
    state = prepare(recipe, data, training_manager(recipe), CPU)
    assert state.model.dropout.p == 0.0


def test_stochastic_depth_adds_drop_path_rising_to_the_rate(data):
    recipe = _recipe({"stochastic_depth": {"rate": 0.3}})
    state = prepare(recipe, data, training_manager(recipe), CPU)
    probs = [m.drop_prob for m in state.model.modules() if isinstance(m, DropPath)]
    assert probs, "no DropPath module in the model"
    assert max(probs) == pytest.approx(0.3)
    assert probs == sorted(probs)

    plain = _recipe({"stochastic_depth": {"rate": 0.0}})
    state = prepare(plain, data, training_manager(plain), CPU)
    assert not any(isinstance(m, DropPath) for m in state.model.modules())


@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_label_smoothing_sets_the_loss(data, smoothing):
    recipe = _recipe({"label_smoothing": {"smoothing": smoothing}})
    state = prepare(recipe, data, training_manager(recipe), CPU)
    assert state.loss_options == {"label_smoothing": smoothing}
    logits, labels = torch.randn(8, 10), torch.arange(8)
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing)
    assert torch.allclose(state.loss_fn(logits, labels), expected)


def test_grad_clip_bounds_the_gradient_norm(data):
    recipe = _recipe({"grad_clip": {"max_norm": 0.1}})
    recorder = Recorder()
    pm = training_manager(recipe, extra_plugins=[recorder])
    train(recipe, data, pm, device=CPU, max_steps=2)
    assert len(recorder.clipped_norms) == 2
    assert all(n <= 0.1 * (1 + 1e-4) for n in recorder.clipped_norms)


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mixing_techniques_train_on_soft_targets(data, mix):
    recipe = _recipe({mix: {"alpha": 1.0}})
    recorder = Recorder()

    class Targets:
        def __init__(self):
            self.seen: list[torch.Tensor] = []

        @hookimpl(trylast=True)
        def after_loss(self, state):
            self.seen.append(state.targets.clone())

    targets = Targets()
    pm = training_manager(recipe, extra_plugins=[recorder, targets])
    train(recipe, data, pm, device=CPU, max_steps=2)
    assert len(targets.seen) == 2
    for soft in targets.seen:
        assert soft.shape == (32, data.num_classes)
        assert torch.allclose(soft.sum(1), torch.ones(32))
        assert (soft.max(1).values < 1).any(), "no sample was mixed"


# --- technique classes: hooks and validation -------------------------------------------------


def test_misspelled_hook_is_rejected_naming_technique_and_hook():
    class Misspelled(Technique):
        """A technique with a typo in a hook name."""

        name = "typo_technique"

        @hookimpl
        def on_btach(self, state):
            pass

    with pytest.raises(UserError) as info:
        check_technique_hooks(Misspelled)
    message = str(info.value)
    assert "typo_technique" in message
    assert "on_btach" in message
    assert "on_batch" in message  # the valid hook names are listed
    assert "\n" not in message


def test_hook_with_an_unknown_argument_is_rejected_naming_the_argument():
    class ExtraArgument(Technique):
        """A technique whose hook asks for an argument the spec does not have."""

        name = "extra_argument"

        @hookimpl
        def on_batch(self, state, batch_index):
            pass

    with pytest.raises(UserError) as info:
        check_technique_hooks(ExtraArgument)
    message = str(info.value)
    assert "extra_argument" in message and "on_batch" in message
    assert "batch_index" in message, f"the message does not say what is wrong: {message!r}"


def test_correct_hooks_pass_the_check():
    class Fine(Technique):
        """A technique with a correct hook."""

        name = "fine_technique"

        @hookimpl
        def on_batch(self, state):
            pass

    check_technique_hooks(Fine)
    Fine.validate_class()


def _technique(name="my_technique", space=None, defaults=None, doc="Does something useful."):
    space = {"rate": FloatDistribution(0.0, 0.5)} if space is None else space
    defaults = {"rate": 0.1} if defaults is None else defaults
    return type("Custom", (Technique,), {"__doc__": doc, "name": name, "space": space,
                                         "defaults": defaults})


def test_validate_class_accepts_a_complete_technique():
    _technique().validate_class()
    _technique(space={"n": IntDistribution(1, 4),
                      "mode": CategoricalDistribution(["a", "b"])},
               defaults={"n": 2, "mode": "b"}).validate_class()


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"defaults": {}}, "no default for parameter 'rate'"),
    ({"defaults": {"rate": 0.9}}, "outside its space"),
    ({"space": {"mode": CategoricalDistribution(["a", "b"])}, "defaults": {"mode": "c"}},
     "outside its space"),
    ({"space": {"n": IntDistribution(1, 4)}, "defaults": {"n": 7}}, "outside its space"),
    ({"name": "MyTechnique"}, "snake_case"),
    ({"name": "2fast"}, "snake_case"),
    ({"name": ""}, "snake_case"),
    ({"doc": None}, "method card"),
    ({"doc": "   "}, "method card"),
    ({"defaults": {"rate": 0.1, "other": 1}}, "unknown parameters"),
    ({"space": {"rate": (0.0, 0.5)}}, "not an Optuna distribution"),
], ids=["missing-default", "default-above-range", "default-not-a-choice", "default-int-range",
        "camel-name", "digit-name", "empty-name", "no-docstring", "blank-docstring",
        "extra-default", "not-a-distribution"])
def test_validate_class_rejects(kwargs, needle):
    cls = _technique(**kwargs)
    with pytest.raises(TypeError, match=needle):
        cls.validate_class()
