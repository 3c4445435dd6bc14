"""What the user sees: live search progress and tables of trials."""

from __future__ import annotations

import logging
import sys
import time

import click
import optuna
from optuna.trial import FrozenTrial, TrialState

from automl.objectives import (
    PRUNING_OFF,
    best_trial,
    format_metric,
    front_lines,
    is_multi_objective,
    pareto_front,
    primary_value,
    study_metrics,
    values_text,
)
from automl.recipe import Recipe

__all__ = ["ConsoleReporter", "SilentReporter", "trials_table", "ranked_trials", "format_table",
           "show_warnings", "summary_lines", "trial_details", "why_ended"]


def show_warnings() -> None:
    """Print the library's warnings (logger ``automl``) on stderr as ``warning: ...`` lines."""
    logger = logging.getLogger("automl")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


class SilentReporter:
    """The Reporter protocol, saying nothing: for searches run from code (tests, benchmarks);
    subclass it to watch one event."""

    def search_start(self, study, settings, todo) -> None: ...
    def trial_start(self, trial, recipe) -> None: ...
    def epoch(self, trial, epoch, epochs, metrics) -> None: ...
    def trial_end(self, study, trial, new_best) -> None: ...
    def note(self, text) -> None: ...


class ConsoleReporter:
    """One line per finished trial; on a terminal the running trial's epoch line updates live."""

    #: Without a terminal, an epoch line is printed when this long passed since the last line,
    #: so long trials show progress and short ones stay quiet.
    QUIET_SECONDS = 10.0

    def __init__(self, metric: str, live: bool | None = None):
        self.metric = metric
        self.live = sys.stdout.isatty() if live is None else live
        self.started = self.last_line = time.perf_counter()

    def search_start(self, study, settings, todo) -> None:
        done = sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
        resumed = f", resuming with {done} trial(s) done" if done else ""
        if settings.multi_objective:
            objectives = "metrics " + ", ".join(
                f"{m} ({d})" for m, d in zip(settings.metrics, settings.directions, strict=True))
            pruning = f"; {PRUNING_OFF}"
        else:
            objectives, pruning = f"metric {self.metric} ({settings.direction})", ""
        ranks = (f", {settings.gpus_per_trial} data-parallel ranks per trial"
                 if settings.gpus_per_trial > 1 else "")
        click.echo(f"study '{settings.study_name}' in {settings.run_dir}{resumed}: "
                   f"{todo} trial(s) to run, sampler {settings.sampler}, "
                   f"pruner {'none' if pruning else settings.pruner}, {objectives}{pruning}"
                   f"{ranks}")

    def trial_start(self, trial: optuna.Trial, recipe: Recipe) -> None:
        self._trial_started = time.perf_counter()

    def epoch(self, trial: optuna.Trial, epoch: int, epochs: int, metrics: dict) -> None:
        text = (f"trial {trial.number:>3}  epoch {epoch:>3}/{epochs}  "
                f"{self.metric} {metrics[self.metric]:.4f}  {self._best_text(trial.study)}")
        if self.live:
            click.echo(f"\r\033[K{text}", nl=False)
        elif time.perf_counter() - self.last_line > self.QUIET_SECONDS:
            click.echo(text)
            self.last_line = time.perf_counter()

    def note(self, text: str) -> None:
        """A line about the search as a whole (warm start, confirmation runs)."""
        click.echo(text)

    def trial_end(self, study: optuna.Study, trial: FrozenTrial, new_best: bool) -> None:
        if self.live:
            click.echo("\r\033[K", nl=False)
        multi = is_multi_objective(study)
        value = (values_text(trial, study_metrics(study)) if multi
                 else f"{self.metric} {_value(trial)}")
        state = {TrialState.COMPLETE: "done", TrialState.PRUNED: "pruned",
                 TrialState.FAIL: "failed"}.get(trial.state, trial.state.name.lower())
        epochs = trial.user_attrs.get("epochs_run", len(trial.intermediate_values))
        base = " (baseline)" if trial.user_attrs.get("baseline") else (
            f" (known recipe {trial.user_attrs['warm_start']})"
            if "warm_start" in trial.user_attrs else "")
        mark = ("  * on the Pareto front" if multi else "  * new best") if new_best else ""
        why = why_ended(trial)
        if why:
            mark += f"  ({why})"
        seconds = time.perf_counter() - getattr(self, "_trial_started", self.started)
        click.echo(f"trial {trial.number:>3}  {state:<6}  epochs {epochs:>3}  "
                   f"{value}  {self._best_text(study)}  "
                   f"{seconds:5.1f}s{base}{mark}")
        self.last_line = time.perf_counter()

    @staticmethod
    def _best_text(study: optuna.Study) -> str:
        try:
            best = best_trial(study)
        except ValueError:
            return "best -"
        return f"best {primary_value(best):.4f} (trial {best.number})"


