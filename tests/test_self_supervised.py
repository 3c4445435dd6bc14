"""Self-supervised pretraining: the pretext tasks alone (rotation prediction, SimCLR's views and
NT-Xent loss), then the technique that runs one as a stage and starts the supervised model
from its backbone.

Real objects only: the embedded digits dataset and the small ``automl_resnet8`` network.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import timm
import torch
from automl.plugins.pretext import (
    backbone_features,
    backbone_weights,
    nt_xent,
    pretrain_rotation,
    pretrain_simclr,
    random_resized_crop,
    rotation_accuracy,
    rotations,
    simclr_view,
)
from automl.plugins.self_supervised_pretraining import (
    STAGE,
    SelfSupervisedPretraining,
    pretext_images,
    run_pretext,
)
from torch import nn

from automl.data import load_data
from automl.discovery import technique_catalog, training_manager
from automl.recipe import Recipe
from automl.stages import StageDirectory
from automl.trainer import prepare

CPU = torch.device("cpu")
DATA_CONFIG = {"dataset": "digits", "batch_size": 32}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(data) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("automl_resnet8", num_classes=data.num_classes,
                             in_chans=data.in_chans)


def _normalise(data):
    mean, std = data.mean[0] * 255, data.std[0] * 255
    return lambda images: (images.float() - mean) / std


# --- pure functions ---------------------------------------------------------------------------


def test_rotations_turn_each_image_by_its_own_quarter_turns():
    image = torch.arange(9, dtype=torch.uint8).view(1, 1, 3, 3)
    turned = rotations(image.repeat(4, 1, 1, 1), torch.tensor([0, 1, 2, 3]))
    for k in range(4):
        assert torch.equal(turned[k], torch.rot90(image[0], k, dims=(1, 2)))


def test_rotation_pretext_learns_above_chance_on_digits(data):
    model, head = _model(data), nn.Linear(64, 4)
    normalise = _normalise(data)
    held_out = data.val.images
    before = rotation_accuracy(model, head, held_out, normalise)
    pretrain_rotation(model, data.train.images, epochs=3, batch_size=64, lr=3e-3, device=CPU,
                      generator=_gen(), normalise=normalise, head=head)
    after = rotation_accuracy(model, head, held_out, normalise)
    assert before < 0.4  # four classes: an untrained head is near chance
    assert after > 0.6, f"rotation accuracy on held-out digits {after:.2f} (chance 0.25)"


def test_pretraining_returns_the_backbone_without_any_head(data):
    model = _model(data)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    weights = pretrain_rotation(model, data.train.images[:64], epochs=1, batch_size=32,
                                lr=1e-3, device=CPU, generator=_gen(),
                                normalise=_normalise(data))
    own = model.state_dict()
    assert set(weights) == {k for k in own if not k.startswith("head.")}  # no classifier
    assert set(weights) == set(backbone_weights(model))  # and no pretext head
    assert all(torch.equal(weights[k], own[k]) for k in weights)
    assert not torch.equal(weights["stem.0.weight"], initial["stem.0.weight"])  # it trained
    assert torch.equal(own["head.weight"], initial["head.weight"])  # the classifier did not


def test_nt_xent_equals_a_hand_computation():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    z2 = torch.tensor([[0.8, 0.6], [-1.0, 1.0], [3.0, -1.0]])
    t = 0.5
    z = [[x / math.hypot(*v) for x in v] for v in (z1.tolist() + z2.tolist())]
    n, losses = len(z1), []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        sims = {j: (z[i][0] * z[j][0] + z[i][1] * z[j][1]) / t for j in range(2 * n) if j != i}
        losses.append(-sims[partner] + math.log(sum(math.exp(s) for s in sims.values())))
    expected = sum(losses) / len(losses)
    assert nt_xent(z1, z2, t).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_is_low_when_views_agree_and_high_when_they_do_not():
    z = torch.eye(8)
    assert nt_xent(z, z, 0.1) < 0.01
    assert nt_xent(z, z.roll(1, 0), 0.1) > 5


def test_random_resized_crop_keeps_shape_and_draws_per_sample():
    images = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(16, 1, 1, 1)
    out = random_resized_crop(images, _gen())
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert len({tuple(o.flatten().tolist()) for o in out}) > 1  # one window per sample
    full = random_resized_crop(images, _gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(full, images)  # the whole image, resized to itself


def test_simclr_views_differ_between_calls_and_keep_the_layout(data):
    images = data.train.images[:32]
    g = _gen()
    a, b = simclr_view(images, g), simclr_view(images, g)
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert not torch.equal(a, b)


def test_simclr_pretext_lowers_its_loss_on_digits(data):
    model = _model(data)
    normalise = _normalise(data)
    head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    images = data.val.images[:128]

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            g = _gen(1)
            views = torch.cat([simclr_view(images, g), simclr_view(images, g)])
            z1, z2 = head(backbone_features(model, normalise(views))).chunk(2)
            return nt_xent(z1, z2, 0.5).item()

    before = loss()
    pretrain_simclr(model, data.train.images, epochs=2, batch_size=64, lr=3e-3,
                    temperature=0.5, device=CPU, generator=_gen(), normalise=normalise,
                    head=head)
    assert loss() < before - 0.3


# --- the technique: a stage, then the supervised model starts from it ---------------------------


def _recipe(**params) -> Recipe:
    return Recipe(model="automl_resnet8", data=dict(DATA_CONFIG), epochs=1,
                  techniques={"optimizer": {},
                              "self_supervised_pretraining": {"stage_epochs": 1, **params}})


def _prepared(recipe: Recipe, data, stage_dir):
    pm = training_manager(recipe, extra_plugins=[StageDirectory(stage_dir)])
    return prepare(recipe, data, pm, CPU)


def test_the_supervised_model_starts_from_the_backbone_with_a_fresh_classifier(data, tmp_path):
    recipe = _recipe(pretext="rotation")
    state = _prepared(recipe, data, tmp_path)
    technique = SelfSupervisedPretraining(**recipe.techniques["self_supervised_pretraining"])
    pretrained = technique.stage_artifact(state, STAGE)["state_dict"]
    model = state.model.state_dict()
    assert set(pretrained) == {k for k in model if not k.startswith("head.")}
    for name, tensor in pretrained.items():
        assert torch.equal(model[name], tensor), name
    scratch = _prepared(Recipe(model=recipe.model, data=recipe.data, epochs=1,
                               techniques={"optimizer": {}}), data, tmp_path).model.state_dict()
    assert torch.equal(model["head.weight"], scratch["head.weight"])  # the init, untouched
    assert torch.equal(model["head.bias"], scratch["head.bias"])
    assert not torch.equal(model["stem.0.weight"], scratch["stem.0.weight"])


def test_a_cached_stage_gives_the_same_start_and_random_state(data, tmp_path):
    """The trial that builds the stage and one that reads it go on identically."""
    recipe = _recipe(pretext="simclr")
    built = _prepared(recipe, data, tmp_path)
    after_build = torch.rand(3)
    cached = _prepared(recipe, data, tmp_path)
    after_cache = torch.rand(3)
    assert torch.equal(after_build, after_cache)
    for (name, a), b in zip(built.model.state_dict().items(),
                            cached.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert len(list(tmp_path.glob("self_supervised_pretraining.backbone-*"))) == 1


def test_the_stage_trains_on_training_and_unlabelled_images_never_val_or_test(tmp_path):
    data = load_data({**DATA_CONFIG, "labelled_fraction": 0.5})
    assert data.unlabelled is not None
    seen = []

    def recording(context):
        seen.append((context, pretext_images(context)))
        return run_pretext(context)

    class Recorded(SelfSupervisedPretraining):
        def stages(self, recipe):
            return [dataclasses.replace(s, run=recording) for s in super().stages(recipe)]

    recipe = _recipe()
    catalog = {**technique_catalog(), Recorded.name: Recorded}
    pm = training_manager(recipe, catalog, extra_plugins=[StageDirectory(tmp_path)])
    prepare(recipe, data, pm, CPU)

    (context, images), = seen
    assert len(context.data.val) == 0 and len(context.data.test) == 0
    assert torch.equal(images, torch.cat([data.train.images, data.unlabelled.images]))


def test_pretext_tasks_read_image_folders_too(tmp_path):
    """A folder too large for memory arrives as ImageFiles: decoded batch by batch."""
    from PIL import Image

    from automl.data import ImageFiles

    pixels = torch.randint(0, 256, (8, 8, 8, 3), dtype=torch.uint8, generator=_gen())
    paths = []
    for i, image in enumerate(pixels):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image.numpy()).save(paths[-1])
    files = ImageFiles(paths, size=8, workers=0)
    torch.manual_seed(0)
    model = timm.create_model("automl_resnet8", num_classes=3, in_chans=3)
    before = model.stem[0].weight.detach().clone()
    weights = pretrain_simclr(model, files, epochs=1, batch_size=4, lr=1e-3, temperature=0.5,
                              device=CPU, generator=_gen(),
                              normalise=lambda images: images.float() / 255)
    assert not torch.equal(weights["stem.0.weight"], before)
