"""What a finished study says, as numbers: progress, learning curves, each technique's effect,
parameter importance, the baseline against the best, and why trials failed.

``automl report`` draws these (:mod:`automl.html_report`); they live here, free of any
plotting library, so that they can be tested, and read from code, without the report extra.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from automl.objectives import (
    best_trial,
    is_multi_objective,
    pareto_front,
    primary_value,
    study_metrics,
)

__all__ = ["StudySummary", "TrialRow", "Progress", "Effect", "Contender", "FailureGroup",
           "summarize", "trial_rows", "space_techniques", "best_so_far", "technique_effects",
           "welch_interval", "param_importances", "contenders", "failure_groups",
           "format_value", "values_text", "MIN_IMPORTANCE_TRIALS", "CONFIDENCE"]

#: fANOVA on fewer finished trials rates noise; below this the report says so instead.
MIN_IMPORTANCE_TRIALS = 4
CONFIDENCE = 0.95  # of the technique-effect intervals


@dataclass
class TrialRow:
    """One trial as the report lists it."""

    number: int
    state: str  # complete, pruned, fail, running, waiting
    score: float | None  # the final value, or for a pruned trial its last reported score
    epochs: int
    seconds: float | None
    label: str  # "baseline", "known recipe NAME" or ""
    techniques: dict[str, dict]  # the enabled techniques with their values (its recipe)
    reason: str | None  # why it failed or ended early
    curve: list[tuple[int, float]]  # (epoch, score) as reported to the pruner

    @property
    def pruned_at(self) -> int | None:
        """The epoch a pruned trial was stopped after (its last reported one)."""
        return self.curve[-1][0] if self.state == "pruned" and self.curve else None

    def technique_text(self, name: str) -> str:
        """``off``, ``on``, or the technique's values: ``schedule=cosine, warmup=0.12``."""
        if name not in self.techniques:
            return "off"
        return values_text(self.techniques[name]) or "on"


@dataclass
class Progress:
    """A finished trial on the best-so-far curve: when it ended and the best up to it."""

    number: int
    elapsed: float  # seconds from the study's first trial start to this trial's end
    value: float
    best: float


@dataclass
class Effect:
    """One optional technique: the score of finished trials with it on against off."""

    technique: str
    on: list[float]
    off: list[float]
    difference: float | None = None  # mean on - mean off
    low: float | None = None  # the CONFIDENCE interval of the difference (Welch's t)
    high: float | None = None
    note: str = ""  # "no contrast", "too few trials for an interval", ...

    @property
    def mean_on(self) -> float | None:
        return statistics.fmean(self.on) if self.on else None

    @property
    def mean_off(self) -> float | None:
        return statistics.fmean(self.off) if self.off else None

    def verdict(self, maximize: bool) -> str:
        """``helps`` / ``hurts`` when the interval excludes 0, else ``unclear``."""
        if self.low is None or self.high is None:
            return self.note or "unclear"
        if self.low > 0 or self.high < 0:
            better = (self.low > 0) == maximize
            return "helps" if better else "hurts"
        return "unclear (the interval spans 0)"


@dataclass
class Contender:
    """A trial the report compares: the baseline, the best single score, the confirmed one."""

    role: str
    number: int
    value: float
    techniques: dict[str, dict]
    runs: list[float] = field(default_factory=list)  # its value and its confirmation runs
    failed_runs: int = 0  # confirmation runs that failed (not in ``runs``)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.runs) if self.runs else self.value

    @property
    def std(self) -> float:
        return statistics.stdev(self.runs) if len(self.runs) > 1 else 0.0

    def runs_text(self) -> str:
        """``0.8345 ± 0.0813 (n=2)``, with failed runs counted; empty when not confirmed."""
        if not self.runs or len(self.runs) + self.failed_runs < 2:
            return ""
        failed = f", {self.failed_runs} failed" if self.failed_runs else ""
        return f"{self.mean:.4f} ± {self.std:.4f} (n={len(self.runs)}{failed})"


@dataclass
class FailureGroup:
    """Trials that failed (or ended early) for the same reason."""

    state: str
    reason: str
    trials: list[int]


