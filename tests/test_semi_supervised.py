"""Semi-supervised data and the techniques that use it.

``data.labelled_fraction`` (or a folder's ``unlabelled/``) leaves training images without
labels in ``DataBundle.unlabelled``; ``pseudo_labels`` (FixMatch) and ``label_propagation``
(Iscen et al.) train on them. Real data (digits, tiny PNG folders), real models.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from automl.plugins import label_propagation
from automl.plugins.label_propagation import (
    class_balance,
    diffuse,
    knn_graph,
    propagate,
    pseudo_labels,
)
from automl.plugins.pseudo_labels import confident, masked_cross_entropy
from PIL import Image

from automl import data as data_module
from automl.data import ImageFiles, load_data
from automl.discovery import technique_catalog, training_manager
from automl.errors import UserError
from automl.hookspecs import hookimpl
from automl.recipe import Recipe
from automl.space import load_space
from automl.trainer import prepare, train

CPU = torch.device("cpu")
DIGITS = {"dataset": "digits", "batch_size": 32}
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist_labelled_subset(labelled: int = 500, pool: int = 5000,
                                  validation: int = 5000, **data) -> dict:
    """The ``data:`` settings of a Fashion-MNIST benchmark with ``labelled`` labelled images
    out of a ``pool`` of training images (the rest unlabelled), each cut seeded and
    stratified: ``val_fraction`` cuts ``validation`` images from the 60,000, ``train_fraction``
    keeps ``pool`` of the others, ``labelled_fraction`` the labels of ``labelled`` of those.
    Exact for multiples of the 10 classes (the classes are balanced)."""
    full, classes = 60000, 10
    assert pool % classes == 0 and labelled % classes == 0 and validation % classes == 0
    return {"dataset": "fashion_mnist", "val_fraction": validation / full,
            "train_fraction": pool / (full - validation), "labelled_fraction": labelled / pool,
            **data}


@pytest.fixture(autouse=True)
def _fresh_cache():
    data_module.clear_cache()
    yield
    data_module.clear_cache()


def _png(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), color).save(path)


# --- data.labelled_fraction -------------------------------------------------------------------


def test_labelled_fraction_cuts_each_class_of_the_training_split():
    full = load_data(DIGITS)
    part = load_data({**DIGITS, "labelled_fraction": 0.25})
    assert full.unlabelled is None  # 1, the default: nothing changes
    assert len(part.train) + len(part.unlabelled) == len(full.train)
    for c in range(full.num_classes):
        n = int((full.train.labels == c).sum())
        kept = int((part.train.labels == c).sum())
        assert n - kept == min(max(int(n * 0.75 + 0.5), 1), n - 1)  # the cut, rounded per class
    # the same images, split in two: every training image is in exactly one of them
    joined = torch.cat([part.train.images, part.unlabelled.images]).flatten(1)
    assert sorted(map(tuple, joined.tolist())) == sorted(map(tuple,
                                                             full.train.images.flatten(1).tolist()))
    assert torch.equal(part.val.images, full.val.images)
    assert torch.equal(part.test.images, full.test.images)


def test_unlabelled_images_carry_no_label():
    part = load_data({**DIGITS, "labelled_fraction": 0.1})
    assert part.unlabelled.labels.dtype == torch.int64
    assert (part.unlabelled.labels == -1).all()
    with pytest.raises((IndexError, RuntimeError)):  # a loss on them fails loudly
        torch.nn.functional.cross_entropy(torch.zeros(len(part.unlabelled), 10),
                                          part.unlabelled.labels)


def test_labelled_fraction_is_seeded_and_cached_by_its_value():
    first = load_data({**DIGITS, "labelled_fraction": 0.3})
    assert load_data({**DIGITS, "labelled_fraction": 0.3}) is first
    again = (data_module.clear_cache(), load_data({**DIGITS, "labelled_fraction": 0.3}))[1]
    assert torch.equal(first.train.images, again.train.images)
    other_seed = load_data({**DIGITS, "labelled_fraction": 0.3, "split_seed": 1})
    assert not torch.equal(first.train.images, other_seed.train.images)
    other = load_data({**DIGITS, "labelled_fraction": 0.5})
    assert len(other.train) > len(first.train) and other is not first


def test_normalisation_statistics_count_every_training_image():
    full = load_data(DIGITS)
    part = load_data({**DIGITS, "labelled_fraction": 0.2})
    assert part.mean == pytest.approx(full.mean) and part.std == pytest.approx(full.std)


@pytest.mark.parametrize("value", [0, 1.5, -0.1, "half", True])
def test_a_bad_labelled_fraction_is_one_line_naming_the_key(value):
    with pytest.raises(UserError) as info:
        load_data({**DIGITS, "labelled_fraction": value})
    assert str(info.value) == f"data.labelled_fraction: expected a number in (0, 1], got {value!r}"


# --- a folder with unlabelled/ ------------------------------------------------------------------


def test_a_folder_with_an_unlabelled_folder_has_an_unlabelled_split(tmp_path):
    for i in range(4):
        _png(tmp_path / "cat" / f"{i}.png", (255, 0, 0))
        _png(tmp_path / "dog" / f"{i}.png", (0, 0, 255))
    for i in range(3):
        _png(tmp_path / "unlabelled" / f"{i}.png", (0, 255, 0))
    _png(tmp_path / "unlabelled" / "more" / "x.png", (0, 255, 0))  # subfolders count too
    bundle = load_data({"dataset": "folder", "path": str(tmp_path), "image_size": 6})
    assert bundle.class_names == ["cat", "dog"]  # unlabelled/ is not a class
    assert len(bundle.unlabelled) == 4 and (bundle.unlabelled.labels == -1).all()
    assert (bundle.unlabelled.images[:, 1] == 255).all()  # the green images, and only they
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 8
    both = load_data({"dataset": "folder", "path": str(tmp_path), "image_size": 6,
                      "labelled_fraction": 0.5, "val_fraction": 0.2})
    assert len(both.unlabelled) == 4 + (len(bundle.train) - len(both.train))


def test_a_train_test_folder_takes_unlabelled_beside_them_not_inside_train(tmp_path):
    for split in ("train", "test"):
        for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(3):
                _png(tmp_path / split / cls / f"{i}.png", color)
    _png(tmp_path / "unlabelled" / "0.png", (9, 9, 9))
    bundle = load_data({"dataset": "folder", "path": str(tmp_path), "image_size": 6})
    assert len(bundle.unlabelled) == 1 and len(bundle.test) == 6
    _png(tmp_path / "train" / "unlabelled" / "0.png", (9, 9, 9))
    data_module.clear_cache()
    with pytest.raises(UserError, match=r"train/unlabelled would be a class"):
        load_data({"dataset": "folder", "path": str(tmp_path), "image_size": 6})


@pytest.mark.parametrize("technique", ["pseudo_labels", "label_propagation"])
def test_unlabelled_images_read_from_disk_train_too(tmp_path, technique):
    """A folder too large for memory (``in_memory: false``): the unlabelled images are
    decoded per batch like the labelled ones."""
    for i in range(12):
        _png(tmp_path / "cat" / f"{i}.png", (200, 10, 10))
        _png(tmp_path / "dog" / f"{i}.png", (10, 10, 200))
        _png(tmp_path / "unlabelled" / f"{i}.png", (100, 10, 100))
    cfg = {"dataset": "folder", "path": str(tmp_path), "image_size": 8, "in_memory": False,
           "workers": 0, "batch_size": 4, "labelled_fraction": 0.5}
    data = load_data(cfg)
    # per class: 12 images, 2 to test, 1 to validation, 5 of the other 9 unlabelled
    assert isinstance(data.unlabelled.images, ImageFiles)
    assert (len(data.train), len(data.unlabelled)) == (8, 12 + 10)
    params = {"warmup_epochs": 0, "k": 5} if technique == "label_propagation" else {}
    recipe = Recipe(model="automl_resnet8", data=cfg, epochs=1,
                    techniques={"optimizer": {}, technique: params})
    state = train(recipe, data, training_manager(recipe), device=CPU, max_steps=2)
    assert state.step == 2 and math.isfinite(state.history[0]["train/loss"])


def test_an_empty_unlabelled_folder_is_refused(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", (0, 0, 0))
    (tmp_path / "unlabelled").mkdir()
    with pytest.raises(UserError, match=r"no images .* in .*unlabelled"):
        load_data({"dataset": "folder", "path": str(tmp_path)})


# --- the space refuses a technique without unlabelled images ------------------------------------


@pytest.mark.parametrize("name", ["pseudo_labels", "label_propagation"])
def test_a_space_without_unlabelled_images_refuses_the_technique(tmp_path, name):
    space = tmp_path / "space.yaml"
    space.write_text(f"data: {{dataset: digits}}\ntechniques:\n  {name}: {{}}\n")
    with pytest.raises(UserError) as info:
        load_space(space, technique_catalog())
    assert f"techniques.{name}: {name} needs unlabelled training images" in str(info.value)
    assert "data.labelled_fraction" in str(info.value)
    space.write_text(f"data: {{dataset: digits, labelled_fraction: 0.1}}\n"
                     f"techniques:\n  {name}: {{}}\n")
    assert name in load_space(space, technique_catalog()).techniques
    space.write_text(f"data: {{dataset: digits}}\ntechniques:\n  {name}: {{enabled: false}}\n")
    load_space(space, technique_catalog())  # off: nothing to refuse


def test_a_recipe_built_in_code_without_unlabelled_images_fails_naming_the_technique():
    recipe = Recipe(model="automl_resnet8", data=dict(DIGITS), epochs=1,
                    techniques={"optimizer": {}, "pseudo_labels": {}})
    with pytest.raises(UserError, match=r"pseudo_labels: the data has no unlabelled"):
        prepare(recipe, load_data(DIGITS), training_manager(recipe), CPU)


# --- pseudo_labels ----------------------------------------------------------------------------


def test_confident_keeps_exactly_the_predictions_at_or_above_the_threshold():
    logits = torch.tensor([[4.0, 0.0, 0.0],    # p = e^4 / (e^4 + 2) = 0.9647
                           [0.0, 2.0, 0.0],    # 0.7870
                           [1.0, 1.0, 9.0],    # 0.9993
                           [0.0, 0.0, 0.0],    # 1/3
                           [math.log(18), 0.0, math.log(2)]])  # 18 / 21 = 0.857
    probabilities = logits.softmax(1)
    labels, mask = confident(logits, 0.85)
    assert labels.tolist() == [0, 1, 2, 0, 0]
    assert mask.tolist() == [p >= 0.85 for p in probabilities.max(1).values.tolist()]
    assert mask.tolist() == [True, False, True, False, True]
    assert confident(logits, 0.97)[1].tolist() == [False, False, True, False, False]


def test_the_unlabelled_loss_counts_the_kept_ones_over_all_drawn():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 3.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 1])
    mask = torch.tensor([True, False, True, False])
    by_hand = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 4
    assert masked_cross_entropy(logits, labels, mask).item() == pytest.approx(by_hand)
    assert masked_cross_entropy(logits, labels, torch.zeros(4, dtype=torch.bool)).item() == 0


def test_pseudo_labels_change_training_only_through_the_kept_ones():
    """Every prediction kept (threshold 0) adds a term to the loss; none kept (threshold 1:
    a probability is below 1 here) leaves the training exactly as without the technique,
    batch norm's running statistics included: its extra forwards do not move them."""
    cfg = {**DIGITS, "labelled_fraction": 0.5}
    data = load_data(cfg)
    states = {}
    for name, techniques in (("alone", {}), ("none kept", {"pseudo_labels": {"threshold": 1.0}}),
                             ("all kept", {"pseudo_labels": {"threshold": 0.0}})):
        recipe = Recipe(model="automl_resnet8", data=cfg, epochs=1,
                        techniques={"optimizer": {}, **techniques})
        states[name] = train(recipe, data, training_manager(recipe), device=CPU, max_steps=2)
    loss = {name: state.history[0]["train/loss"] for name, state in states.items()}
    assert loss["none kept"] == loss["alone"] and loss["all kept"] > loss["alone"]
    alone, none_kept = (states[n].model.state_dict() for n in ("alone", "none kept"))
    assert any("running_mean" in key for key in alone)
    for key, value in alone.items():
        assert torch.equal(none_kept[key], value), key


