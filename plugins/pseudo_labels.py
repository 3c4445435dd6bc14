from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch

#: Cutout of the strong view: a box of up to a quarter of the image (FixMatch: a square of
#: up to half the side), filled with 0, the mean of the normalised input.
CUTOUT_AREA_MAX = 0.25
#: RandAugment ops applied in a row for the strong view, each at a random magnitude
#: (FixMatch's variant of RandAugment).
STRONG_OPS = 2


def confident(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo labels (argmax class) and the mask of samples whose softmax probability of it is
    at least ``threshold``."""
    probabilities = logits.float().softmax(dim=1)
    confidence, labels = probabilities.max(dim=1)
    return labels, confidence >= threshold


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's unlabelled loss: cross-entropy on the kept samples, summed and divided by
    all of them (``mask.mean()`` is the share kept), so few confident samples weigh little.
    A mask, not boolean indexing: no host read of how many were kept."""
    import torch.nn.functional as F

    losses = F.cross_entropy(logits.float(), labels, reduction="none")
    return (losses * mask.to(losses.dtype)).mean()


def strong_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """FixMatch's strong view of a uint8 batch (already weakly augmented): RandAugment's
    ops and ranges (rotation up to 30°, shear 0.3, shift 45%), :data:`STRONG_OPS` drawn per
    sample, each at a random magnitude. Cutout follows on the normalised batch."""
    from automl import augment

    return augment.rand_augment(images, STRONG_OPS, None, generator)


class PseudoLabels(Technique):
    """Pseudo-labels (FixMatch): confident predictions on unlabelled images train the model.

    Each training step draws `mu` × batch size unlabelled images; the model's prediction on a
    weak view (random shift, optional flip), without gradient, gives each a pseudo label,
    kept when its probability is at least `threshold`; a strong view of the same images
    (weak view, two RandAugment ops at random magnitudes, cutout) is trained towards it:
    `weight` × cross-entropy over the kept ones (divided by all drawn, as in the paper).
    Needs unlabelled images (`data.labelled_fraction` below 1, or a folder's `unlabelled/`).
    The two extra forwards are separate from the labelled one (FixMatch concatenates all
    three): batch norm normalises each by its own statistics, and its running averages (what
    evaluation uses) stay those of the labelled batches. Under SAM's closure the same
    unlabelled draw is reused.
    Helps: few labels and many unlabelled images of the same classes (FixMatch: CIFAR-10
    with 250 labels reaches about 95%); most when the weak-view predictions are already fair.
    Suggested: threshold 0.95, weight 1, mu 7 in the paper; mu 1–3 on a CPU budget (each
    unit costs a forward and a backward of one batch).
    Source: Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency
    and Confidence" (2020); Lee, "Pseudo-Label" (2013).
    """

    name = "pseudo_labels"
    space = {
        "threshold": FloatDistribution(0.8, 0.98),
        "weight": FloatDistribution(0.25, 4.0, log=True),
        "mu": IntDistribution(1, 7),
        "flip": CategoricalDistribution([True, False]),
    }
    defaults = {"threshold": 0.95, "weight": 1.0, "mu": 2, "flip": True}
    limits = {"threshold": (0.0, 1.0), "weight": (0.0, 100.0), "mu": (1, 64)}
    needs_unlabelled = True

    @hookimpl
    def on_train_start(self, state):
        from automl.plugins.unlabelled_data import DrawPerBatch, require_unlabelled

        require_unlabelled(state, self.name)
        self._draws = DrawPerBatch()

    @hookimpl
    def after_loss(self, state):
        from automl.plugins.unlabelled_data import norm_statistics_kept

        from automl.trainer import autocast

        strong, labels, mask = self._draws.get(state, self._draw)
        with autocast(state), norm_statistics_kept(state.model):
            logits = state.train_model(strong)
        state.loss = state.loss + self.params["weight"] * masked_cross_entropy(
            logits, labels, mask)

    def _draw(self, state) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``mu`` × batch unlabelled images: their strong views (normalised, as the model
        takes them), and the pseudo labels and kept mask from their weak views."""
        import torch
        from automl.plugins.random_erasing import random_erase
        from automl.plugins.unlabelled_data import (
            images_at,
            model_input,
            norm_statistics_kept,
            weak_augment,
        )

        from automl.trainer import autocast

        unlabelled, gen = state.data.unlabelled, state.generator
        count = self.params["mu"] * state.batch_size
        idx = torch.randint(len(unlabelled), (count,), device=gen.device, generator=gen)
        images = images_at(unlabelled, idx.to(state.device), state)
        weak = weak_augment(images, self.params["flip"], gen)
        strong = weak_augment(images, self.params["flip"], gen)
        strong = model_input(state, strong_augment(strong, gen))
        strong = random_erase(strong, 1.0, CUTOUT_AREA_MAX, "zero", gen)
        with torch.no_grad(), autocast(state), norm_statistics_kept(state.model):
            weak_logits = state.train_model(model_input(state, weak))
        labels, mask = confident(weak_logits, self.params["threshold"])
        return strong, labels, mask
