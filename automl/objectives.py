"""A study's objectives: the metrics it optimises, each one's direction, and the trial it
names best when there are several (the Pareto front).

``study.metric`` is one metric or a list. The metrics a study can name are the core's
(:data:`CORE_METRICS`) and ``val/<name>`` for every metric a technique declares in
``Technique.metrics`` (what its ``evaluate`` hook returns), provided that technique is on
in every trial (fixed on, or required): a trial without it would have no score. Each
metric's direction comes from where it is declared, so no study runs in a guessed direction.

Several metrics make a multi-objective study (Optuna's ``directions=[...]``): Optuna keeps
its Pareto front (the trials no other trial beats on every metric) and cannot prune it
(``Trial.report`` and ``should_prune`` are single-objective only), so pruning is off and the
search says so. One trial of the front is named best by a fixed rule (:func:`best_trial`):
the one best on the first metric. Everything that shows one score per trial (tables,
curves, technique effects, the margin over the baseline) shows the first metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    import torch
    from optuna.trial import FrozenTrial

    from automl.space import TechniqueSpace
    from automl.technique import Technique

__all__ = ["CORE_METRICS", "MODEL_PARAMS", "PRUNING_OFF", "CHOSEN_RULE", "MetricProblem",
           "MissingMetric",
           "parse_objectives", "model_metrics", "objective_values", "study_metrics",
           "is_multi_objective", "primary_value", "primary_maximizes", "pareto_front",
           "best_trial", "values_text", "format_metric", "front_lines"]

#: Parameter count of the trained model (unique tensors, frozen ones included): recorded
#: every epoch for every trial (:func:`model_metrics`), for accuracy against size.
MODEL_PARAMS = "model/params"
#: The metrics every training reports, and the way each improves.
CORE_METRICS = {"val/acc1": "maximize", "val/loss": "minimize",
                "val/balanced_acc": "maximize", MODEL_PARAMS: "minimize"}
PRUNING_OFF = ("pruning is off: Optuna cannot prune a study with several objectives "
               "(Trial.report and should_prune are single-objective only)")
CHOSEN_RULE = "the Pareto-optimal trial best on the first metric"
DIRECTIONS = ("maximize", "minimize")


class MissingMetric(LookupError):
    """A study's metric that a training did not report (a technique declared it in
    ``metrics`` but its ``evaluate`` hook did not return it): the trial fails, naming it."""


class MetricProblem(ValueError):
    """A ``study.metric`` or ``study.direction`` that cannot be used; ``key`` names which."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