# --- label_propagation -------------------------------------------------------------------------


def _two_clusters(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points around two far-apart directions, half of each cluster first."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    labels = torch.arange(n) % 2
    return centres[labels] + 0.15 * torch.randn(n, 4, generator=gen), labels


def test_label_propagation_labels_two_clear_clusters():
    features, truth = _two_clusters()
    labelled = torch.tensor([0, 1])  # one labelled point per cluster
    rest = torch.arange(2, len(truth))
    pseudo, weights = propagate(features[labelled], truth[labelled], features[rest], k=5,
                                num_classes=2)
    assert torch.equal(pseudo, truth[rest])
    assert (weights > 0).all() and (weights <= 2).all()


def test_knn_graph_excludes_each_point_itself_and_powers_the_similarity():
    features, _ = _two_clusters(n=10)
    neighbours, weights = knn_graph(features, k=3)
    assert neighbours.shape == weights.shape == (10, 3)
    assert not (neighbours == torch.arange(10)[:, None]).any()
    v = torch.nn.functional.normalize(features, dim=1)
    expected = (v[:, None, :] * v[neighbours]).sum(-1).clamp_min(0) ** 3
    assert torch.allclose(weights, expected, atol=1e-6)


@pytest.mark.parametrize("chunk_entries", [None, 7], ids=["one-chunk", "many-chunks"])
def test_diffusion_solves_the_linear_system(monkeypatch, chunk_entries):
    """Conjugate gradient's Z against (I - αW_n)⁻¹ Y computed densely; the same when the
    k-NN search and the graph products run in chunks of a few rows."""
    if chunk_entries is not None:
        monkeypatch.setattr(label_propagation, "KNN_CHUNK_ENTRIES", chunk_entries)
    features, truth = _two_clusters(n=12)
    neighbours, weights = knn_graph(features, k=3)
    dense = torch.zeros(12, 12)
    dense[torch.arange(12)[:, None].expand(-1, 3), neighbours] = weights
    w = dense + dense.T
    d = w.sum(1).rsqrt()
    seeds = torch.nn.functional.one_hot(truth, 2).float() * (torch.arange(12) < 4)[:, None]
    exact = torch.linalg.solve(torch.eye(12) - 0.99 * d[:, None] * w * d[None, :], seeds)
    z = diffuse(neighbours, weights, seeds, iterations=40)
    assert torch.allclose(z, exact, rtol=1e-3, atol=1e-3)


def test_certainty_and_class_balance_weights():
    labels, certainty = pseudo_labels(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0],
                                                    [3.0, 1.0]]))
    assert labels.tolist()[0] == 0 and labels.tolist()[3] == 0
    assert certainty[0].item() == pytest.approx(1.0) and certainty[1].item() == 0
    assert certainty[2].item() == 0  # no score at all: no weight
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert certainty[3].item() == pytest.approx(1 - h)
    zeta = class_balance(torch.tensor([0, 0, 1]), torch.tensor([0]), 2)  # 3 of 0, 1 of 1
    assert zeta.tolist() == pytest.approx([2 / 3, 2.0])


