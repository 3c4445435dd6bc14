from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from optuna.distributions import FloatDistribution, IntDistribution

from automl.functional import resize
from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch


def _batch_norms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def recalibrate_batch_norm(model: torch.nn.Module, batches: Iterable[torch.Tensor]
                           ) -> torch.nn.Module:
    """A copy of ``model`` whose batch-norm running statistics are re-estimated on ``batches``
    (:func:`recalibrate_in_place` on a deep copy); ``model`` is not changed."""
    return recalibrate_in_place(copy.deepcopy(model), batches)


def recalibrate_in_place(model: torch.nn.Module, batches: Iterable[torch.Tensor]
                         ) -> torch.nn.Module:
    """Re-estimate ``model``'s batch-norm running statistics on ``batches``; returns it in eval
    mode.

    The statistics are reset and averaged with equal weight over the batches (momentum None);
    only the batch-norm layers run in training mode, so dropout and stochastic depth do not
    skew them.
    """
    import torch

    with torch.no_grad():
        model.eval()
        norms = _batch_norms(model)
        momenta = [bn.momentum for bn in norms]
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for images in batches:
            model(images)
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
    return model.eval()


def calibration_batches(state, count: int) -> Iterator[torch.Tensor]:
    """``count`` training batches without augmentation, normalised as the trainer does and
    resized to the evaluation resolution; a fixed seeded sample, so every call sees the same."""
    import torch

    from automl.trainer import device_batches, normalise_batch

    train = state.data.train
    size = state.eval_image_size or state.image_size
    gen = torch.Generator().manual_seed(state.recipe.seed)
    order = torch.randperm(len(train.labels), generator=gen).to(state.device)
    batches = order[:min(count, len(order) // state.batch_size) * state.batch_size]
    for images, _ in device_batches(train, batches.split(state.batch_size), state):
        yield resize(normalise_batch(state, images), size)


class FixRes(Technique):
    """FixRes: train at a lower resolution, test at full resolution with recalibrated batch norm.

    Helps: random crops make objects look larger in training than at test time; training
    smaller (cheaper) and testing larger removes that discrepancy. Before every evaluation a
    copy of the evaluated model (EMA weights included) gets its batch-norm statistics
    recomputed on ``calibration_batches`` un-augmented training batches at the evaluation
    size, once per evaluation (a light version of the paper's fine-tuning at test
    resolution; models without batch norm are evaluated unchanged). Combines with
    inference_resize (a larger test size) and progressive_resizing (which then grows to the
    reduced training size).
    Suggested: train_scale 0.6–0.8.
    Source: Touvron et al., "Fixing the train-test resolution discrepancy" (2019).
    """

    name = "fixres"
    space = {
        "train_scale": FloatDistribution(0.5, 0.9),
        "calibration_batches": IntDistribution(2, 20),
    }
    defaults = {"train_scale": 0.75, "calibration_batches": 10}
    limits = {"train_scale": (0.05, 1.0), "calibration_batches": (1, 1000)}

    @hookimpl
    def configure_training(self, state):
        state.train_image_size = max(1, round(state.image_size * self.params["train_scale"]))

    @hookimpl(wrapper=True)
    def eval_model(self, state):
        """Once per evaluation (the trainer resolves the evaluated model once): the weights
        are loaded into one copy kept for the trial, whose statistics are recalibrated."""
        from automl.trainer import autocast

        model = yield
        if not _batch_norms(model):
            return model
        calibrated = state.extras.get("fixres_model")
        if calibrated is None or type(calibrated) is not type(model):
            calibrated = state.extras["fixres_model"] = copy.deepcopy(model)
        else:
            calibrated.load_state_dict(model.state_dict())
        with autocast(state):
            return recalibrate_in_place(
                calibrated, calibration_batches(state, self.params["calibration_batches"]))
