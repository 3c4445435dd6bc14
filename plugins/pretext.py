"""Pretext tasks that train a backbone without labels: rotation prediction and SimCLR.

Apart from the ``self_supervised_pretraining`` technique (which imports this module when its
stage runs), so that listing techniques does not import torch. Each task is a pure function:
a model and uint8 images in, the backbone's trained weights out (the pretext head and the
model's own classifier left out), so it can be tested and timed alone.

Both tasks read the classifier's input (the pooled features) through timm's
``forward_features`` + ``forward_head(pre_logits=True)``, or through a hook on
``get_classifier()`` for models without ``forward_head``; every timm model has one of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from automl.augment import apply_op

__all__ = ["backbone_features", "backbone_weights", "nt_xent", "pretrain_rotation",
           "pretrain_simclr", "random_resized_crop", "rotations", "simclr_view"]

Tensor = torch.Tensor
Normalise = Callable[[Tensor], Tensor]  # uint8 N×C×H×W -> the float batch the model takes


# --- the backbone: its features, its weights -------------------------------------------------


def backbone_features(model: nn.Module, images: Tensor) -> Tensor:
    """N×D: what the model's classifier receives for ``images`` (float, normalised)."""
    if hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(images), pre_logits=True)
    captured: list[Tensor] = []
    handle = model.get_classifier().register_forward_pre_hook(
        lambda _module, args: captured.append(args[0]))
    try:
        model(images)
    finally:
        handle.remove()
    return captured[0].flatten(1)


def classifier_prefix(model: nn.Module) -> str:
    """The classifier's module name in ``model``'s state_dict (``head``, ``fc``)."""
    classifier = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is classifier)


def backbone_weights(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s weights without its classifier, on the CPU (the supervised training
    then starts from them with a fresh classifier)."""
    prefix = classifier_prefix(model) + "."
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()
            if not name.startswith(prefix)}


def _feature_width(model: nn.Module, sample: Tensor) -> int:
    """D, from one forward of two images in eval mode (batch-norm statistics untouched)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        width = backbone_features(model, sample[:2]).shape[1]
    model.train(was_training)
    return width


# --- rotation prediction (Gidaris et al. 2018) -----------------------------------------------


def rotations(images: Tensor, turns: Tensor) -> Tensor:
    """Each square image turned by ``turns[i]`` quarter turns counter-clockwise (0–3)."""
    every = torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
    return every[turns, torch.arange(len(images), device=images.device)]


def pretrain_rotation(model: nn.Module, images: Tensor | Any, *, epochs: int, batch_size: int,
                      lr: float, device: torch.device, generator: torch.Generator,
                      normalise: Normalise, max_steps: int | None = None,
                      head: nn.Module | None = None) -> dict[str, Tensor]:
    """Train ``model``'s backbone to tell which of four rotations each image shows.

    Each image of a batch is turned by its own random number of quarter turns, and a linear
    head on the features predicts it (dropped afterwards); finding "up" needs the objects'
    shapes. The paper feeds all four rotations of every image at once; one per image costs
    a quarter as much per epoch and sees them all over a few epochs, which matters on a CPU.
    Returns :func:`backbone_weights`. ``images``: uint8 N×C×S×S, square. ``head``: a D→4
    module to train as the pretext head (a fresh linear one if None; tests read its accuracy).
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation prediction needs square images, got {tuple(images.shape)}")
    model.to(device)
    if head is None:
        head = nn.Linear(_feature_width(model, normalise(images[:2].to(device))), 4)
    head.to(device)

    def loss(batch: Tensor) -> Tensor:
        turns = torch.randint(4, (len(batch),), device=device, generator=generator)
        logits = head(backbone_features(model, normalise(rotations(batch, turns))))
        return F.cross_entropy(logits, turns)

    _train(model, head, images, loss, epochs=epochs, batch_size=batch_size, lr=lr,
           device=device, generator=generator, max_steps=max_steps)
    return backbone_weights(model)


def rotation_accuracy(model: nn.Module, head: nn.Module, images: Tensor,
                      normalise: Normalise) -> float:
    """Share of the four rotations of ``images`` that ``head`` on the features names right."""
    model.eval()
    with torch.no_grad():
        n = len(images)
        turns = torch.arange(4, device=images.device).repeat_interleave(n)
        logits = head(backbone_features(model, normalise(rotations(images.repeat(4, 1, 1, 1),
                                                                   turns))))
    return (logits.argmax(1) == turns).float().mean().item()


# --- SimCLR (Chen et al. 2020) ---------------------------------------------------------------


def random_resized_crop(images: Tensor, generator: torch.Generator,
                        scale: tuple[float, float] = (0.3, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """Per sample, a random window (``scale`` of the area, aspect ``ratio``) resized back to
    the full image (bilinear): one ``grid_sample`` for the batch, uint8 in and out."""
    n, dev = len(images), images.device

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, device=dev, generator=generator)

    area = uniform(*scale)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the side
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1.0 - width) * uniform(-1.0, 1.0)  # the window's centre, in [-1, 1] coordinates
    cy = (1.0 - height) * uniform(-1.0, 1.0)
    zeros = torch.zeros_like(area)
    theta = torch.stack([torch.stack([width, zeros, cx], 1),
                         torch.stack([zeros, height, cy], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def simclr_view(images: Tensor, generator: torch.Generator, strength: float = 0.4) -> Tensor:
    """One augmented view per image: random resized crop, horizontal flip, then brightness,
    contrast (and, for colour images, saturation) jitter of up to ±``strength``, each applied
    with probability 0.8, as in SimCLR's CIFAR augmentation (uint8 in and out)."""
    n, dev = len(images), images.device
    out = random_resized_crop(images, generator)
    flip = torch.rand(n, device=dev, generator=generator) < 0.5
    out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
    ops = ("Brightness", "Contrast", "Color") if images.shape[1] == 3 else ("Brightness",
                                                                             "Contrast")
    for op in ops:
        selected = torch.rand(n, device=dev, generator=generator) < 0.8
        magnitude = strength * torch.rand(n, device=dev, generator=generator)
        sign = torch.where(torch.rand(n, device=dev, generator=generator) < 0.5, -1.0, 1.0)
        out = apply_op(out, op, magnitude, sign, selected)
    return out


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent loss of two views' embeddings (N×K each, row i of both from image i).

    Each of the 2N embeddings must pick its partner among the 2N − 1 others by cosine
    similarity / ``temperature`` (softmax cross-entropy); the mean over all 2N.
    """
    n, dev = len(z1), z1.device
    with torch.autocast(dev.type, enabled=False):  # similarities in fp32 under bf16 autocast
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        similarity = (z @ z.T) / temperature
        self_pairs = torch.eye(2 * n, dtype=torch.bool, device=dev)
        similarity = similarity.masked_fill(self_pairs, float("-inf"))
        partner = torch.cat([torch.arange(n, 2 * n, device=dev), torch.arange(n, device=dev)])
        return F.cross_entropy(similarity, partner)


def projection_head(width: int, out: int = 64) -> nn.Module:
    """SimCLR's two-layer MLP from the features to the space the loss compares in."""
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, out))


