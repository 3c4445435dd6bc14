"""automl.augment: batched auto-augment ops and policies, checked against torchvision.

Each op runs on a batch of real digits (grey, and RGB made of three digits per image), every
sample with its own magnitude and sign, and is compared with torchvision's functional op on
each image. The policies are checked against every outcome torchvision's policy could give.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from automl import augment
from automl.augment import OP_NAMES, apply_op, apply_ops

SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
          "Contrast", "Sharpness"}
GEOMETRIC = ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"]

#: Per-sample magnitudes of each kind of op (eight samples), as torchvision's bins reach them.
MAGNITUDES = {
    "TranslateX": [0.0, 1.0, 3.7, 5.0, 7.9, 15.0, 2.0, 0.5],
    "TranslateY": [0.0, 1.0, 3.7, 5.0, 7.9, 15.0, 2.0, 0.5],
    "Rotate": [0.0, 4.5, 30.0, 90.0, 135.0, 12.3, 45.0, 180.0],
    "Posterize": [0, 1, 2, 3, 4, 6, 7, 8],
    "Solarize": [0.0, 0.1, 0.3, 0.5, 0.6, 0.8, 0.93, 1.0],
}
FACTOR_OFFSETS = [0.0, 0.1, 0.37, 0.9, 0.5, 0.99, 0.05, 0.7]  # shears and blend factors
SIGNS = [1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0]


def _gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@pytest.fixture(scope="module")
def batches(data) -> dict[int, torch.Tensor]:
    """Eight grey digits and eight RGB images (three digits each); one RGB image is flat."""
    digits = data.train.images
    rgb = digits[8:32].reshape(8, 3, 16, 16).clone()
    rgb[5] = 77  # a flat image: AutoContrast and Equalize must leave it alone
    return {1: digits[:8].clone(), 3: rgb}


@pytest.fixture(scope="module")
def tiled(data) -> dict[int, torch.Tensor]:
    """Eight 48×64 images per channel count, each channel 3×4 digits: wider than tall, and
    with enough pixels that Equalize's rounding matters."""
    def tile(digits: torch.Tensor, c: int) -> torch.Tensor:
        grid = digits[:8 * c * 12].view(8, c, 3, 4, 16, 16)
        return grid.permute(0, 1, 2, 4, 3, 5).reshape(8, c, 48, 64).clone()

    digits = data.train.images
    return {1: tile(digits[32:], 1), 3: tile(digits[128:], 3)}


def _reference(op: str, image: torch.Tensor, m: float, interpolation: str = "nearest"):
    """torchvision's op on one image, as its auto-augment transforms call it."""
    mode = v2.InterpolationMode(interpolation)
    if op in ("ShearX", "ShearY"):
        degrees = math.degrees(math.atan(m))
        shear = [degrees, 0.0] if op == "ShearX" else [0.0, degrees]
        return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                         interpolation=mode, center=[0, 0])
    if op in ("TranslateX", "TranslateY"):
        shift = [int(m), 0] if op == "TranslateX" else [0, int(m)]
        return TF.affine(image, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0],
                         interpolation=mode)
    return {
        "Identity": lambda: image,
        "Rotate": lambda: TF.rotate(image, angle=m, interpolation=mode),
        "Brightness": lambda: TF.adjust_brightness(image, 1.0 + m),
        "Color": lambda: TF.adjust_saturation(image, 1.0 + m),
        "Contrast": lambda: TF.adjust_contrast(image, 1.0 + m),
        "Sharpness": lambda: TF.adjust_sharpness(image, 1.0 + m),
        "Posterize": lambda: TF.posterize(image, int(m)),
        "Solarize": lambda: TF.solarize(image, 255.0 * m),
        "AutoContrast": lambda: TF.autocontrast(image),
        "Equalize": lambda: TF.equalize(image),
        "Invert": lambda: TF.invert(image),
    }[op]()