@dataclass
class StudySummary:
    """Everything the report shows, computed once."""

    name: str
    metric: str
    maximize: bool
    counts: dict[str, int]
    techniques: list[str]
    rows: list[TrialRow]
    by_trial: list[Progress]
    by_time: list[Progress]
    effects: list[Effect]
    importances: dict[str, float]
    importance_note: str
    contenders: list[Contender]
    failures: list[FailureGroup]
    #: Every metric of the study (several: ``metric`` is the first, and ``front`` holds the
    #: Pareto front as (trial, its values), the chosen trial first).
    metrics: list[str] = field(default_factory=list)
    front: list[tuple[int, list[float]]] = field(default_factory=list)


def summarize(study: optuna.Study) -> StudySummary:
    trials = study.get_trials(deepcopy=False)
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    counts: dict[str, int] = defaultdict(int)
    for t in trials:
        counts[_state(t)] += 1
    importances, note = param_importances(study)
    return StudySummary(
        name=study.study_name, metric=study.user_attrs.get("metric", "value"),
        maximize=maximize, counts=dict(counts), techniques=space_techniques(study),
        rows=trial_rows(study), by_trial=best_so_far(study, "trial"),
        by_time=best_so_far(study, "time"), effects=technique_effects(study),
        importances=importances, importance_note=note, contenders=contenders(study),
        failures=failure_groups(study), metrics=study_metrics(study),
        front=pareto_rows(study, trials))


def pareto_rows(study: optuna.Study, trials: list[FrozenTrial]) -> list[tuple[int, list[float]]]:
    """A multi-objective study's Pareto front as (trial, values), the trial named best
    (:data:`automl.objectives.CHOSEN_RULE`) first; [] for one metric."""
    if not is_multi_objective(study):
        return []
    front = pareto_front(trials, study.directions)
    if not front:
        return []
    chosen = best_trial(study, trials).number
    front.sort(key=lambda t: (t.number != chosen, t.number))
    return [(t.number, list(t.values)) for t in front]


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """Every trial of the study, in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        label = ("baseline" if t.user_attrs.get("baseline") else
                 f"known recipe {t.user_attrs['warm_start']}" if "warm_start" in t.user_attrs
                 else "")
        curve = sorted(t.intermediate_values.items())
        rows.append(TrialRow(
            number=t.number, state=_state(t), score=_score(t),
            epochs=t.user_attrs.get("epochs_run", len(curve)), seconds=_seconds(t),
            label=label, techniques=_techniques(t),
            reason=t.user_attrs.get("fail_reason") if t.state != TrialState.COMPLETE else None,
            curve=curve))
    return rows


def space_techniques(study: optuna.Study) -> list[str]:
    """The techniques of the study's space, in its order (from the stored space definition;
    for an older study, every technique some trial's recipe used)."""
    definition = study.user_attrs.get("space_definition") or {}
    names = [key.removesuffix(".enabled") for key in definition if key.endswith(".enabled")]
    if names:
        return names
    seen: dict[str, None] = {}
    for t in study.get_trials(deepcopy=False):
        seen.update(dict.fromkeys(_techniques(t)))
    return list(seen)


def best_so_far(study: optuna.Study, by: str = "trial") -> list[Progress]:
    """The finished (complete) trials in trial order (``by="trial"``) or in the order they
    ended (``by="time"``), each with the best value up to and including it."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    first = min(starts, default=None)
    if by == "time":
        done.sort(key=lambda t: (t.datetime_complete or datetime.max, t.number))
    elif by != "trial":
        raise ValueError(f"by must be 'trial' or 'time', not {by!r}")
    better = max if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else min
    progress: list[Progress] = []
    best = None
    for t in done:
        value = primary_value(t)
        best = value if best is None else better(best, value)
        elapsed = ((t.datetime_complete - first).total_seconds()
                   if first and t.datetime_complete else math.nan)
        progress.append(Progress(t.number, elapsed, value, best))
    return progress


def technique_effects(study: optuna.Study, confidence: float = CONFIDENCE) -> list[Effect]:
    """Each technique of the space: the finished (complete) trials' values with it on against
    off, the difference of the means and its ``confidence`` interval (Welch's t: the two
    groups may differ in size and spread). A technique on in every finished trial, or in
    none, has no contrast."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    effects = []
    for name in space_techniques(study):
        on = [primary_value(t) for t in done if name in _techniques(t)]
        off = [primary_value(t) for t in done if name not in _techniques(t)]
        effect = Effect(name, on, off)
        if not on or not off:
            effect.note = "no contrast" + (f" (on in all {len(on)})" if on else
                                           f" (off in all {len(off)})" if off else "")
        else:
            effect.difference = statistics.fmean(on) - statistics.fmean(off)
            interval = welch_interval(on, off, confidence)
            if interval is None:
                effect.note = "too few trials for an interval (needs 2 on and 2 off)"
            else:
                effect.low, effect.high = interval
        effects.append(effect)
    return effects