def pretrain_simclr(model: nn.Module, images: Tensor | Any, *, epochs: int, batch_size: int,
                    lr: float, temperature: float, device: torch.device,
                    generator: torch.Generator, normalise: Normalise,
                    max_steps: int | None = None, head: nn.Module | None = None
                    ) -> dict[str, Tensor]:
    """Train ``model``'s backbone so two augmented views of an image embed close together and
    apart from the other images of the batch (NT-Xent through a projection head, dropped
    afterwards). Returns :func:`backbone_weights`. ``head``: the projection head to train
    (:func:`projection_head` of the feature width if None)."""
    model.to(device)
    if head is None:
        head = projection_head(_feature_width(model, normalise(images[:2].to(device))))
    head.to(device)

    def loss(batch: Tensor) -> Tensor:
        views = torch.cat([simclr_view(batch, generator), simclr_view(batch, generator)])
        z1, z2 = head(backbone_features(model, normalise(views))).chunk(2)
        return nt_xent(z1, z2, temperature)

    _train(model, head, images, loss, epochs=epochs, batch_size=batch_size, lr=lr,
           device=device, generator=generator, max_steps=max_steps)
    return backbone_weights(model)


# --- the shared loop -------------------------------------------------------------------------


def _batches(images: Tensor | Any, batch_size: int, device: torch.device,
             generator: torch.Generator) -> Iterator[Tensor]:
    """One epoch of full shuffled batches of uint8 images, on ``device``. ``images``: a
    tensor, or a folder's ``ImageFiles``, decoded by its DataLoader workers."""
    order = torch.randperm(len(images), device=generator.device, generator=generator).cpu()
    batches = [order[start:start + batch_size]
               for start in range(0, len(images) - batch_size + 1, batch_size)]
    if isinstance(images, Tensor):
        for idx in batches:
            yield images[idx].to(device, non_blocking=True)
        return
    unused = torch.zeros(len(images), dtype=torch.int64)
    loader = torch.utils.data.DataLoader(
        images.dataset(unused), batch_sampler=[idx.tolist() for idx in batches],
        num_workers=images.workers, pin_memory=device.type == "cuda")
    for batch, _ in loader:
        yield batch.to(device, non_blocking=True)


def _train(model: nn.Module, head: nn.Module, images: Tensor | Any,
           loss: Callable[[Tensor], Tensor], *, epochs: int, batch_size: int, lr: float,
           device: torch.device, generator: torch.Generator, max_steps: int | None) -> None:
    """Adam with a cosine decay over the run, on the model and the pretext head together;
    bf16 autocast on CUDA, as the trainer does."""
    batch_size = max(2, min(batch_size, len(images)))
    steps = epochs * (len(images) // batch_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step / max(steps, 1), 1))))
    mixed_precision = torch.autocast(device.type, dtype=torch.bfloat16,
                                     enabled=device.type == "cuda")
    model.train()
    head.train()
    step = 0
    for _ in range(epochs):
        for batch in _batches(images, batch_size, device, generator):
            if step >= steps:
                return
            optimizer.zero_grad(set_to_none=True)
            with mixed_precision:
                value = loss(batch)
            value.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 50 == 0 and not torch.isfinite(value):  # a rare sync, not per batch
                raise FloatingPointError(f"pretext loss is {value.item()} at step {step}")
