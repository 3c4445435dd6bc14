"""Where a recipe came from: study, trial, score, versions — written into exported recipes.

A recipe file outlives its run folder: ``provenance:`` says which study and trial produced it,
how well it scored (and the confirmed mean, when the search re-ran it), when that trial
finished, and the versions of the project, its libraries and the plugins that trained it
(stored with each trial when it starts). It never changes training: ``automl train`` carries
it into its ``metrics.json`` and ``recipe.yaml``, and a provenance block it cannot read is
dropped with a warning, never an error (it is a record, and a hand-edited one must not stop a
run). Everything in it comes from the study, so ``best_recipe.yaml`` and ``automl export``
write the same text.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from automl.recipe import Recipe

__all__ = ["ENVIRONMENT", "environment", "environment_differences", "trial_provenance",
           "with_provenance", "checked_provenance", "provenance_lines", "library_versions",
           "plugin_versions"]

#: trial user attr: the versions and plugins of the process that trained the trial
ENVIRONMENT = "environment"
PROJECT_DISTRIBUTION = "automl-recipes"
LIBRARIES = ("torch", "timm", "optuna")

logger = logging.getLogger("automl")


def library_versions() -> dict[str, str]:
    """The project's, Python's and the training libraries' versions (read from the installed
    distributions: nothing is imported)."""
    found = {PROJECT_DISTRIBUTION: _version(PROJECT_DISTRIBUTION),
             "python": platform.python_version()}
    found.update({name: _version(name) for name in LIBRARIES})
    return found


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def plugin_versions() -> dict[str, str]:
    """Each loaded plugin and the distribution (name and version) it came from."""
    from automl.discovery import discovery_manager, plugin_origin

    return {name: plugin_origin(name) for name, _ in discovery_manager().list_name_plugin()}


def environment() -> dict[str, dict[str, str]]:
    """This process's versions and plugins: stored with each trial, so a recipe names the
    environment that trained it, not the one that exported it."""
    return {"versions": library_versions(), "plugins": plugin_versions()}


def environment_differences(recorded: Any, subject: str,
                            current: dict[str, dict[str, str]] | None = None) -> list[str]:
    """One line per library or plugin whose version differs between an :func:`environment`
    record (a study's, a recipe's provenance) and ``current`` (this process's), e.g. "study
    's' was created with torch 2.3.0, this process has 2.4.1". A record without versions
    (an older release, a hand-written recipe) has nothing to compare: no lines."""
    if not isinstance(recorded, dict):
        return []
    current = environment() if current is None else current
    lines = []
    was, now = recorded.get("versions"), current["versions"]
    if isinstance(was, dict):
        lines += [f"{subject} with {name} {was[name]}, this process has "
                  f"{now.get(name, 'none')}"
                  for name in was if str(was[name]) != now.get(name)]
    was, now = recorded.get("plugins"), current["plugins"]
    if isinstance(was, dict):
        for name in sorted(was.keys() | now.keys()):
            if name not in now:
                lines.append(f"{subject} with plugin {name} ({was[name]}), this process does "
                             "not load it")
            elif name not in was:
                lines.append(f"{subject} without plugin {name}, this process loads it "
                             f"({now[name]})")
            elif str(was[name]) != now[name]:
                lines.append(f"{subject} with plugin {name} from {was[name]}, this process has "
                             f"{now[name]}")
    return lines


def trial_provenance(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """The provenance of ``trial``'s recipe, as plain YAML values."""
    from automl.confirm import confirmed

    record: dict[str, Any] = {
        "study": study.study_name,
        "trial": trial.number,
        "metric": study.user_attrs.get("metric", "value"),
        "direction": study.directions[0].name.lower(),
        "score": _number(trial.values[0] if trial.values else None),
    }
    if len(study.directions) > 1:  # several metrics: all of them; the first is named above
        record["metrics"] = list(study.user_attrs.get("metrics", []))
        record["directions"] = [d.name.lower() for d in study.directions]
        record["scores"] = [_number(v) for v in trial.values or []]
    for candidate in confirmed(study):
        if candidate.number == trial.number:
            record["confirmed_mean"] = _number(candidate.mean)
            record["confirmed_std"] = _number(candidate.std)
            record["confirmed_runs"] = len(candidate.values)
    if trial.user_attrs.get("baseline"):
        record["baseline"] = True
    if trial.datetime_complete is not None:
        record["finished"] = trial.datetime_complete.isoformat(timespec="seconds")
    stored = trial.user_attrs.get(ENVIRONMENT)
    if not isinstance(stored, dict):  # a trial of an older version: this process's
        stored = {**environment(), "recorded": "at export (the trial did not record them)"}
    record.update(stored)
    return record


def _number(value: float | None) -> float | None:
    """A score as YAML can hold it (NaN and None become null)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def with_provenance(recipe: Recipe, study: optuna.Study, trial: FrozenTrial) -> Recipe:
    """``recipe`` carrying the provenance of ``trial``."""
    return dataclasses.replace(recipe, provenance=trial_provenance(study, trial))


def checked_provenance(value: Any, file: str) -> dict[str, Any] | None:
    """A recipe file's ``provenance:`` block if it is a mapping of plain values, else None
    and a warning: a record that cannot be read must not stop training."""
    if value is None:
        return None
    problem = (_problem(value) if isinstance(value, dict)
               else f"expected a mapping, got {type(value).__name__}")
    if problem:
        logger.warning("%s: provenance: %s; ignored (it is a record only, training is not "
                       "affected)", file, problem)
        return None
    return value


def _problem(value: Any, where: str = "") -> str | None:
    """The first value that is not a plain YAML scalar, list or mapping, named by its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _problem(item, f"{where}.{key}" if where else str(key))
            if problem:
                return problem
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            problem = _problem(item, f"{where}.{i}")
            if problem:
                return problem
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return None
    return f"{where}: unexpected {type(value).__name__}"  # e.g. a YAML date


def provenance_lines(provenance: dict[str, Any] | None) -> list[str]:
    """The provenance as short lines for a comment at the top of an exported file."""
    if not provenance:
        return ["provenance: none recorded"]
    p = provenance
    score = p.get("score")
    line = (f"from study '{p.get('study')}', trial {p.get('trial')}: {p.get('metric')} "
            f"{score if score is None else format(score, '.4f')}")
    if p.get("confirmed_mean") is not None:
        line += (f" (confirmed mean {p['confirmed_mean']:.4f} over {p.get('confirmed_runs')} "
                 "runs)")
    lines = [line]
    if p.get("finished"):
        lines.append(f"trial finished {p['finished']}")
    versions = p.get("versions") or {}
    if versions:
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    plugins = p.get("plugins") or {}
    if plugins:
        lines.append("plugins: " + ", ".join(f"{k} ({v})" for k, v in plugins.items()))
    return lines
