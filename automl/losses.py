"""The classification loss every recipe trains with, composed from options techniques set.

Loss techniques do not replace each other: each sets one entry of ``state.loss_options`` in
``build_loss`` (label smoothing, class weights, focal modulation, sigmoid instead of softmax)
and the core builds one loss from all of them, so focal + class weights + soft targets from
mixup combine as the papers describe. A technique that needs a wholly different loss may still
set ``state.loss_fn`` itself; extra terms belong in ``after_loss``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from automl.functional import soft_targets

__all__ = ["LOSS_OPTIONS", "classification_loss", "make_loss"]

#: Option name -> its neutral value (what the loss uses when no technique sets it).
LOSS_OPTIONS = {"label_smoothing": 0.0, "class_weights": None, "focal_gamma": 0.0,
                "binary": False}


def make_loss(options: dict) -> partial:
    """``loss_fn(logits, targets)`` for ``options`` (a subset of :data:`LOSS_OPTIONS`)."""
    unknown = sorted(set(options) - set(LOSS_OPTIONS))
    if unknown:
        raise ValueError(f"unknown loss option(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(LOSS_OPTIONS)}")
    return partial(classification_loss, **options)


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, *,
                        label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None,
                        focal_gamma: float = 0.0, binary: bool = False) -> torch.Tensor:
    """Mean over the batch of the per-sample loss, summed over classes.

    ``targets`` are class indices or soft rows (mixup, cutmix). Softmax cross-entropy by
    default; ``binary`` uses one sigmoid per class (BCE on the soft targets). ``focal_gamma``
    scales each term by (1 − p)^γ, p the probability given to the target (focal loss);
    ``class_weights`` (mean 1 over the training samples) scales each class's term.
    """
    if not binary and focal_gamma == 0 and class_weights is None:  # fused fast path
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    target = soft_targets(targets, logits.shape[1]).to(logits.dtype)
    if label_smoothing:
        target = target * (1 - label_smoothing) + label_smoothing / logits.shape[1]
    if binary:
        terms = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if focal_gamma:
            prob = torch.sigmoid(logits)
            p_target = prob * target + (1 - prob) * (1 - target)
            terms = terms * _focal_factor(p_target, focal_gamma)
    else:
        log_prob = F.log_softmax(logits, dim=1)
        terms = -target * log_prob
        if focal_gamma:
            terms = terms * _focal_factor(log_prob.exp(), focal_gamma)
    if class_weights is not None:
        terms = terms * class_weights
    return terms.sum(1).mean()


def _focal_factor(prob: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 − p)^γ; the base is kept above 0 so γ < 1 has no infinite gradient at p = 1."""
    return (1 - prob).clamp_min(torch.finfo(prob.dtype).tiny).pow(gamma)