def _score(trial: FrozenTrial) -> float | None:
    """The final value (of the first metric), or for a pruned trial its last reported
    score."""
    if trial.values:
        return primary_value(trial)
    if trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def _value(trial: FrozenTrial) -> str:
    score = _score(trial)
    return "   -  " if score is None else f"{score:.4f}"


def ranked_trials(study: optuna.Study, top: int | None = None) -> list[FrozenTrial]:
    """Finished trials, best first (complete ones by value, then pruned by last score;
    with several metrics, the Pareto front first, each group by the first metric)."""
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    front = {t.number for t in pareto_front(trials, study.directions)} \
        if is_multi_objective(study) else set()

    def key(t: FrozenTrial):
        score = _score(t)
        score = float("-inf") if score is None else (score if maximize else -score)
        return (t.state == TrialState.COMPLETE, t.number in front, score)

    trials.sort(key=key, reverse=True)
    return trials[:top] if top else trials


def why_ended(trial: FrozenTrial) -> str | None:
    """Why a trial ended before its last epoch (early stopping, a duplicate, pruned,
    diverged) or failed; None for a trial that trained to the end."""
    why = trial.user_attrs.get("ended_early")
    if why is None and trial.state != TrialState.COMPLETE:
        why = trial.user_attrs.get("fail_reason")
    return why


def trials_table(study: optuna.Study, metric: str, top: int = 5) -> str:
    """A text table of the best trials with their techniques and parameters by name; a
    trial that ended early has its reason on the line below. With several metrics, one
    column each, and the Pareto front's trials marked."""
    metrics = study_metrics(study) if is_multi_objective(study) else [metric]
    trials = ranked_trials(study, top)
    front = {t.number for t in pareto_front(study.get_trials(deepcopy=False),
                                            study.directions)} if len(metrics) > 1 else set()
    rows = [["trial", "state", *metrics, "epochs", "techniques"]]
    notes = {}
    for t in trials:
        recipe = t.user_attrs.get("recipe", {})
        state = t.state.name.lower() + (" (front)" if t.number in front else "")
        scores = [_value(t)] if len(metrics) == 1 else _values(t, len(metrics))
        rows.append([str(t.number) + ("*" if t.user_attrs.get("baseline") else ""),
                     state, *scores,
                     str(t.user_attrs.get("epochs_run", len(t.intermediate_values))),
                     _techniques_text(recipe.get("techniques", {}))])
        if why_ended(t):
            notes[len(rows) - 1] = f"      ended early: {why_ended(t)}"
    lines = format_table(rows).split("\n")
    for row in sorted(notes, reverse=True):
        lines.insert(row + 1, notes[row])
    return "\n".join(lines) + "\n(* = baseline: the space's defaults)"


def _values(trial: FrozenTrial, count: int) -> list[str]:
    """Each metric's final value; a pruned or failed trial has none."""
    if not trial.values:
        return ["   -  "] * count
    return [format_metric(v) for v in trial.values]


def _techniques_text(techniques: dict) -> str:
    """``lr_schedule(schedule=cosine, warmup=0.12) mixup(alpha=0.2)``."""
    parts = []
    for name, params in techniques.items():
        values = ", ".join(f"{k}={_short(v)}" for k, v in params.items() if k != "enabled")
        parts.append(f"{name}({values})" if values else name)
    return " ".join(parts)


def summary_lines(study: optuna.Study, where: str | None = None) -> list[str]:
    """How the search went, for the end of ``automl search`` and ``automl show``: the trials
    by how they ended, the best against the baseline with the margin, and where the failed
    trials' tracebacks are."""
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    counts = (f"{count[TrialState.COMPLETE]} finished, {count[TrialState.PRUNED]} pruned, "
              f"{count[TrialState.FAIL]} failed")
    for state in (TrialState.RUNNING, TrialState.WAITING):
        if count[state]:
            counts += f", {count[state]} {state.name.lower()}"
    early = sum(t.state == TrialState.COMPLETE and "ended_early" in t.user_attrs for t in trials)
    if early:
        counts += f" ({early} of the finished ended early)"
    lines = [f"study '{study.study_name}'{f' in {where}' if where else ''}: {len(trials)} "
             f"trials: {counts}"]
    lines.append(_against_baseline(study, trials))
    lines += front_lines(study, trials)  # several metrics: the Pareto front
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    if failed:
        lines.append(f"failed: trial(s) {', '.join(map(str, failed[:10]))}"
                     f"{' ...' if len(failed) > 10 else ''}; reason and traceback: "
                     f"automl show --trial {failed[-1]}")
    return lines