def _per_sample(op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight magnitudes and signs; unsigned ops get signs too, which they must ignore."""
    return torch.tensor(MAGNITUDES.get(op, FACTOR_OFFSETS)), torch.tensor(SIGNS)


def _expected(op: str, images, magnitude, sign, interpolation="nearest") -> torch.Tensor:
    signed = [float(m) * (float(s) if op in SIGNED else 1.0)
              for m, s in zip(magnitude.float(), sign, strict=True)]
    return torch.stack([_reference(op, image, m, interpolation)
                        for image, m in zip(images, signed, strict=True)])


# --- ops ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["16x16", "48x64"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", OP_NAMES)
def test_each_op_matches_torchvision_with_per_sample_magnitudes(batches, tiled, op, channels,
                                                                size):
    images = (batches if size == "16x16" else tiled)[channels]
    magnitude, sign = _per_sample(op)
    out = apply_op(images, op, magnitude, sign, torch.ones(8, dtype=torch.bool))
    expected = _expected(op, images, magnitude, sign)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    if op in GEOMETRIC:  # grids computed in another order may round a tie the other way
        assert (out == expected).float().mean() > 0.995
    else:
        assert torch.equal(out, expected)


@pytest.mark.parametrize("op", GEOMETRIC)
def test_geometric_ops_match_torchvision_bilinear_as_augmix_uses_them(tiled, op):
    images = tiled[3]
    magnitude, sign = _per_sample(op)
    out = apply_op(images, op, magnitude, sign, torch.ones(8, dtype=torch.bool), "bilinear")
    expected = _expected(op, images, magnitude, sign, "bilinear")
    difference = (out.int() - expected.int()).abs()
    assert (difference == 0).float().mean() > 0.99 and difference.max() <= 1


@pytest.mark.parametrize("op", OP_NAMES)
def test_ops_change_only_the_selected_samples(batches, op):
    images = batches[3]
    magnitude, sign = _per_sample(op)
    selected = torch.tensor([True, False, False, True, True, False, True, False])
    everyone = apply_op(images, op, magnitude, sign, torch.ones(8, dtype=torch.bool))
    out = apply_op(images, op, magnitude, sign, selected)
    assert torch.equal(out[~selected], images[~selected])
    assert torch.equal(out[selected], everyone[selected])


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("op", GEOMETRIC)
def test_geometric_ops_at_magnitude_zero_are_the_identity(batches, op, interpolation):
    images = batches[3]
    out = apply_op(images, op, torch.zeros(8), torch.tensor(SIGNS),
                   torch.ones(8, dtype=torch.bool), interpolation)
    assert torch.equal(out, images)


def test_color_leaves_grey_images_alone(batches):
    out = apply_op(batches[1], "Color", torch.full((8,), 0.9), torch.tensor(SIGNS),
                   torch.ones(8, dtype=torch.bool))
    assert torch.equal(out, batches[1])


def test_apply_ops_gives_each_sample_its_chosen_op(batches):
    images, ops = batches[3], ("Rotate", "Equalize", "Color", "Posterize")
    value = {"Rotate": 30.0, "Equalize": 0.0, "Color": 0.6, "Posterize": 3.0}
    choice = torch.tensor([0, 1, 2, 3, -1, 3, 0, 2])
    magnitude = torch.tensor([value[ops[k]] if k >= 0 else 0.0 for k in choice.tolist()])
    sign = torch.tensor(SIGNS)
    out = apply_ops(images, ops, choice, magnitude, sign)
    for i, k in enumerate(choice.tolist()):
        if k < 0:
            assert torch.equal(out[i], images[i])
            continue
        m = float(magnitude[i]) * (float(sign[i]) if ops[k] in SIGNED else 1.0)
        assert (out[i] == _reference(ops[k], images[i], m)).float().mean() > 0.995, ops[k]


def test_bad_inputs_fail_clearly(batches):
    one = torch.ones(8, dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown augmentation op"):
        apply_op(batches[3], "Hue", torch.zeros(8), torch.ones(8), one)
    with pytest.raises(ValueError, match="uint8"):
        apply_op(batches[3].float(), "Invert", torch.zeros(8), torch.ones(8), one)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("levels", [256, 7, 2])
def test_equalize_matches_torchvision_on_random_batches(channels, levels):
    """Random uint8 batches (every value, a few values, two), one mostly a single value and
    one flat: the batched histogram gives torchvision's equalize, image by image, exactly."""
    g = _gen(levels + channels)
    values = torch.randperm(256, generator=g)[:levels].to(torch.uint8)
    images = values[torch.randint(levels, (16, channels, 21, 34), generator=g)]
    images[3, :, 2:] = values[0]  # all but two rows one value: the top bin decides the step
    images[4] = values[-1]  # flat: left as it is
    out = apply_op(images, "Equalize", torch.zeros(16), torch.ones(16),
                   torch.ones(16, dtype=torch.bool))
    assert torch.equal(out, torch.stack([TF.equalize(image) for image in images]))


# --- policies ----------------------------------------------------------------------------------

POLICIES = {
    "trivialaugment": lambda x, g: augment.trivial_augment(x, g),
    "randaugment": lambda x, g: augment.rand_augment(x, 2, 9, g),
    "autoaugment_imagenet": lambda x, g: augment.auto_augment(x, "imagenet", g),
    "autoaugment_cifar10": lambda x, g: augment.auto_augment(x, "cifar10", g),
    "autoaugment_svhn": lambda x, g: augment.auto_augment(x, "svhn", g),
    "augmix": lambda x, g: augment.augmix(x, 3, 3, g),
}


def _copies(image: torch.Tensor, n: int = 16) -> torch.Tensor:
    return image.expand(n, *image.shape).clone()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", POLICIES)
def test_policies_draw_per_sample_and_repeat_with_the_seed(batches, policy, channels):
    images = _copies(batches[channels][0])
    out = POLICIES[policy](images, _gen(3))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert len({o.numpy().tobytes() for o in out}) >= 6, "copies were augmented alike"
    assert torch.equal(POLICIES[policy](images, _gen(3)), out)
    assert not torch.equal(POLICIES[policy](images, _gen(4)), out)


def _outcomes(image: torch.Tensor, steps) -> dict[bytes, float]:
    """Every image a sequence of random steps can give, with its probability; a step is a
    list of (op, magnitude, probability) choices."""
    images = {image.numpy().tobytes(): (image, 1.0)}
    for choices in steps:
        following: dict[bytes, tuple[torch.Tensor, float]] = {}
        for current, p in images.values():
            for op, m, q in choices:
                out = _reference(op, current, m)
                key = out.numpy().tobytes()
                following[key] = (out, following.get(key, (out, 0.0))[1] + p * q)
        images = following
    return {key: p for key, (_, p) in images.items()}


def _op_choices(space: dict, bins: int, level: int | None, height: int, width: int) -> list:
    """(op, signed magnitude, probability) of torchvision's augmentation space: a uniform op
    at bin ``level`` (or a uniform bin), with a random sign where the op has one."""
    choices = []
    for op, (magnitudes_fn, signed) in space.items():
        p = 1 / len(space)
        magnitudes = magnitudes_fn(bins, height, width)
        if magnitudes is None:
            choices.append((op, 0.0, p))
            continue
        magnitudes = magnitudes if level is None else magnitudes[level:level + 1]
        p /= len(magnitudes)
        for m in magnitudes.tolist():
            choices += [(op, m, p / 2), (op, -m, p / 2)] if signed else [(op, m, p)]
    return choices


def _outputs(policy, image: torch.Tensor, n: int = 2000, seed: int = 5) -> list[bytes]:
    return [o.numpy().tobytes() for o in policy(_copies(image, n), _gen(seed))]


def _assert_drawn_like(outputs: list[bytes], possible: dict[bytes, float]) -> None:
    """Only possible outcomes; the likeliest as often as their probability; as many distinct
    ones as draws of that distribution give (fewer means part of the space is never drawn)."""
    assert set(outputs) <= set(possible), "an outcome torchvision's policy cannot give"
    n = len(outputs)
    for key in sorted(possible, key=possible.get)[-3:]:
        share = sum(o == key for o in outputs) / n
        assert abs(share - possible[key]) < 0.04, (possible[key], share)
    expected_distinct = sum(1 - (1 - p) ** n for p in possible.values())
    assert abs(len(set(outputs)) / expected_distinct - 1) < 0.1


def test_trivialaugment_draws_torchvision_outcomes_as_often_as_torchvision(batches):
    image = batches[3][0]
    choices = _op_choices(v2.TrivialAugmentWide._AUGMENTATION_SPACE, 31, None, 16, 16)
    _assert_drawn_like(_outputs(POLICIES["trivialaugment"], image), _outcomes(image, [choices]))


def test_randaugment_draws_torchvision_outcomes_at_its_magnitude(tiled):
    image = tiled[1][1]  # not square: translations scale with their own side
    choices = _op_choices(v2.RandAugment._AUGMENTATION_SPACE, 31, 9, 48, 64)
    possible = _outcomes(image, [choices, choices])
    _assert_drawn_like(_outputs(POLICIES["randaugment"], image), possible)


def _autoaugment_outcomes(image: torch.Tensor, name: str) -> dict[bytes, float]:
    """torchvision's AutoAugment policy ``name`` on ``image``: every outcome, its probability."""
    policy = v2.AutoAugment(v2.AutoAugmentPolicy(name))
    possible: dict[bytes, float] = {}
    for sub_policy in policy._policies:
        steps = []
        for op, p, level in sub_policy:
            magnitudes_fn, signed = policy._AUGMENTATION_SPACE[op]
            magnitudes = magnitudes_fn(10, *image.shape[-2:])
            m = 0.0 if magnitudes is None else float(magnitudes[level])
            taken = [(op, m, p / 2), (op, -m, p / 2)] if signed else [(op, m, p)]
            steps.append([("Identity", 0.0, 1 - p), *taken])
        for key, p in _outcomes(image, steps).items():
            possible[key] = possible.get(key, 0.0) + p / len(policy._policies)
    return possible


@pytest.mark.parametrize("name", ["imagenet", "cifar10", "svhn"])
def test_autoaugment_draws_torchvision_outcomes_as_often_as_torchvision(batches, name):
    image = batches[3][2]
    outputs = _outputs(POLICIES[f"autoaugment_{name}"], image, seed=6)
    _assert_drawn_like(outputs, _autoaugment_outcomes(image, name))


def test_policy_parameters_are_checked(batches):
    with pytest.raises(ValueError, match="magnitude"):
        augment.rand_augment(batches[3], 2, 31, _gen())
    with pytest.raises(ValueError, match="unknown AutoAugment policy"):
        augment.auto_augment(batches[3], "mnist", _gen())
    with pytest.raises(ValueError, match="severity"):
        augment.augmix(batches[3], 11, 3, _gen())


# --- augmix ------------------------------------------------------------------------------------


def test_augmix_mixing_weights_are_flat_dirichlet():
    weights = augment._dirichlet_ones(20000, 3, _gen(8))
    assert (weights > 0).all() and torch.allclose(weights.sum(1), torch.ones(20000))
    assert torch.allclose(weights.mean(0), torch.full((3,), 1 / 3), atol=0.01)
    assert abs(weights[:, 0].var().item() - 2 / 36) < 0.004  # Var = (k-1) / (k²(k+1)) = 1/18
    share = augment._dirichlet_ones(20000, 2, _gen(9))[:, 0]  # Beta(1, 1): uniform
    counts = torch.histc(share, bins=10, min=0, max=1)
    assert ((counts - 2000).abs() < 200).all()


def _image_shares(outputs: torch.Tensor, image: torch.Tensor, chains: torch.Tensor):
    """Whether each output (M) is ``trunc(s·image + (1 − s)·chain)`` for some share s in
    [0, 1], for each chain (K): an M×K boolean. The mix is float32 with weights that sum to 1
    only to rounding, so a whole-number blend may truncate one lower."""
    out, x, c = outputs.flatten(1)[:, None].double(), image.flatten().double(), chains.flatten(1)
    c = c.double()[None]
    d = x - c
    moving = d != 0
    safe = torch.where(moving, d, 1.0)
    a, b = (out - 1e-3 - c) / safe, (out + 1 + 1e-3 - c) / safe
    lo = torch.where(moving, torch.minimum(a, b), 0.0).amax(2).clamp_min(0.0)
    hi = torch.where(moving, torch.maximum(a, b), 1.0).amin(2).clamp_max(1.0)
    still = torch.where(moving, True, (out == c) | (out == c - 1)).all(2)
    return still & (lo <= hi)


def test_augmix_blends_the_image_with_chains_of_one_to_three_ops(batches):
    """Width 1, severity 1: the chain is 1–3 ops at bin 0, where only Posterize (4 bits),
    Solarize (at 255), AutoContrast and Equalize change an image. Each output is a blend of
    the image and such a chain, some only of a chain longer than one op, and most are strict
    blends (the image's share is drawn per sample)."""
    image = batches[3][4]
    step = [(op, m, 1.0) for op, m in [("Identity", 0.0), ("Posterize", 4.0),
                                       ("Solarize", 1.0), ("AutoContrast", 0.0),
                                       ("Equalize", 0.0)]]

    def results(steps: int) -> torch.Tensor:
        keys = _outcomes(image, [step] * steps)
        return torch.stack([torch.frombuffer(bytearray(k), dtype=torch.uint8).view(image.shape)
                            for k in keys])

    out = augment.augmix(_copies(image, 64), 1, 1, _gen(10))
    blends = _image_shares(out, image, results(3))
    assert blends.any(1).all(), "an output is no blend of the image and a possible chain"
    assert not _image_shares(out, image, results(1)).any(1).all(), "chains are one op long"
    chains_or_image = (out[:, None] == results(3)).flatten(2).all(2).any(1)
    assert chains_or_image.float().mean() < 0.5, "outputs are chains or the image, not blends"
