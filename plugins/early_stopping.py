from __future__ import annotations

from optuna.distributions import CategoricalDistribution, IntDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

#: Monitored metric -> whether lower values are better.
MONITORS = {"val/acc1": False, "val/loss": True}


def epochs_since_best(values: list[float], lower_is_better: bool) -> int:
    """Epochs since the best value (the first one reached); 0 when the last is the best.

    Only a strict improvement counts: a tie with the best is not progress.
    """
    best = 0
    for i, value in enumerate(values):
        if (value < values[best]) if lower_is_better else (value > values[best]):
            best = i
    return len(values) - 1 - best


class EarlyStopping(Technique):
    """Early stopping: end training when the validation metric stops improving.

    Helps: saves compute on runs that have plateaued or started to overfit; training stops
    after ``patience`` epochs without a strict improvement of ``monitor`` (val/loss: lower is
    better). The model keeps the weights it stopped with, not those of its best epoch.
    Suggested: patience 2–5 epochs (longer for noisy metrics or schedules with restarts).
    Source: Prechelt, "Early Stopping - But When?" (1998).
    """

    name = "early_stopping"
    space = {
        "patience": IntDistribution(1, 5),
        "monitor": CategoricalDistribution(list(MONITORS)),
    }
    defaults = {"patience": 2, "monitor": "val/acc1"}
    limits = {"patience": (1, 1000)}

    @hookimpl
    def on_validation(self, state, metrics):
        monitor = self.params["monitor"]
        values = state.extras.setdefault("early_stopping", [])
        values.append(metrics[monitor])
        patience = self.params["patience"]
        if epochs_since_best(values, MONITORS[monitor]) >= patience:
            state.stop_training = True
            state.stop_reason = (f"early stopping: {monitor} did not improve for {patience} "
                                 f"epoch{'s' if patience > 1 else ''}")