def test_label_propagation_gives_every_unlabelled_image_a_label_each_epoch():
    cfg = {**DIGITS, "labelled_fraction": 0.3}
    data = load_data(cfg)
    recipe = Recipe(model="automl_resnet8", data=cfg, epochs=1,
                    techniques={"optimizer": {}, "label_propagation": {"warmup_epochs": 0}})
    pm = training_manager(recipe)
    state = train(recipe, data, pm, device=CPU, max_steps=2)
    technique = pm.get_plugin("label_propagation")
    assert technique._labels.shape == (len(data.unlabelled),)
    assert ((technique._labels >= 0) & (technique._labels < 10)).all()
    assert (technique._weights >= 0).all() and technique._weights.max() > 0
    assert math.isfinite(state.history[0]["train/loss"])


# --- the benchmark's data ------------------------------------------------------------------------


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST is not installed")
@pytest.mark.parametrize(("settings", "validation"), [
    (fashion_mnist_labelled_subset(batch_size=64), 5000),
    # bench/stages.py's: the default validation cut (6,000), 5,000 of the other 54,000
    ({"dataset": "fashion_mnist", "val_fraction": 0.1, "train_fraction": 5000 / 54000,
      "labelled_fraction": 0.1}, 6000),
], ids=["helper", "bench-stages"])
def test_fashion_mnist_with_500_of_5000_images_labelled(settings, validation):
    bundle = load_data(settings)
    assert len(bundle.train) == 500 and len(bundle.unlabelled) == 4500
    assert torch.bincount(bundle.train.labels).tolist() == [50] * 10
    assert len(bundle.val) == validation and len(bundle.test) == 10000


