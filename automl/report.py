"""What the user sees: live search progress and tables of trials."""

from __future__ import annotations

import logging
import sys
import time

import click
import optuna
from optuna.trial import FrozenTrial, TrialState

from automl.recipe import Recipe

__all__ = ["ConsoleReporter", "SilentReporter", "trials_table", "ranked_trials", "format_table",
           "show_warnings"]


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
        click.echo(f"study '{settings.study_name}' in {settings.run_dir}{resumed}: "
                   f"{todo} trial(s) to run, sampler {settings.sampler}, "
                   f"pruner {settings.pruner}, metric {self.metric} ({settings.direction})")

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
        value = _value(trial)
        state = {TrialState.COMPLETE: "done", TrialState.PRUNED: "pruned",
                 TrialState.FAIL: "failed"}.get(trial.state, trial.state.name.lower())
        epochs = trial.user_attrs.get("epochs_run", len(trial.intermediate_values))
        base = " (baseline)" if trial.user_attrs.get("baseline") else (
            f" (known recipe {trial.user_attrs['warm_start']})"
            if "warm_start" in trial.user_attrs else "")
        mark = "  * new best" if new_best else ""
        if trial.state != TrialState.COMPLETE and trial.user_attrs.get("fail_reason"):
            mark += f"  ({trial.user_attrs['fail_reason']})"
        seconds = time.perf_counter() - getattr(self, "_trial_started", self.started)
        click.echo(f"trial {trial.number:>3}  {state:<6}  epochs {epochs:>3}  "
                   f"{self.metric} {value}  {self._best_text(study)}  "
                   f"{seconds:5.1f}s{base}{mark}")
        self.last_line = time.perf_counter()

    @staticmethod
    def _best_text(study: optuna.Study) -> str:
        try:
            best = study.best_trial
        except ValueError:
            return "best -"
        return f"best {best.value:.4f} (trial {best.number})"


def _score(trial: FrozenTrial) -> float | None:
    """The final value, or for a pruned trial its last reported score."""
    if trial.value is not None:
        return trial.value
    if trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def _value(trial: FrozenTrial) -> str:
    score = _score(trial)
    return "   -  " if score is None else f"{score:.4f}"


def ranked_trials(study: optuna.Study, top: int | None = None) -> list[FrozenTrial]:
    """Finished trials, best first (complete ones by value, then pruned by last score)."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]

    def key(t: FrozenTrial):
        score = _score(t)
        score = float("-inf") if score is None else (score if maximize else -score)
        return (t.state == TrialState.COMPLETE, score)

    trials.sort(key=key, reverse=True)
    return trials[:top] if top else trials


def trials_table(study: optuna.Study, metric: str, top: int = 5) -> str:
    """A text table of the best trials with their techniques."""
    rows = [["trial", "state", metric, "epochs", "techniques"]]
    for t in ranked_trials(study, top):
        recipe = t.user_attrs.get("recipe", {})
        rows.append([str(t.number) + ("*" if t.user_attrs.get("baseline") else ""),
                     t.state.name.lower(), _value(t),
                     str(t.user_attrs.get("epochs_run", len(t.intermediate_values))),
                     _techniques_text(recipe.get("techniques", {}))])
    return format_table(rows) + "\n(* = baseline: the space's defaults)"


def _techniques_text(techniques: dict) -> str:
    parts = []
    for name, params in techniques.items():
        values = ",".join(_short(v) for k, v in params.items() if k != "enabled")
        parts.append(f"{name}({values})" if values else name)
    return " ".join(parts)


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