def _against_baseline(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    from automl.confirm import chosen_trial

    metric = study.user_attrs.get("metric", "value")
    try:
        best = chosen_trial(study)
    except ValueError:
        return "best: none yet (no trial finished)"
    base = next((t for t in trials if t.user_attrs.get("baseline")), None)
    head = f"best: trial {best.number}, {metric} {primary_value(best):.4f}"
    if base is None:
        return f"{head}; no baseline trial in this study"
    if base.number == best.number:
        return f"{head}: the baseline (the space's defaults); no searched recipe beat it"
    if base.state != TrialState.COMPLETE:
        return f"{head}; the baseline (trial {base.number}) {_ended_text(base)}, no margin"
    best_value, base_value = primary_value(best), primary_value(base)
    diff = best_value - base_value
    better = diff > 0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE \
        else diff < 0
    relative = f", {abs(diff) / abs(base_value):.1%}" if base_value else ""
    return (f"{head}; baseline (trial {base.number}) {base_value:.4f}: the best is "
            f"{'better' if better else 'no better'} by {abs(diff):.4f}{relative}")


def _ended_text(trial: FrozenTrial) -> str:
    return {TrialState.PRUNED: "was pruned", TrialState.FAIL: "failed",
            TrialState.RUNNING: "is running", TrialState.WAITING: "has not run yet"
            }.get(trial.state, trial.state.name.lower())


def trial_details(study: optuna.Study, number: int) -> str:
    """Everything stored about one trial, for ``automl show --trial N``: how it ended and
    why, its recipe's techniques and parameters, its scores per epoch, its final metrics,
    and a failed trial's traceback from its log file."""
    from pathlib import Path

    from automl.errors import UserError

    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None:
        raise UserError(f"study '{study.study_name}' has no trial {number} "
                        f"(it has 0..{len(study.trials) - 1})")
    attrs = trial.user_attrs
    metric = study.user_attrs.get("metric", "value")
    label = (" (baseline)" if attrs.get("baseline") else
             f" (known recipe {attrs['warm_start']})" if "warm_start" in attrs else "")
    state = "failed" if trial.state == TrialState.FAIL else trial.state.name.lower()
    scores = ([f"  {m}: {v}" for m, v in zip(study_metrics(study),
                                              _values(trial, len(study.directions)),
                                              strict=False)]
              if is_multi_objective(study) else [f"  {metric}: {_value(trial).strip()}"])
    lines = [f"trial {trial.number}{label}: {state}", *[s.rstrip() for s in scores],
             f"  epochs: {attrs.get('epochs_run', len(trial.intermediate_values))}"]
    if attrs.get("seconds") is not None:
        lines.append(f"  seconds: {attrs['seconds']}")
    if attrs.get("stage_seconds") is not None:  # building or reading its stages (a teacher)
        lines.append(f"  stage seconds: {attrs['stage_seconds']} (not in seconds)")
    if attrs.get("ended_early"):
        lines.append(f"  ended early: {attrs['ended_early']}")
    if attrs.get("fail_reason") and attrs.get("fail_reason") != attrs.get("ended_early"):
        lines.append(f"  reason: {attrs['fail_reason']}")
    techniques = attrs.get("recipe", {}).get("techniques", {})
    if techniques:
        lines.append("  techniques:")
        lines += [f"    {_techniques_text({name: params})}" for name, params in techniques.items()]
    if trial.intermediate_values:
        curve = ", ".join(f"{e}: {v:.4f}" for e, v in sorted(trial.intermediate_values.items()))
        lines.append(f"  {metric} per epoch: {curve}")
    if attrs.get("metrics"):
        lines.append("  final metrics: " + ", ".join(
            f"{k} {_short(v)}" for k, v in attrs["metrics"].items()))
    log = attrs.get("traceback_log")
    if log:
        path = Path(log)
        if path.is_file():
            lines += [f"  traceback ({path}):", "", path.read_text(encoding="utf-8").rstrip()]
        else:
            lines.append(f"  traceback log {path}: not found (was the run folder moved?)")
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_table(rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
