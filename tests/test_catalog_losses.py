"""Normalisation and loss techniques: ghost BN, group/layer norm, focal, class weights, BCE,
triplet. Real models (automl_resnet8, timm's test networks) and the embedded digits data;
loss values are checked against hand-computed formulas on small tensors."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from automl.plugins.class_weights import class_frequency_weights
from automl.plugins.ghost_batch_norm_layer import (
    GhostBatchNorm2d,
    ghost_batch_norm,
    to_ghost_batch_norm,
)
from automl.plugins.norm_layer import divisor_at_most, group_norm_like, to_group_norm
from automl.plugins.triplet_loss import batch_hard_triplet
from timm.layers.norm_act import BatchNormAct2d, GroupNormAct
from torch import nn

from automl.data import Split
from automl.discovery import training_manager
from automl.hookspecs import hookimpl
from automl.losses import classification_loss
from automl.recipe import Recipe
from automl.trainer import prepare, train

CPU = torch.device("cpu")
DATA_CONFIG = {"dataset": "digits", "batch_size": 32}




def _recipe(techniques: dict, model: str = "automl_resnet8") -> Recipe:
    return Recipe(model=model, data=dict(DATA_CONFIG), epochs=1,
                  techniques={"optimizer": {}, **techniques})


def _prepare(data, techniques: dict, model: str = "automl_resnet8"):
    recipe = _recipe(techniques, model)
    pm = training_manager(recipe)
    return prepare(recipe, data, pm, CPU), pm


def _random_bn(channels: int = 4) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    return bn


def _shifted_batch(n: int, chunk: int, channels: int = 4) -> torch.Tensor:
    """Chunks of ``chunk`` samples with very different means, so per-chunk stats differ."""
    torch.manual_seed(0)
    x = torch.randn(n, channels, 5, 5)
    offsets = (torch.arange(n) // chunk).float() * 3.0
    return x + offsets.view(-1, 1, 1, 1)


# --- ghost batch norm -------------------------------------------------------------------------


def test_ghost_batch_norm_with_one_chunk_is_batch_norm():
    bn = _random_bn()
    x = _shifted_batch(16, 8)
    out, mean, var = ghost_batch_norm(x, 16, bn.weight, bn.bias, bn.eps)
    assert torch.allclose(out, bn(x), atol=1e-5)  # bn in training mode: batch statistics
    assert torch.allclose(mean, x.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(var, x.var(dim=(0, 2, 3), unbiased=True), atol=1e-4)

    ghost = GhostBatchNorm2d.from_batch_norm(_random_bn(), 16)
    reference = copy.deepcopy(ghost)
    assert torch.allclose(ghost(x), nn.BatchNorm2d.forward(reference, x), atol=1e-5)
    assert torch.allclose(ghost.running_mean, reference.running_mean)
    assert torch.allclose(ghost.running_var, reference.running_var)


@pytest.mark.parametrize("n", [24, 20], ids=["divisible", "ragged"])
def test_ghost_batch_norm_normalises_each_chunk_by_its_own_statistics(n):
    bn = _random_bn()
    ghost = GhostBatchNorm2d.from_batch_norm(bn, 8)
    x = _shifted_batch(n, 8)
    out = ghost(x)
    for start in range(0, n, 8):
        chunk = x[start:start + 8]
        expected = F.batch_norm(chunk, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        assert torch.allclose(out[start:start + 8], expected, atol=1e-5)
    assert not torch.allclose(out, bn(x), atol=1e-2), "ghost output equals full-batch BN"


def test_ghost_batch_norm_updates_running_stats_from_chunk_statistics():
    ghost = GhostBatchNorm2d.from_batch_norm(_random_bn(), 8)
    x = _shifted_batch(24, 8)
    ghost(x)
    chunks = x.view(3, 8, 4, 5, 5)
    chunk_mean = chunks.mean(dim=(1, 3, 4)).mean(0)
    chunk_var = chunks.var(dim=(1, 3, 4), unbiased=True).mean(0)
    assert int(ghost.num_batches_tracked) == 1
    assert torch.allclose(ghost.running_mean, 0.1 * chunk_mean, atol=1e-5)
    assert torch.allclose(ghost.running_var, 0.9 + 0.1 * chunk_var, atol=1e-4)
    # the chunk variance is smaller than the batch's (chunk means differ): not BN's update
    assert (chunk_var < x.var(dim=(0, 2, 3)) - 1).all()

    ghost.eval()
    expected = F.batch_norm(x, ghost.running_mean, ghost.running_var, ghost.weight, ghost.bias,
                            False, 0.0, ghost.eps)
    assert torch.allclose(ghost(x), expected, atol=1e-5)


def test_ghost_batch_norm_technique_keeps_the_state_dict(data):
    state, _ = _prepare(data, {"ghost_batch_norm": {"virtual_batch": 8}})
    plain, _ = _prepare(data, {})
    ghosts = [m for m in state.model.modules() if isinstance(m, GhostBatchNorm2d)]
    bns = [m for m in plain.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(ghosts) == len(bns) > 0
    assert all(g.virtual_batch == 8 for g in ghosts)
    assert list(state.model.state_dict()) == list(plain.model.state_dict())
    state.model.load_state_dict(plain.model.state_dict())  # strict: loads like BN
    plain.model.load_state_dict(state.model.state_dict())


def test_ghost_batch_norm_keeps_timm_activations():
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=10, in_chans=1).eval()
    original = copy.deepcopy(model)
    acts = [type(m.act) for m in model.modules() if isinstance(m, BatchNormAct2d)]
    assert to_ghost_batch_norm(model, 8) == len(acts)
    assert [type(m.act) for m in model.modules() if isinstance(m, GhostBatchNorm2d)] == acts
    assert nn.SiLU in acts and nn.Identity in acts
    x = torch.randn(4, 1, 16, 16)
    assert torch.allclose(model(x), original(x), atol=1e-5)  # eval: running stats, same acts


@pytest.mark.parametrize("name", ["ghost_batch_norm", "norm_layer"])
def test_normalisation_swap_rejects_a_model_without_batch_norm(data, name):
    with pytest.raises(ValueError, match=f"{name}: model test_nfnet has no BatchNorm2d"):
        _prepare(data, {name: {}}, model="test_nfnet")


# --- group / layer norm ---------------------------------------------------------------------


def test_divisor_at_most_clamps_groups_to_a_divisor():
    assert divisor_at_most(64, 16) == 16
    assert divisor_at_most(12, 8) == 6
    assert divisor_at_most(10, 4) == 2
    assert divisor_at_most(3, 8) == 3


@pytest.mark.parametrize(("kind", "groups"), [("group", 16), ("layer", 1)])
def test_norm_layer_replaces_every_batch_norm(data, kind, groups):
    state, _ = _prepare(data, {"norm_layer": {"kind": kind, "groups": 16}})
    plain, _ = _prepare(data, {})
    norms = [m for m in state.model.modules() if isinstance(m, nn.GroupNorm)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in state.model.modules())
    assert len(norms) == sum(isinstance(m, nn.BatchNorm2d) for m in plain.model.modules())
    assert {m.num_groups for m in norms} == {groups}
    assert {type(m) for m in norms} == {nn.GroupNorm}


def test_group_norm_copies_the_affine_parameters_and_layer_norm_spans_c_h_w():
    bn = _random_bn(12)
    norm = group_norm_like(bn, 8)
    assert norm.num_groups == 6
    assert torch.equal(norm.weight, bn.weight) and torch.equal(norm.bias, bn.bias)
    layer = group_norm_like(_random_bn(12), 1)
    x = torch.randn(3, 12, 4, 4) * 5 + 2
    expected = F.layer_norm(x, x.shape[1:]) * layer.weight.view(-1, 1, 1) + \
        layer.bias.view(-1, 1, 1)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_norm_layer_keeps_timm_activations_and_replaces_ghost_batch_norm():
    model = timm.create_model("test_efficientnet", num_classes=10, in_chans=1)
    acts = [m.act for m in model.modules() if isinstance(m, BatchNormAct2d)]
    to_ghost_batch_norm(model, 8)  # ghost first, as the two techniques order themselves
    norm_model = copy.deepcopy(model)
    assert to_group_norm(norm_model, 4) == len(acts)
    norms = [m for m in norm_model.modules() if isinstance(m, nn.GroupNorm)]
    assert all(isinstance(m, GroupNormAct) for m in norms)
    assert [type(m.act) for m in norms] == [type(a) for a in acts]
    assert norm_model(torch.randn(4, 1, 16, 16)).shape == (4, 10)


def test_ghost_and_norm_layer_together_end_with_group_norm(data):
    state, _ = _prepare(data, {"ghost_batch_norm": {}, "norm_layer": {"kind": "group"}})
    assert not any(isinstance(m, nn.BatchNorm2d) for m in state.model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in state.model.modules())


# --- loss options reach the composed loss -----------------------------------------------------

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.3, -0.7]])
LABELS = torch.tensor([0, 2])
SOFT = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])


def _softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _hand_loss(targets, term):
    """Mean over rows of Σ_c term(target, prob_softmax, logit, class)."""
    rows = []
    for logit_row, target_row in zip(LOGITS.tolist(), targets.tolist(), strict=True):
        probs = _softmax(logit_row)
        rows.append(sum(term(t, p, z, c) for c, (t, p, z) in
                        enumerate(zip(target_row, probs, logit_row, strict=True))))
    return sum(rows) / len(rows)


def _one_hot(labels):
    return F.one_hot(labels, 3).float()


def _sig(z):
    return 1 / (1 + math.exp(-z))


@pytest.fixture(scope="module")
def three(data):
    """The digits bundle cut to classes 0-2 (the loss tests use 3-class logits)."""
    keep = data.train.labels < 3
    train = Split(data.train.images[keep].contiguous(), data.train.labels[keep].contiguous())
    return dataclasses.replace(data, train=train, num_classes=3, class_names=["0", "1", "2"])


def test_focal_loss_matches_the_formula(three):
    state, _ = _prepare(three, {"focal_loss": {"gamma": 2.0}})
    assert state.loss_options == {"focal_gamma": 2.0}

    def focal(t, p, z, c):
        return -t * (1 - p) ** 2 * math.log(p)

    for targets in (LABELS, SOFT):
        hand = _hand_loss(_one_hot(targets) if targets.dim() == 1 else targets, focal)
        assert state.loss_fn(LOGITS, targets).item() == pytest.approx(hand, rel=1e-5)
    plain = F.cross_entropy(LOGITS, LABELS).item()
    assert state.loss_fn(LOGITS, LABELS).item() < plain  # easy examples down-weighted


def test_class_weights_scale_each_class_term(three):
    state, _ = _prepare(three, {"class_weights": {"power": 1.0}})
    weights = state.loss_options["class_weights"]
    expected = class_frequency_weights(three.train.labels, 3, 1.0)
    assert torch.equal(weights, expected) and weights.device == state.device
    w = weights.tolist()

    def weighted(t, p, z, c):
        return -t * w[c] * math.log(p)

    for targets in (LABELS, SOFT):
        hand = _hand_loss(_one_hot(targets) if targets.dim() == 1 else targets, weighted)
        assert state.loss_fn(LOGITS, targets).item() == pytest.approx(hand, rel=1e-5)


def test_binary_cross_entropy_is_one_sigmoid_per_class(three):
    state, _ = _prepare(three, {"binary_cross_entropy": {}})
    assert state.loss_options == {"binary": True}

    def bce(t, p, z, c):
        return -(t * math.log(_sig(z)) + (1 - t) * math.log(1 - _sig(z)))

    for targets in (LABELS, SOFT):
        hand = _hand_loss(_one_hot(targets) if targets.dim() == 1 else targets, bce)
        assert state.loss_fn(LOGITS, targets).item() == pytest.approx(hand, rel=1e-5)


def test_binary_focal_with_class_weights_combine(three):
    state, _ = _prepare(three, {"binary_cross_entropy": {}, "focal_loss": {"gamma": 1.5},
                                "class_weights": {"power": 0.5}})
    w = state.loss_options["class_weights"].tolist()

    def sigmoid_focal(t, p, z, c):
        s = _sig(z)
        p_target = s * t + (1 - s) * (1 - t)
        bce = -(t * math.log(s) + (1 - t) * math.log(1 - s))
        return w[c] * (1 - p_target) ** 1.5 * bce

    hand = _hand_loss(SOFT, sigmoid_focal)
    assert state.loss_fn(LOGITS, SOFT).item() == pytest.approx(hand, rel=1e-5)


def test_class_frequency_weights_formula():
    labels = torch.tensor([0, 0, 0, 1])  # class 2 has no sample
    inverse = class_frequency_weights(labels, 3, 1.0)
    assert inverse.tolist() == pytest.approx([2 / 3, 2.0, 2.0])
    root = class_frequency_weights(labels, 3, 0.5)
    scale = 0.75 / math.sqrt(3) + 0.25 / 1.0
    assert root.tolist() == pytest.approx([1 / math.sqrt(3) / scale, 1 / scale, 1 / scale])
    for weights in (inverse, root):  # mean weight over the training samples is 1
        assert weights[labels].mean().item() == pytest.approx(1.0)
    assert class_frequency_weights(torch.tensor([0, 1, 2, 1, 0, 2]), 3, 0.7).tolist() == \
        pytest.approx([1.0, 1.0, 1.0])


# --- triplet loss -----------------------------------------------------------------------------


def test_batch_hard_triplet_on_a_hand_built_example():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])  # the last point has no positive: skipped
    margin = 1.5
    # anchors 0, 1: positive at 1, nearest negative at 2 -> 0.5 each
    # anchors 2, 3: positive at sqrt(13), nearest negative at 2 -> sqrt(13) - 0.5 each
    expected = (0.5 + 0.5 + 2 * (math.sqrt(13) - 0.5)) / 4
    assert batch_hard_triplet(points, labels, margin).item() == pytest.approx(expected)
    assert batch_hard_triplet(points, labels, 0.5).item() == pytest.approx(
        2 * (math.sqrt(13) - 1.5) / 4)


def test_batch_hard_triplet_is_zero_with_a_graph_when_no_anchor_is_valid():
    points = torch.randn(4, 3, requires_grad=True)
    loss = batch_hard_triplet(points, torch.zeros(4, dtype=torch.long), 0.2)  # no negatives
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(points.grad, torch.zeros(4, 3))


def _embedding(model, images):
    return model.forward_head(model.forward_features(images), pre_logits=True)


def test_triplet_loss_adds_its_term_to_the_training_loss(data):
    state, pm = _prepare(data, {"triplet_loss": {"margin": 0.3, "weight": 0.5}})
    images = (data.train.images[:32].float() - 128) / 64
    labels = data.train.labels[:32]
    state.model.train()
    logits = state.model(images)
    base = state.loss_fn(logits, labels)
    for targets in (labels, F.one_hot(labels, 10).float() * 0.8 + 0.02):  # hard and soft
        state.features = _embedding(state.model, images)  # what the step gives after_loss
        state.targets, state.loss = targets, base
        pm.hook.after_loss(state=state)
        expected = 0.5 * batch_hard_triplet(F.normalize(_embedding(state.model, images)),
                                            labels, 0.3)
        assert expected.item() > 0
        assert torch.allclose(state.loss - base, expected, atol=1e-5)

    state.model.zero_grad()
    (state.loss - base).backward()  # the extra term alone reaches the backbone
    stem = state.model.stem[0].weight.grad
    assert stem is not None and stem.abs().sum() > 0


def test_triplet_loss_trains_and_rejects_a_model_without_classifier(data):
    recipe = _recipe({"triplet_loss": {}})
    state = train(recipe, data, training_manager(recipe), device=CPU, max_steps=2)
    assert state.step == 2 and math.isfinite(state.history[0]["train/loss"])

    class NoClassifier:
        @hookimpl
        def build_model(self, state, kwargs):
            return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))

    pm = training_manager(recipe, extra_plugins=[NoClassifier()])
    with pytest.raises(ValueError, match="triplet_loss: model automl_resnet8 has no classifier"):
        prepare(recipe, data, pm, CPU)


@pytest.mark.parametrize("binary", [False, True])
def test_focal_loss_below_gamma_one_has_finite_gradients_for_confident_samples(binary):
    """(1 - p)^γ has an infinite slope at p = 1 when γ < 1; the loss must not turn it into NaN."""
    logits = torch.tensor([[30.0, 0.0, -5.0], [1.0, 2.0, 0.0]], requires_grad=True)
    loss = classification_loss(logits, torch.tensor([0, 1]), focal_gamma=0.5, binary=binary)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all(), logits.grad
