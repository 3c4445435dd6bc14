"""Can pruning be trusted? Rank correlation between early (rung) scores and final scores.

A pruner stops a trial from its score after a few epochs; that is only sound when early
scores rank trials the way their final scores do. The finished trials of a study answer it:
for each epoch, Spearman's rank correlation between the trials' scores at that epoch and
their final scores. :class:`TrustedRungPruner` prunes only at epochs where that correlation
has been seen to be high, and the search reports it so a user sees why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

__all__ = ["RungCorrelation", "TrustedRungPruner", "rung_correlations", "fidelity_lines",
           "FIRST_RUNG", "RUNG_TRUST", "TRUSTED_CORRELATION"]

FIRST_RUNG = "first_rung"  # study user attr: the earliest epoch a trial may be pruned at
RUNG_TRUST = "rung_trust"  # study user attr: the rank correlation pruning needs
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
            if t.intermediate_values and t.values]
    if not done:
        return []
    length = max(len(t.intermediate_values) for t in done)
    full = [t for t in done if len(t.intermediate_values) == length]
    out = []
    for epoch in range(1, length):
        pairs = [(t.intermediate_values[epoch], t.values[0]) for t in full
                 if epoch in t.intermediate_values]
        if len(pairs) < MIN_TRIALS or len({a for a, _ in pairs}) < 2 \
                or len({b for _, b in pairs}) < 2:
            continue
        rho = float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)
        if math.isfinite(rho):
            out.append(RungCorrelation(epoch, rho, len(pairs)))
    return out


class TrustedRungPruner(optuna.pruners.BasePruner):
    """Prunes only at epochs whose scores have been seen to rank trials like their final
    scores (Spearman's rho >= ``trust`` over the study's finished trials so far).

    The wrapped pruner (Hyperband, SHA, median) is always asked, so it keeps its own records
    (Hyperband's rung scores); its verdict stands only at a trusted epoch. Until enough
    trials have finished, nothing is pruned: the first trials of a study are the evidence.
    ``trust`` of -1 or less keeps the wrapped pruner's verdict everywhere.
    """

    def __init__(self, inner: optuna.pruners.BasePruner, trust: float = TRUSTED_CORRELATION):
        self.inner, self.trust = inner, trust
        self._cache: tuple[int, frozenset[int]] = (-1, frozenset())

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if not self.inner.prune(study, trial):
            return False
        return self.trust <= -1 or trial.last_step in self.trusted_epochs(study)

    def trusted_epochs(self, study: optuna.Study) -> frozenset[int]:
        """Epochs whose rank correlation with the final score reaches ``trust`` (recomputed
        when another trial has finished)."""
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if finished != self._cache[0]:
            self._cache = (finished, frozenset(c.epoch for c in rung_correlations(study)
                                               if c.rho >= self.trust))
        return self._cache[1]


def fidelity_lines(study: optuna.Study) -> list[str]:
    """What a user needs to judge the pruning of this study, in a few lines (none for a
    study with several metrics: it is never pruned)."""
    if len(study.directions) > 1:
        return []
    trust = study.user_attrs.get(RUNG_TRUST, TRUSTED_CORRELATION)
    found = rung_correlations(study)
    if not found:
        return []
    cells = "  ".join(f"epoch {c.epoch}: {c.rho:+.2f}" for c in found)
    lines = [f"rank correlation of early with final scores ({found[0].trials} finished "
             f"trials): {cells}"]
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
              if t.intermediate_values]
    if pruned:
        trusted = [c.epoch for c in found if c.rho >= trust]
        untrusted = [e for e in pruned_at(pruned) if e not in trusted]
        lines.append(f"pruning is trusted at epoch(s) {_epochs(trusted)} (rho >= {trust}); "
                     + (f"trials pruned at epoch(s) {_epochs(untrusted)} were judged before "
                        "the evidence was in (or by another pruner setting)" if untrusted
                        else "every pruned trial was stopped at a trusted epoch"))
    return lines


def pruned_at(trials: list[optuna.trial.FrozenTrial]) -> list[int]:
    """The distinct epochs at which these pruned trials stopped."""
    return sorted({max(t.intermediate_values) for t in trials})


def _epochs(epochs: list[int]) -> str:
    return ", ".join(map(str, epochs)) or "none"
