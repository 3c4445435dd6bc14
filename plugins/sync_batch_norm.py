from __future__ import annotations

import logging

from automl.hookspecs import hookimpl
from automl.technique import Technique

log = logging.getLogger("automl")


class SyncBatchNorm(Technique):
    """Synchronised batch norm: training statistics over the global batch of every rank.

    Helps: data-parallel training where each rank's share of the batch is small (many GPUs,
    detection-size inputs), so per-rank statistics are noisy and differ from one process's.
    On one process it changes nothing (the statistics are already the whole batch's) and says
    so. The evaluated and saved model has plain batch norm again (same weights and statistics).
    Suggested: on when each rank's share is below about 32 images (no parameters: on or off).
    Source: Ioffe & Szegedy, "Batch Normalization" (2015); PyTorch nn.SyncBatchNorm; Peng et
    al., "MegDet: A Large Mini-Batch Object Detector" (2018), cross-GPU batch norm.
    """

    name = "sync_batch_norm"
    conflicts = {
        "ghost_batch_norm": "ghost batch norm normalises each small virtual batch by its own "
                            "statistics; synchronising them over the global batch contradicts it",
        "norm_layer": "norm_layer replaces every batch norm, so there are no batch statistics "
                      "left to synchronise",
    }

    def __init__(self, **params):
        super().__init__(**params)
        self._said_one_process = False

    @hookimpl(tryfirst=True)  # before other surgery, which then sees BN-compatible modules
    def modify_model(self, state):
        from automl.distributed import world

        from .sync_batch_norm_layer import to_sync_batch_norm

        if world().size == 1:
            if not self._said_one_process:
                log.info("sync_batch_norm: one process, batch-norm statistics are already the "
                         "whole batch's; nothing to synchronise")
                self._said_one_process = True
            return
        if not to_sync_batch_norm(state.model, state.device):
            raise ValueError(f"sync_batch_norm: model {state.recipe.model} has no BatchNorm2d "
                             "layers to synchronise")

    @hookimpl(wrapper=True, trylast=True)  # innermost: others (fixres) get the plain model
    def eval_model(self, state):
        """The evaluated model with plain batch norm: evaluation (on any rank, or rank 0
        alone) needs no collective, and the saved model is the one a single process builds."""
        from .sync_batch_norm_layer import with_plain_batch_norm

        model = yield
        source, plain = state.extras.get("sync_batch_norm_plain", (None, None))
        if source is not model:  # one copy kept for the trial, its weights refreshed
            plain = with_plain_batch_norm(model)
            state.extras["sync_batch_norm_plain"] = (model, plain)
        elif plain is not model:
            plain.load_state_dict(model.state_dict())
        return plain