def parse_objectives(metric: Any, direction: Any, techniques: Mapping[str, TechniqueSpace],
                     catalog: Mapping[str, type[Technique]]) -> tuple[list[str], list[str]]:
    """The metrics and their directions of a space's ``study:`` section, checked against the
    techniques the space has on in every trial; :class:`MetricProblem` otherwise."""
    names = metric if isinstance(metric, list) else [metric]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise MetricProblem("metric", f"expected a metric name or a list of them, got "
                                      f"{metric!r}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MetricProblem("metric", f"{twice[0]} is listed twice")
    available = _available(techniques)
    directions = [_direction(name, available, techniques, catalog) for name in names]
    given = direction if isinstance(direction, list) or direction is None else [direction]
    if given is not None:
        if len(given) != len(names) or any(d not in DIRECTIONS for d in given):
            wanted = "maximize or minimize" if len(names) == 1 else \
                f"a list of maximize/minimize, one per metric ({len(names)})"
            raise MetricProblem("direction", f"expected {wanted}, got {direction!r} (leave "
                                "it out: it follows the metric)")
        for name, natural, wanted in zip(names, directions, given, strict=True):
            if wanted != natural:
                raise MetricProblem("direction", f"{name} needs {natural}: {wanted!r} would "
                                    "keep the worst trial as the best (leave direction out: "
                                    "it follows the metric)")
    return names, directions


def _available(techniques: Mapping[str, TechniqueSpace]) -> dict[str, tuple[str, str]]:
    """``val/<name>`` -> (direction, technique) for the techniques on in every trial."""
    found: dict[str, tuple[str, str]] = {}
    for t in techniques.values():
        if t.enabled is True:
            for name, way in t.cls.metrics.items():
                found.setdefault(f"val/{name}", (way, t.name))
    return found


def _direction(name: str, available: dict[str, tuple[str, str]],
               techniques: Mapping[str, TechniqueSpace],
               catalog: Mapping[str, type[Technique]]) -> str:
    if name in CORE_METRICS:
        return CORE_METRICS[name]
    if name in available:
        return available[name][0]
    short = name.removeprefix("val/")
    owners = [cls.name for cls in catalog.values() if short in cls.metrics] \
        if name.startswith("val/") else []
    if owners:
        owner = owners[0]
        how = ("is searched on/off here" if owner in techniques and
               techniques[owner].enabled is None else
               "is off here" if owner in techniques else "is not in this space")
        raise MetricProblem("metric", f"{name} comes from technique '{owner}', which {how}: "
                            f"a trial without it has no {name}; fix it on "
                            f"(techniques: {owner}: {{enabled: true}})")
    valid = [*CORE_METRICS, *available]
    raise MetricProblem("metric", f"unknown metric {name!r}; valid: {', '.join(valid)} "
                        "(or val/<name> of a technique's declared metrics, with the technique "
                        "on in every trial)")


def model_metrics(model: torch.nn.Module) -> dict[str, float]:
    """The core's model metrics: its parameter count (tensor metadata only: no data pass,
    no device sync)."""
    return {MODEL_PARAMS: float(sum(p.numel() for p in model.parameters()))}


def objective_values(metrics: Mapping[str, float], names: Sequence[str]) -> list[float]:
    """The study's metrics out of one evaluation's, in order; a missing one is named."""
    missing = [n for n in names if n not in metrics]
    if missing:
        raise MissingMetric(f"{missing[0]} is not among this training's metrics "
                       f"({', '.join(sorted(metrics))}): the technique that declares it "
                       "must return it from its evaluate hook")
    return [float(metrics[n]) for n in names]


# --- reading a study ---------------------------------------------------------------------


def study_metrics(study: optuna.Study) -> list[str]:
    """The study's metrics, in order (a study from before lists were allowed: its one)."""
    stored = study.user_attrs.get("metrics")
    if isinstance(stored, list) and stored:
        return [str(m) for m in stored]
    return [str(study.user_attrs.get("metric", "value"))]


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def primary_value(trial: FrozenTrial) -> float | None:
    """The trial's value of the first metric (its only one in a single-objective study)."""
    return trial.values[0] if trial.values else None


def primary_maximizes(study: optuna.Study) -> bool:
    import optuna
    return study.directions[0] == optuna.study.StudyDirection.MAXIMIZE


def _signs(directions: Sequence[Any]) -> list[int]:
    """+1 for a maximised metric, -1 for a minimised one (bigger signed value: better)."""
    return [1 if getattr(d, "name", str(d)).lower() == "maximize" else -1 for d in directions]


def pareto_front(trials: Sequence[FrozenTrial], directions: Sequence[Any]) -> list[FrozenTrial]:
    """The completed trials no other completed trial dominates (at least as good on every
    metric, better on one), in trial order; without a storage read."""
    from optuna.trial import TrialState

    signs = _signs(directions)
    done = [(t, [s * v for s, v in zip(signs, t.values, strict=True)]) for t in trials
            if t.state == TrialState.COMPLETE and t.values is not None
            and all(math.isfinite(v) for v in t.values)]

    def dominated(a: list[float]) -> bool:
        return any(all(x >= y for x, y in zip(b, a, strict=True)) and b != a for _, b in done)

    return [t for t, signed in done if not dominated(signed)]


def best_trial(study: optuna.Study,
               trials: Sequence[FrozenTrial] | None = None) -> FrozenTrial:
    """The best trial: Optuna's ``best_trial`` for one metric; with several,
    :data:`CHOSEN_RULE` (ties: the next metric, then the lowest trial number). ValueError
    when no trial completed."""
    if not is_multi_objective(study):
        if trials is None:
            return study.best_trial
        front = pareto_front(trials, study.directions)
    else:
        front = pareto_front(study.get_trials(deepcopy=False) if trials is None else trials,
                             study.directions)
    if not front:
        raise ValueError("no trial has completed yet")
    signs = _signs(study.directions)
    return max(front, key=lambda t: ([s * v for s, v in zip(signs, t.values, strict=True)],
                                     -t.number))


def values_text(trial: FrozenTrial, metrics: Sequence[str]) -> str:
    """``val/acc1 0.9312, model/params 7.8e+04`` (``-`` for a trial without values)."""
    if not trial.values:
        return ", ".join(f"{m} -" for m in metrics)
    return ", ".join(f"{m} {format_metric(v)}" for m, v in zip(metrics, trial.values, strict=False))


def format_metric(value: float) -> str:
    """A metric's value as tables show it: 4 decimals, a large count (parameters, bytes)
    whole."""
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.0f}"


def front_lines(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None
                ) -> list[str]:
    """For a multi-objective study: its Pareto front, which trial is exported and how to
    export the others; [] for a single-objective one."""
    if not is_multi_objective(study):
        return []
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    metrics = study_metrics(study)
    front = pareto_front(trials, study.directions)
    if not front:
        return [f"Pareto front ({', '.join(metrics)}): none yet (no trial finished)"]
    chosen = best_trial(study, trials)
    lines = [f"Pareto front: {len(front)} trial(s) that no other trial beats on every metric"]
    for t in sorted(front, key=lambda t: ([-s * v for s, v in zip(
            _signs(study.directions), t.values, strict=True)], t.number)):
        mark = "  <- best_recipe.yaml" if t.number == chosen.number else ""
        lines.append(f"  trial {t.number:>3}  {values_text(t, metrics)}{mark}")
    others = "; another trial of the front: automl export --trial N" if len(front) > 1 else ""
    lines.append(f"exported: trial {chosen.number}, {CHOSEN_RULE} ({metrics[0]}){others}")
    return lines
