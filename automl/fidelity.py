"""Can pruning be trusted? Rank correlation between early (rung) scores and final scores.

A pruner stops a trial from its score after a few epochs; that is only sound when early
scores rank trials the way their final scores do. The finished trials of a study answer it:
for each epoch, Spearman's rank correlation between the trials' scores at that epoch and
their final scores. A low correlation at the first rung says "prune later" (``--min-resource``)
or not at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

__all__ = ["RungCorrelation", "rung_correlations", "fidelity_lines", "FIRST_RUNG",
           "TRUSTED_CORRELATION"]

FIRST_RUNG = "first_rung"  # study user attr: the epoch of the first pruning decision
#: Below this, a rung's ranking is too unlike the final one to prune from (Spearman's rho).
TRUSTED_CORRELATION = 0.5
MIN_TRIALS = 5  # fewer finished trials give no usable correlation


@dataclass
class RungCorrelation:
    epoch: int
    rho: float
    trials: int


def rung_correlations(study: optuna.Study) -> list[RungCorrelation]:
    """Spearman's rho of every epoch's scores against the final scores, over the completed
    trials that ran the same number of epochs (fewer than ``MIN_TRIALS``: none)."""
    from scipy.stats import spearmanr

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.intermediate_values and t.value is not None]
    if not done:
        return []
    length = max(len(t.intermediate_values) for t in done)
    full = [t for t in done if len(t.intermediate_values) == length]
    out = []
    for epoch in range(1, length):
        pairs = [(t.intermediate_values[epoch], t.value) for t in full
                 if epoch in t.intermediate_values]
        if len(pairs) < MIN_TRIALS or len({a for a, _ in pairs}) < 2 \
                or len({b for _, b in pairs}) < 2:
            continue
        rho = float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)
        if math.isfinite(rho):
            out.append(RungCorrelation(epoch, rho, len(pairs)))
    return out


def fidelity_lines(study: optuna.Study) -> list[str]:
    """What a user needs to judge the pruning of this study, in a few lines."""
    found = rung_correlations(study)
    if not found:
        return []
    first = study.user_attrs.get(FIRST_RUNG)
    cells = "  ".join(f"epoch {c.epoch}: {c.rho:+.2f}" for c in found)
    lines = [f"rank correlation of early with final scores ({found[0].trials} finished "
             f"trials): {cells}"]
    at_rung = [c for c in found if c.epoch == first]
    pruned = sum(t.state == TrialState.PRUNED for t in study.get_trials(deepcopy=False))
    if at_rung and pruned:
        rho = at_rung[0].rho
        trust = "can be trusted" if rho >= TRUSTED_CORRELATION else \
            "may have dropped good trials: raise --min-resource or use --pruner none"
        lines.append(f"pruning from epoch {first} (rho {rho:+.2f}) {trust}")
    return lines
