"""Automatic augmentation policies as batched tensor ops: every sample draws its own ops.

The ops, magnitude bins and policies follow torchvision's auto-augment family
(``torchvision.transforms.v2`` TrivialAugmentWide, RandAugment, AutoAugment, AugMix) and give
its results on uint8 images, but one call covers a whole N×C×H×W batch (C = 1 or 3) on
whatever device it is on, and all randomness comes from the ``torch.Generator`` passed in.

No op reads anything back to the host: an op is computed for the whole batch and kept where a
sample chose it, every shape is known before the data (no ``bincount``, ``nonzero`` or masks
that select), and nothing is copied from the host per call (a policy's magnitude table is
copied to the device once per image size and cached), so augmentation never makes the host
wait for the device (tests/test_host_sync.py checks it, under CUDA's sync debug mode where
a GPU is present). Ops come in three
kinds, each done once per step however many samples chose it: geometric ops are one
per-sample affine warp (one ``grid_sample``), pointwise ops are one per-sample, per-channel
256-entry lookup table (one ``gather``), and Color and Sharpness blend the image with a
per-pixel degenerate image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from automl.autoaugment_policies import AUTOAUGMENT_POLICIES

__all__ = ["OP_NAMES", "AUTOAUGMENT_POLICIES", "apply_op", "apply_ops", "trivial_augment",
           "rand_augment", "auto_augment", "augmix"]

Tensor = torch.Tensor


def _select(chosen: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per sample, uint8 ``a`` where ``chosen`` (N, bool) else ``b``: a bitwise blend, which
    is several times faster than ``torch.where`` on the CPU."""
    mask = chosen.to(torch.uint8).mul_(255).view((-1,) + (1,) * (a.dim() - 1))
    return b ^ ((a ^ b) & mask)


# --- geometric ops: one inverse affine matrix per sample, one warp --------------------------

#: op: (the affine parameter its signed magnitude sets, how, whether it turns about the
#: top-left corner). Shears turn about the corner and take the tangent as magnitude,
#: translations move by whole pixels and Rotate turns counter-clockwise, as in torchvision.
_GEOMETRIC: dict[str, tuple[str, Callable[[Tensor], Tensor], bool]] = {
    "ShearX": ("shear_x", torch.atan, True),
    "ShearY": ("shear_y", torch.atan, True),
    "TranslateX": ("tx", torch.trunc, False),
    "TranslateY": ("ty", torch.trunc, False),
    "Rotate": ("angle", lambda degrees: torch.deg2rad(-degrees), False),
}


def _inverse_affine(p: dict[str, Tensor], cx: Tensor, cy: Tensor) -> Tensor:
    """N×2×3 output-to-input pixel maps (centred coordinates): torchvision's inverse affine
    matrix at scale 1, per sample (angle and shears in radians, centre (cx, cy))."""
    angle, sx, sy, tx, ty = p["angle"], p["shear_x"], p["shear_y"], p["tx"], p["ty"]
    a = torch.cos(angle - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(angle))
    c = torch.sin(angle - sy) / torch.cos(sy)
    d = torch.cos(angle) - c * torch.tan(sx)
    ox, oy = cx + tx, cy + ty
    row0 = torch.stack([d, -b, cx - d * ox + b * oy], dim=1)
    row1 = torch.stack([-c, a, cy + c * ox - a * oy], dim=1)
    return torch.stack([row0, row1], dim=1)


def _warp(images: Tensor, matrices: Tensor, interpolation: str) -> Tensor:
    """Resample each image through its own matrix (fill 0 outside the image).

    The sampling grid is torchvision's: pixel centres relative to the image centre, mapped,
    then scaled to grid_sample's [-1, 1]. The identity matrix gives the image back exactly:
    its grid hits pixel centres to within float error, far from any rounding boundary.
    """
    n, _, h, w = images.shape
    dev = images.device
    half_size = torch.full((1, 2, 1), 0.5 * w, device=dev)
    half_size[:, 1] = 0.5 * h  # filled on the device: a tensor from a list is a host copy
    theta = matrices.float() / half_size
    x = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=dev).view(1, 1, w)
    y = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=dev).view(1, h, 1)
    t = theta.view(n, 6, 1, 1).unbind(1)
    grid = torch.stack([x * t[0] + y * t[1] + t[2], x * t[3] + y * t[4] + t[5]], dim=1)
    grid = grid.permute(0, 2, 3, 1)  # N×H×W×2 as a view: stacking on the last dim is slow
    warped = F.grid_sample(images.float(), grid, mode=interpolation, padding_mode="zeros",
                           align_corners=False)
    return warped.round_().to(torch.uint8)