def welch_interval(a: list[float], b: list[float],
                   confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The ``confidence`` interval of mean(a) - mean(b) by Welch's t (unequal variances,
    Welch–Satterthwaite degrees of freedom); None with fewer than two values in a group."""
    from scipy.stats import t as student_t

    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(student_t.ppf(0.5 + confidence / 2, df)) * se
    return diff - half, diff + half


def param_importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """Optuna's fANOVA importances (seeded, so a report is reproducible) and a note for the
    reader; empty, with the reason in the note, when the study is too small to rate."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return {}, (f"not computed: {len(done)} finished trial(s); parameter importance needs "
                    f"at least {MIN_IMPORTANCE_TRIALS}")
    target = primary_value if is_multi_objective(study) else None  # the first metric's
    try:
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                      target=target)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return {}, f"not computed: {exc}"
    found = {k: float(v) for k, v in found.items() if math.isfinite(v)}
    if not found:
        return {}, ("not computed: no parameter varies across the finished trials "
                    "(only parameters sampled in every one of them can be rated)")
    return found, (f"fANOVA (Optuna) over {len(done)} finished trials; only parameters "
                   "sampled in every finished trial are rated (a technique's own settings "
                   "are not when it is sometimes off: see the effects above)"
                   + ("; with so few trials, a rough guide" if len(done) < 20 else ""))


def contenders(study: optuna.Study) -> list[Contender]:
    """The baseline, the best single score and (after confirmation) the confirmed winner,
    with the confirmation runs of those that have them."""
    from automl.confirm import CONFIRMED_BEST, confirmed

    runs = {c.number: c.values for c in confirmed(study)}
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    found: list[Contender] = []

    def add(role: str, trial: FrozenTrial | None) -> None:
        if trial is not None and primary_value(trial) is not None:
            values = runs.get(trial.number, [])
            finite = [v for v in values if math.isfinite(v)]
            found.append(Contender(role, trial.number, primary_value(trial), _techniques(trial),
                                   finite, len(values) - len(finite)))

    add("baseline", next((t for t in by_number.values() if t.user_attrs.get("baseline")
                          and t.state == TrialState.COMPLETE), None))
    try:
        add("best single score", best_trial(study))  # several metrics: of the first
    except ValueError:  # no completed trial
        pass
    if study.user_attrs.get(CONFIRMED_BEST) is not None:
        add("confirmed winner", by_number.get(study.user_attrs[CONFIRMED_BEST]))
    return found


def failure_groups(study: optuna.Study) -> list[FailureGroup]:
    """Failed trials grouped by reason, then pruned trials that say why they ended early (a
    duplicate, a diverged run), most frequent first."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for t in study.get_trials(deepcopy=False):
        reason = t.user_attrs.get("fail_reason")
        if t.state == TrialState.FAIL:
            groups[("fail", reason or "no reason recorded")].append(t.number)
        elif t.state == TrialState.PRUNED and reason:
            groups[("pruned", reason)].append(t.number)
    found = [FailureGroup(state, reason, numbers) for (state, reason), numbers in groups.items()]
    return sorted(found, key=lambda g: (g.state != "fail", -len(g.trials), g.reason))


def values_text(values: dict) -> str:
    """A technique's values by name: ``schedule=cosine, warmup=0.12``."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in values.items())


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _state(trial: FrozenTrial) -> str:
    return trial.state.name.lower()


def _score(trial: FrozenTrial) -> float | None:
    if trial.values:
        return primary_value(trial)
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def _seconds(trial: FrozenTrial) -> float | None:
    if "seconds" in trial.user_attrs:
        return float(trial.user_attrs["seconds"])
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def _techniques(trial: FrozenTrial) -> dict[str, dict]:
    """The techniques a trial trained with, from its stored recipe (on ones only)."""
    recipe = trial.user_attrs.get("recipe") or {}
    return {name: {k: v for k, v in params.items() if k != "enabled"}
            for name, params in recipe.get("techniques", {}).items()
            if params.get("enabled", True)}