# --- with the other techniques -----------------------------------------------------------------


class ClosureCheck:
    """After the first backward of each step, re-runs the step through ``state.closure`` and
    records the loss the pass computed and the one the closure recomputed."""

    def __init__(self):
        self.pairs: list[tuple[float, float]] = []

    @hookimpl
    def after_backward(self, state):
        self.pairs.append((state.loss.item(), state.closure().item()))


@pytest.mark.parametrize("technique", [{"pseudo_labels": {"threshold": 0.0}},
                                       {"label_propagation": {"warmup_epochs": 0}}],
                         ids=["pseudo_labels", "label_propagation"])
def test_the_step_closure_recomputes_the_same_unlabelled_term(technique):
    """Same weights, same micro-batch: the recomputed loss, unlabelled term included, is the
    one the step computed (a fresh unlabelled draw would give another)."""
    cfg = {**DIGITS, "labelled_fraction": 0.5}
    recipe = Recipe(model="automl_resnet8", data=cfg, epochs=1,
                    techniques={"optimizer": {}, **technique})
    check = ClosureCheck()
    train(recipe, load_data(cfg), training_manager(recipe, extra_plugins=[check]), device=CPU,
          max_steps=2)
    assert len(check.pairs) == 2
    for computed, recomputed in check.pairs:
        assert recomputed == pytest.approx(computed, rel=1e-5)


def test_both_techniques_train_with_the_batch_techniques_and_accumulation():
    cfg = {**DIGITS, "labelled_fraction": 0.3}
    techniques = {"optimizer": {}, "pseudo_labels": {"threshold": 0.8, "mu": 2},
                  "label_propagation": {"warmup_epochs": 0, "k": 5}, "mixup": {},
                  "cutmix": {}, "augment_policy": {}, "random_erasing": {}, "ema": {},
                  "label_smoothing": {}, "grad_accumulation": {"steps": 2},
                  "progressive_resizing": {}}
    recipe = Recipe(model="automl_resnet8", data=cfg, epochs=1, techniques=techniques)
    state = train(recipe, load_data(cfg), training_manager(recipe), device=CPU, max_steps=2)
    assert state.step == 2 and math.isfinite(state.history[0]["train/loss"])
