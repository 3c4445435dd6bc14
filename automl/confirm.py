"""Selection that is not luck: re-run the best trials with more seeds before naming the best.

A trial's score is one draw: on a small validation split its standard error is a few points,
so the top of a search is partly the luckiest trials. After the budget, the top ``K``
finished trials (and the baseline) are trained again with ``S`` other training seeds (and,
where asked, other validation splits); the best is the one with the best mean, and the
verdict says when it is within noise of the runner-up or of the baseline.

Results live in the study (user attr ``confirmations``), written after every run, so a
resumed search continues where it stopped and ``automl show`` can print them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

import optuna
from optuna.trial import FrozenTrial, TrialState

from automl.objectives import best_trial, primary_value
from automl.recipe import Recipe

__all__ = ["CONFIRMATIONS", "CONFIRMED_BEST", "Candidate", "candidates", "confirm",
           "chosen_trial", "verdict", "confirmation_recipe"]

#: study user attr: {trial number: [{seed, split_seed, value, epochs}, ...]}
CONFIRMATIONS = "confirmations"
CONFIRMED_BEST = "confirmed_best"  # study user attr: the trial named best after confirmation

#: ``train_once(recipe) -> (final score or NaN when the run failed, epochs trained)``
TrainOnce = Callable[[Recipe], tuple[float, int]]


@dataclass
class Candidate:
    """One confirmed trial: its own score first, then each confirmation run's."""

    number: int
    values: list[float]
    baseline: bool = False

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(len(self.values))

    def text(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f} (n={len(self.values)})"


def candidates(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The ``top`` best finished trials with distinct parameters, then the baseline."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best_first = sorted(done, key=primary_value,
                        reverse=study.directions[0] == optuna.study.StudyDirection.MAXIMIZE)
    picked: list[FrozenTrial] = []
    for trial in best_first:
        if len(picked) < top and all(trial.params != p.params for p in picked):
            picked.append(trial)
    baseline = [t for t in done if t.user_attrs.get("baseline")]
    if picked and baseline and baseline[0] not in picked:
        picked.append(baseline[0])
    return picked


def confirmation_recipe(recipe: Recipe, run: int, splits: bool) -> Recipe:
    """The recipe of confirmation run ``run`` (1, 2, ...): another training seed, and with
    ``splits`` another validation split."""
    data = dict(recipe.data)
    if splits:
        data["split_seed"] = data.get("split_seed", 0) + run
    return replace(recipe, seed=recipe.seed + run, data=data)


def confirm(study: optuna.Study, top: int, seeds: int, splits: bool, train_once: TrainOnce,
            note: Callable[[str], None]) -> list[Candidate]:
    """Run the missing confirmation runs, record them, and name the best by its mean."""
    stored: dict[str, list[dict]] = dict(study.user_attrs.get(CONFIRMATIONS, {}))
    picked = candidates(study, top)
    if not picked:
        return []
    todo = sum(max(0, seeds - len(stored.get(str(t.number), []))) for t in picked)
    if todo:
        note(f"confirming the top {len(picked)} trial(s) with {seeds} more seed(s) each "
             f"({todo} run(s))")
    for trial in picked:
        runs = list(stored.get(str(trial.number), []))
        for run in range(len(runs) + 1, seeds + 1):
            recipe = confirmation_recipe(Recipe.from_dict(trial.user_attrs["recipe"]), run,
                                         splits)
            value, epochs = train_once(recipe)
            runs.append({"seed": recipe.seed, "split_seed": recipe.data.get("split_seed", 0),
                         "value": value if math.isfinite(value) else None, "epochs": epochs})
            stored[str(trial.number)] = runs
            study.set_user_attr(CONFIRMATIONS, stored)
            note(f"confirm trial {trial.number:>3}  seed {recipe.seed}  "
                 + (f"{value:.4f}" if math.isfinite(value) else "failed"))
    found = confirmed(study)
    if found:
        study.set_user_attr(CONFIRMED_BEST, _ranked(found, study.directions[0])[0].number)
    return found


def confirmed(study: optuna.Study) -> list[Candidate]:
    """The study's confirmed trials, from its records."""
    stored = study.user_attrs.get(CONFIRMATIONS, {})
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    found = []
    for number, runs in stored.items():
        trial = by_number.get(int(number))
        if trial is None or primary_value(trial) is None:
            continue
        values = [primary_value(trial)] + [math.nan if r["value"] is None else r["value"]
                                           for r in runs]
        found.append(Candidate(trial.number, values, bool(trial.user_attrs.get("baseline"))))
    return found


def _ranked(found: list[Candidate], direction) -> list[Candidate]:
    """Best mean first; a candidate with a failed run ranks after every one without."""
    sign = -1 if direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(found, key=lambda c: (math.isnan(c.mean), sign * c.mean
                                        if not math.isnan(c.mean) else 0, c.number))


def chosen_trial(study: optuna.Study) -> FrozenTrial:
    """The trial a search names best: the confirmed one when there is one, else the best
    single score, or with several metrics the Pareto-optimal trial best on the first
    (:func:`automl.objectives.best_trial`); ValueError when no trial completed."""
    number = study.user_attrs.get(CONFIRMED_BEST)
    if number is not None:
        for trial in study.get_trials(deepcopy=False):
            if trial.number == number:
                return trial
    return best_trial(study)


def verdict(study: optuna.Study) -> list[str]:
    """Lines for the user: each confirmed trial's mean ± std, and whether the winner is
    clear of the runner-up and of the baseline (difference over 2 standard errors)."""
    found = confirmed(study)
    if not found:
        return []
    found = _ranked(found, study.directions[0])
    metric = study.user_attrs.get("metric", "value")
    lines = [f"confirmed ({metric}, mean ± std over the trial's own run and its re-runs):"]
    for c in found:
        lines.append(f"  trial {c.number:>3}{' (baseline)' if c.baseline else '':<11} "
                     f"{c.text()}")
    best = found[0]
    for other, label in [(c, "the runner-up") for c in found[1:2] if not c.baseline] + \
                        [(c, "the baseline") for c in found if c.baseline and c is not best]:
        lines.append(f"  trial {best.number} vs {label} (trial {other.number}): "
                     + _difference(best, other))
    return lines


def _difference(a: Candidate, b: Candidate) -> str:
    diff = a.mean - b.mean
    se = math.sqrt(a.sem ** 2 + b.sem ** 2)
    if math.isnan(diff):
        return "not comparable (a run failed)"
    clear = abs(diff) > 2 * se and se > 0
    return (f"{diff:+.4f} ({'clear of' if clear else 'within'} noise: 2 × standard error "
            f"= {2 * se:.4f})")
