from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution, IntDistribution

from automl.errors import UserError
from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    from torch import nn

    from automl.checkpoints import LoadReport

log = logging.getLogger("automl")


def train_only_classifier(model: nn.Module, only: bool) -> None:
    """Stop (``only``) or restart gradients for every parameter outside the classifier."""
    head = {id(p) for p in model.get_classifier().parameters()}
    for param in model.parameters():
        if id(param) not in head:
            param.requires_grad_(not only)


def kept_init(report: LoadReport, shown: int = 6, fresh: Collection[str] = ()) -> str:
    """The model's tensors the checkpoint did not replace, named (the first ``shown``);
    those in ``fresh`` (meant to keep their init) left out."""
    names = [f"{name} {model} vs {file} in the file"
             for name, (model, file) in report.mismatched.items() if name not in fresh]
    names += [name for name in report.missing if name not in fresh]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def load_checkpoint(state, path: str | Path, who: str, fresh: Collection[str] = ()
                    ) -> LoadReport:
    """Start ``state.model`` from the weights file ``path``: every tensor whose name and
    shape match is copied, the others keep their init and are named in a warning (except
    ``fresh`` ones, meant to start anew: a classifier). A UserError when nothing matches.
    ``who`` (the technique) starts the messages. What transfer_learning and
    self_supervised_pretraining do."""
    from automl.checkpoints import load_matching, load_weights

    report = load_matching(state.model, load_weights(path))
    if not report.loaded:
        raise UserError(f"{who}: {path}: no tensor matches model {state.recipe.model} in "
                        "name and shape")
    kept = kept_init(report, fresh=fresh)
    if kept:
        log.warning("%s: %s: kept the model's own init for %s", who, path, kept)
    return report


class TransferLearning(Technique):
    """Transfer learning: start from a checkpoint's weights instead of a random init.

    Every tensor whose name and shape match is copied; the rest (a classifier for another
    number of classes) keeps its init and is named in a warning. The first `freeze_epochs`
    epochs train only the classifier, so a new head settles before it disturbs the loaded
    features. `checkpoint` is a path set in the space, never searched (relative to the working
    folder; `automl train` writes `model.pt`); it is read with `torch.load(weights_only=True)`,
    so a checkpoint cannot run code.

    Helps: small datasets and short budgets, when the checkpoint was trained on related images
    (a larger dataset, or an earlier run on this one).
    Suggested: freeze_epochs 0 for a checkpoint of the same classes; 1–3 for a new classifier.
    Source: Yosinski et al., "How transferable are features in deep neural networks?" (2014);
    Kornblith et al., "Do Better ImageNet Models Transfer Better?" (2019).
    """

    name = "transfer_learning"
    space = {"checkpoint": CategoricalDistribution([""]), "freeze_epochs": IntDistribution(0, 3)}
    defaults = {"checkpoint": "", "freeze_epochs": 0}
    limits = {"freeze_epochs": (0, None)}

    @classmethod
    def check_value(cls, param, value):
        """Any existing file is a valid checkpoint; other parameters as usual."""
        if param != "checkpoint":
            return super().check_value(param, value)
        if not isinstance(value, str) or not value:
            return f"expected the path of a weights file, got {value!r}"
        if not Path(value).is_file():
            return f"{value}: no such file"
        return None

    @hookimpl
    def modify_model(self, state):  # after weight_init (tryfirst), before surgery (trylast)
        path = self.params["checkpoint"]
        if not path:
            raise UserError("transfer_learning: no checkpoint given; set "
                            "techniques.transfer_learning.checkpoint to a weights file")
        state.extras["transfer_learning"] = load_checkpoint(state, path, self.name)

    @hookimpl
    def on_epoch_start(self, state):
        if self.params["freeze_epochs"]:
            train_only_classifier(state.model, state.epoch < self.params["freeze_epochs"])