# --- pointwise ops: one 256-entry lookup table per sample and channel -----------------------


def _levels(images: Tensor) -> Tensor:
    """Every uint8 value, as a 1×1×256 row."""
    return torch.arange(256, device=images.device, dtype=torch.uint8).view(1, 1, 256)


def _blend(image: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """``factor`` · image + (1 − factor) · degenerate, clamped and truncated to uint8.

    ``factor`` (N, float64) broadcasts over the trailing dims; the float32 arithmetic (a
    product, then a multiply-add) is torchvision's, so results agree to the last bit.
    """
    shape = (-1,) + (1,) * (image.dim() - 1)
    ratio, rest = factor.float().view(shape), (1.0 - factor).float().view(shape)
    return torch.addcmul(image.mul(ratio), degenerate, rest).clamp_(0, 255).to(torch.uint8)


def _grey(images: Tensor) -> Tensor:
    """N×1×H×W luma of RGB images, floored (torchvision's grey for uint8 blends)."""
    r, g, b = images.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(1)


def _brightness(images: Tensor, signed: Tensor) -> Tensor:
    factor = (1.0 + signed).float().view(-1, 1, 1)
    return _levels(images).mul(factor).clamp_(0, 255).to(torch.uint8)


def _contrast(images: Tensor, signed: Tensor) -> Tensor:
    grey = _grey(images) if images.shape[1] == 3 else images.float()
    mean = grey.mean(dim=(1, 2, 3)).view(-1, 1, 1)
    return _blend(_levels(images), mean, 1.0 + signed)


def _posterize(images: Tensor, bits: Tensor) -> Tensor:
    keep = bits.long().clamp(0, 8)
    mask = (256 - torch.bitwise_left_shift(torch.ones_like(keep), 8 - keep)).to(torch.uint8)
    return _levels(images) & mask.view(-1, 1, 1)


def _solarize(images: Tensor, fraction: Tensor) -> Tensor:
    levels, threshold = _levels(images), (255.0 * fraction).float().view(-1, 1, 1)
    return torch.where(levels >= threshold, levels.bitwise_not(), levels)


def _invert(images: Tensor, _magnitude: Tensor) -> Tensor:
    return _levels(images).bitwise_not()


def _autocontrast(images: Tensor, _magnitude: Tensor) -> Tensor:
    """Stretch each channel to the full range (flat channels are left as they are)."""
    flat = images.flatten(2)
    low, high = flat.amin(dim=2, keepdim=True).float(), flat.amax(dim=2, keepdim=True).float()
    flat_channel = high == low
    scale = torch.where(flat_channel, 1.0, (high - low).mul_(1.0 / 255))
    low = torch.where(flat_channel, 0.0, low)
    return (_levels(images).float() - low).div_(scale).clamp_(0, 255).to(torch.uint8)


def _histograms(images: Tensor) -> Tensor:
    """N×C×256 count of each value per image and channel, into a tensor of fixed shape.

    A ``scatter_add_`` rather than ``torch.bincount``: bincount sizes its output from the
    input's maximum, which on CUDA reads that maximum back to the host on every call.
    """
    flat = images.flatten(2).long()
    ones = torch.ones((1, 1, 1), device=images.device, dtype=torch.int32).expand(flat.shape)
    counts = torch.zeros(*flat.shape[:2], 256, device=images.device, dtype=torch.int32)
    return counts.scatter_add_(2, flat, ones)


def _equalize(images: Tensor, _magnitude: Tensor) -> Tensor:
    """Histogram equalisation per channel, PIL's table, from one batched histogram."""
    _, _, h, w = images.shape
    hist = _histograms(images)
    cumulative = hist.cumsum(dim=2)
    last = hist.gather(2, cumulative.argmax(dim=2, keepdim=True))  # count of the top value
    step = (h * w - last) // 255
    table = ((cumulative[..., :-1] + step // 2) // step.clamp(min=1)).clamp_(0, 255)
    table = F.pad(table, (1, 0)).to(torch.uint8)
    return torch.where(step > 0, table, _levels(images))


#: op: its lookup table for each sample and channel (N×C×256 or N×1×256), from the batch and
#: the magnitude (signed where the op is signed).
_POINTWISE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Brightness": _brightness,
    "Contrast": _contrast,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": _invert,
}


# --- blends with a per-pixel degenerate image ------------------------------------------------


def _color(images: Tensor, signed: Tensor) -> Tensor:
    """Saturation: blend with the grey image (grey images have no colour to change)."""
    if images.shape[1] == 1:
        return images
    return _blend(images, _grey(images), 1.0 + signed)


def _sharpness(images: Tensor, signed: Tensor) -> Tensor:
    """Blend the inner pixels with a 3×3 smoothing (weights 1, centre 5, over 13), rounded;
    the border stays as it is. Sums of whole numbers are exact, and a sum over 13 is never
    within float error of a half, so this rounds exactly as torchvision's convolution does."""
    h, w = images.shape[-2:]
    if h <= 2 or w <= 2:
        return images
    image = images.float()
    rows = image[..., :-2, :] + image[..., 1:-1, :] + image[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    inner = image[..., 1:-1, 1:-1]
    blurred = box.add_(inner, alpha=4.0).div_(13.0).round_()
    rest = (-signed).float().view(-1, 1, 1, 1)  # 1 − factor
    inner.copy_(torch.addcmul(inner, blurred.sub_(inner), rest))
    return image.clamp_(0, 255).to(torch.uint8)


_IMAGEWISE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Color": _color,
    "Sharpness": _sharpness,
}

#: Ops whose magnitude takes a per-sample sign; the others use the magnitude as it is.
_SIGNED = frozenset({*_GEOMETRIC, "Brightness", "Color", "Contrast", "Sharpness"})
OP_NAMES = ("Identity", *_GEOMETRIC, *_POINTWISE, *_IMAGEWISE)


def apply_ops(images: Tensor, ops: Sequence[str], choice: Tensor, magnitude: Tensor,
              sign: Tensor, interpolation: str = "nearest") -> Tensor:
    """Apply op ``ops[choice[i]]`` to sample i with ``magnitude[i]`` and ``sign[i]`` (±1).

    ``choice`` −1 leaves a sample as it is. Magnitudes follow torchvision's ops: shear as
    tangent, translation in pixels (truncated), rotation in degrees, Brightness / Color /
    Contrast / Sharpness as the blend factor's offset from 1, Posterize as bits kept,
    Solarize as the threshold's fraction of 255; the rest take none. ``interpolation``
    ("nearest" or "bilinear") resamples the geometric ops.
    """
    unknown = sorted(set(ops) - set(OP_NAMES))
    if unknown:
        raise ValueError(f"unknown augmentation op(s) {', '.join(unknown)}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError("expected uint8 images of shape N×C×H×W with C = 1 or 3")
    n, _, h, w = images.shape
    magnitude = magnitude.double()
    signed = magnitude * sign.double()
    zeros = torch.zeros(n, device=images.device, dtype=torch.float64)
    geometric = {key: zeros for key in ("angle", "shear_x", "shear_y", "tx", "ty")}
    at_corner = torch.zeros(n, device=images.device, dtype=torch.bool)
    tables = _levels(images).expand(n, images.shape[1], 256)  # identity where no op chose
    blended = []
    for k, name in enumerate(ops):
        chosen = choice == k
        value = signed if name in _SIGNED else magnitude
        if name in _GEOMETRIC:
            key, convert, about_corner = _GEOMETRIC[name]
            geometric[key] = torch.where(chosen, convert(value), geometric[key])
            at_corner = at_corner | (chosen & about_corner)
        elif name in _POINTWISE:
            tables = _select(chosen, _POINTWISE[name](images, value), tables)
        elif name in _IMAGEWISE:
            blended.append((chosen, _IMAGEWISE[name](images, value)))
    out = images
    if any(name in _POINTWISE for name in ops):  # samples of the other ops map to themselves
        out = tables.gather(2, images.flatten(2).long()).view_as(images)
    if any(name in _GEOMETRIC for name in ops):
        corner = torch.where(at_corner, -0.5, 0.0).double()
        matrices = _inverse_affine(geometric, corner * w, corner * h)
        out = _warp(out, matrices, interpolation)  # the identity for the other samples
    for chosen, result in blended:
        out = _select(chosen, result, out)
    return out


def apply_op(images: Tensor, op: str, magnitude: Tensor, sign: Tensor, selected: Tensor,
             interpolation: str = "nearest") -> Tensor:
    """Apply one op to the ``selected`` samples (boolean, N), each with its own magnitude."""
    choice = torch.where(selected, 0, -1)
    return apply_ops(images, (op,), choice, magnitude, sign, interpolation)


# --- policies -------------------------------------------------------------------------------

Ranges = dict[str, Callable[[int, int, int], Tensor]]  # op: (bins, height, width) -> magnitudes
_ENHANCE = ("Brightness", "Color", "Contrast", "Sharpness")


def _ranges(shear: float, translate: Callable[[int], float], rotate: float, enhance: float,
            bits: tuple[int, int]) -> Ranges:
    """Magnitude bins of every op that has one; ``bits`` is (most bits kept, bits dropped at
    the top bin) of Posterize."""
    top, drop = bits
    return {
        "ShearX": lambda n, h, w: torch.linspace(0.0, shear, n),
        "ShearY": lambda n, h, w: torch.linspace(0.0, shear, n),
        "TranslateX": lambda n, h, w: torch.linspace(0.0, translate(w), n),
        "TranslateY": lambda n, h, w: torch.linspace(0.0, translate(h), n),
        "Rotate": lambda n, h, w: torch.linspace(0.0, rotate, n),
        **{op: (lambda n, h, w: torch.linspace(0.0, enhance, n))
           for op in _ENHANCE},
        "Posterize": lambda n, h, w: (top - torch.arange(n) / ((n - 1) / drop)).round(),
        "Solarize": lambda n, h, w: torch.linspace(1.0, 0.0, n),
    }


_STANDARD = _ranges(0.3, lambda size: 150.0 / 331.0 * size, 30.0, 0.9, (8, 4))

#: policy: (its ops, their magnitude bins, how many bins), as in torchvision.
_SPACES: dict[str, tuple[tuple[str, ...], Ranges, int]] = {
    "trivialaugment": (("Identity", *_GEOMETRIC, *_ENHANCE, "Posterize", "Solarize",
                        "AutoContrast", "Equalize"),
                       _ranges(0.99, lambda size: 32.0, 135.0, 0.99, (8, 6)), 31),
    "randaugment": (("Identity", *_GEOMETRIC, *_ENHANCE, "Posterize", "Solarize",
                     "AutoContrast", "Equalize"), _STANDARD, 31),
    "autoaugment": ((*_GEOMETRIC, *_ENHANCE, "Posterize", "Solarize", "AutoContrast",
                     "Equalize", "Invert"), _STANDARD, 10),
    "augmix": ((*_GEOMETRIC, "Posterize", "Solarize", "AutoContrast", "Equalize", *_ENHANCE),
               _ranges(0.3, lambda size: size / 3.0, 30.0, 0.9, (4, 4)), 10),
}


@lru_cache(maxsize=64)
def _magnitudes(policy: str, height: int, width: int, device: torch.device) -> Tensor:
    """K×bins magnitudes of the policy's ops on ``device`` (0 for ops without one)."""
    ops, ranges, bins = _SPACES[policy]
    rows = [ranges[op](bins, height, width).float() if op in ranges else torch.zeros(bins)
            for op in ops]
    return torch.stack(rows).to(device)


@lru_cache(maxsize=64)
def _sub_policies(name: str, height: int, width: int, device: torch.device
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """An AutoAugment policy as S×2 tensors: op index, probability and magnitude."""
    ops = _SPACES["autoaugment"][0]
    table = _magnitudes("autoaugment", height, width, torch.device("cpu"))
    steps = [step for sub_policy in AUTOAUGMENT_POLICIES[name] for step in sub_policy]
    index = torch.tensor([ops.index(op) for op, _, _ in steps])
    probability = torch.tensor([p for _, p, _ in steps])
    magnitude = torch.stack([table[ops.index(op), level or 0] for op, _, level in steps])
    return tuple(t.view(-1, 2).to(device) for t in (index, probability, magnitude))


def _randint(high: int, n: int, generator: torch.Generator) -> Tensor:
    return torch.randint(high, (n,), device=generator.device, generator=generator)


def _signs(n: int, generator: torch.Generator) -> Tensor:
    """±1 per sample, negative with probability 1/2."""
    draw = torch.rand(n, device=generator.device, generator=generator)
    return torch.where(draw <= 0.5, -1.0, 1.0)


def _dirichlet_ones(n: int, k: int, generator: torch.Generator) -> Tensor:
    """n draws of Dirichlet(1, …, 1) over k: normalised Exponential(1) (= Gamma(1)) draws."""
    draws = torch.empty(n, k, device=generator.device).exponential_(generator=generator)
    return draws / draws.sum(dim=1, keepdim=True).clamp_min(torch.finfo(draws.dtype).tiny)


def trivial_augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """TrivialAugment Wide: one uniformly drawn op at a uniformly drawn bin (of 31) per sample."""
    n, _, h, w = images.shape
    ops, _, bins = _SPACES["trivialaugment"]
    table = _magnitudes("trivialaugment", h, w, images.device)
    op, level = _randint(len(ops), n, generator), _randint(bins, n, generator)
    return apply_ops(images, ops, op, table[op, level], _signs(n, generator))


def rand_augment(images: Tensor, num_ops: int, magnitude: int | None,
                 generator: torch.Generator) -> Tensor:
    """RandAugment: ``num_ops`` uniformly drawn ops per sample, all at bin ``magnitude`` of 31
    (``None``: each op at a uniformly drawn bin, the variant FixMatch uses)."""
    ops, _, bins = _SPACES["randaugment"]
    if magnitude is not None and not 0 <= magnitude < bins:
        raise ValueError(f"RandAugment magnitude must be in [0, {bins - 1}], got {magnitude}")
    n, _, h, w = images.shape
    table = _magnitudes("randaugment", h, w, images.device)
    for _ in range(num_ops):
        op = _randint(len(ops), n, generator)
        level = _randint(bins, n, generator) if magnitude is None else magnitude
        images = apply_ops(images, ops, op, table[op, level], _signs(n, generator))
    return images


def auto_augment(images: Tensor, policy_name: str, generator: torch.Generator) -> Tensor:
    """AutoAugment: one learned sub-policy per sample, each of its two steps taken with its
    probability. ``policy_name`` is the dataset it was learned on (AUTOAUGMENT_POLICIES)."""
    if policy_name not in AUTOAUGMENT_POLICIES:
        raise ValueError(f"unknown AutoAugment policy {policy_name!r}; "
                         f"choose from {', '.join(AUTOAUGMENT_POLICIES)}")
    n, _, h, w = images.shape
    ops = _SPACES["autoaugment"][0]
    op, probability, magnitude = _sub_policies(policy_name, h, w, images.device)
    sub_policy = _randint(len(op), n, generator)
    for step in range(2):
        taken = torch.rand(n, device=generator.device, generator=generator)
        taken = taken <= probability[sub_policy, step]
        choice = torch.where(taken, op[sub_policy, step], -1)
        images = apply_ops(images, ops, choice, magnitude[sub_policy, step],
                           _signs(n, generator))
    return images


def augmix(images: Tensor, severity: int, mixture_width: int,
           generator: torch.Generator) -> Tensor:
    """AugMix: blend each image with ``mixture_width`` chains of 1–3 random ops.

    Per sample: Dirichlet(1, …, 1) weights over the chains, a Beta(1, 1) share of the
    original image, a depth per chain and an op and a bin (below ``severity``, of 10) per step;
    geometric ops resample bilinearly, as in torchvision's AugMix. All chains of the batch run
    as one batch of ``mixture_width``·N images, three steps in all.
    """
    ops, _, bins = _SPACES["augmix"]
    if not 1 <= severity <= bins:
        raise ValueError(f"AugMix severity must be in [1, {bins}], got {severity}")
    if mixture_width < 1:
        raise ValueError(f"AugMix mixture_width must be at least 1, got {mixture_width}")
    n, c, h, w = images.shape
    table = _magnitudes("augmix", h, w, images.device)
    original, mixed = _dirichlet_ones(n, 2, generator).unbind(1)
    chain_weights = _dirichlet_ones(n, mixture_width, generator) * mixed[:, None]
    chains = images.repeat(mixture_width, 1, 1, 1)  # chain k of sample i is row k·N + i
    rows = len(chains)
    depth = 1 + _randint(3, rows, generator)
    for step in range(3):
        op, level = _randint(len(ops), rows, generator), _randint(severity, rows, generator)
        choice = torch.where(depth > step, op, -1)
        chains = apply_ops(chains, ops, choice, table[op, level], _signs(rows, generator),
                           interpolation="bilinear")
    weighted = chain_weights.T.reshape(-1, 1, 1, 1) * chains
    out = original.view(-1, 1, 1, 1) * images + weighted.view(mixture_width, n, c, h, w).sum(0)
    return out.to(torch.uint8)
