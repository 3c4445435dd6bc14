"""Technique: one training technique, its search space and its method card.

A technique is a class whose docstring is its method card (first line: what it does; then when
it helps, the suggested range and the source). The class declares its space as Optuna
distributions; the core instantiates it with concrete parameters for one trial and registers
the instance in that trial's plugin manager, where its ``@hookimpl`` methods act on training.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from automl.optuna_adapter import distribution_contains as contains  # Optuna's own check

__all__ = ["Technique", "When", "conflict", "conflicts_of", "contains", "describe_distribution",
           "describe_parameter", "markdown_table"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SECTION = re.compile(r"^([A-Z][a-z]+):\s*(.*)$")


@dataclass(frozen=True)
class When:
    """A parameter whose range depends on a choice of the same technique.

    ``When("name", {"sgd": FloatDistribution(0.01, 0.5, log=True), "adamw": ...})``: the
    parameter is searched over the case of the choice the trial made, under its own Optuna
    name (``optimizer.lr[sgd]``), so the sampler learns each case apart. A case may be a fixed
    value; a choice without a case means the parameter does not apply and is not sampled.
    """

    on: str
    cases: dict[Any, Any] = field(default_factory=dict)

    def case(self, choice: Any) -> Any:
        """The distribution or value for ``choice``; :data:`NOT_APPLICABLE` without a case."""
        for key, value in self.cases.items():
            if type(key) is type(choice) and key == choice:
                return value
        return NOT_APPLICABLE

    def restricted(self, choices: list[Any]) -> When:
        """Only the cases of ``choices`` (the choices a space still allows)."""
        return When(self.on, {k: v for k, v in self.cases.items()
                              if any(type(k) is type(c) and k == c for c in choices)})

    def to_json(self) -> str:
        """A stable text form, for a study's space definition."""
        cases = {repr(k): distribution_to_json(v) if isinstance(v, BaseDistribution) else repr(v)
                 for k, v in self.cases.items()}
        return json.dumps({"when": self.on, "cases": cases}, sort_keys=True)


class _NotApplicable:
    """Marker: a conditional parameter whose case is absent for the chosen value."""

    def __repr__(self) -> str:
        return "NOT_APPLICABLE"


NOT_APPLICABLE = _NotApplicable()


def conditional_name(technique: str, param: str, choice: Any) -> str:
    """The Optuna parameter name of one case of a conditional parameter."""
    return f"{technique}.{param}[{choice}]"


class Technique:
    """Base class of every technique; subclasses set ``name``, ``space`` and ``defaults``."""

    name: ClassVar[str] = ""
    #: Parameters searched by default, as Optuna distributions.
    space: ClassVar[dict[str, BaseDistribution]] = {}
    #: The baseline value of every parameter (the search's first trial uses these).
    defaults: ClassVar[dict[str, Any]] = {}
    #: Parameters whose default range depends on another parameter's choice (see
    #: :class:`When`); ``space`` still holds each one's full valid range, which a space file
    #: that writes its own range or value uses instead.
    conditions: ClassVar[dict[str, When]] = {}
    #: Hard validity bounds (inclusive) for numeric parameters a user may fix or re-range.
    limits: ClassVar[dict[str, tuple[float | None, float | None]]] = {}
    #: Optional techniques are searched on/off; required ones are always on, and a space
    #: that leaves one out has it at its defaults (fixed), so no trial trains without it.
    optional: ClassVar[bool] = True
    #: Whether the baseline trial uses this technique (optional techniques only).
    default_enabled: ClassVar[bool] = False
    #: Whether it trains on ``state.data.unlabelled`` (semi-supervised): a space that does not
    #: turn it off must give unlabelled images (``data.labelled_fraction`` below 1, or a
    #: folder with ``unlabelled/``), or it is refused when read.
    needs_unlabelled: ClassVar[bool] = False
    #: Techniques this one cannot work with: another technique's name -> why. Declared on
    #: either side (see :func:`conflict`): the search never turns both on, and a space or
    #: recipe that fixes both on is refused.
    conflicts: ClassVar[dict[str, str]] = {}
    #: The metrics this technique's ``evaluate`` hook returns (names without the split
    #: prefix) and the way each improves, ``{"robust_acc": "maximize"}``: a study may then
    #: optimise ``val/robust_acc`` when the technique is on in every trial (automl.objectives).
    metrics: ClassVar[dict[str, str]] = {}
    #: Settings of this technique's stages (:meth:`stages`) that are not parameters (a
    #: teacher's own techniques): part of a study's definition, so a release that changes
    #: them is refused on resume like a changed space (automl.stages).
    stage_settings: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.space))
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {', '.join(unknown)}")
        self.params: dict[str, Any] = {**self.defaults, **params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def card(cls) -> str:
        """The method card: the class docstring, dedented."""
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def summary(cls) -> str:
        """First line of the method card."""
        card = cls.card()
        return card.splitlines()[0] if card else ""

    @classmethod
    def card_section(cls, label: str) -> str:
        """A labelled section of the card (``Helps``, ``Suggested``, ``Source``) as one line."""
        found, lines = False, []
        for line in cls.card().splitlines()[1:]:
            match = _SECTION.match(line.strip())
            if match:
                found = match.group(1) == label
                line = match.group(2) if found else ""
            if found and line.strip():
                lines.append(line.strip())
        return " ".join(lines)

    @classmethod
    def check_value(cls, param: str, value: Any) -> str | None:
        """Why ``value`` is not a valid fixed value of ``param`` (None when it is)."""
        dist = cls.space[param]
        if isinstance(dist, CategoricalDistribution):
            if not any(type(c) is type(value) and c == value for c in dist.choices):
                return f"{value!r} is not one of {', '.join(map(repr, dist.choices))}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {value!r}"
        try:
            number = float(value)
        except OverflowError:
            return f"{value!r} is too large"
        if not math.isfinite(number):  # NaN would pass every bound below
            return f"expected a finite number, got {value!r}"
        if isinstance(dist, IntDistribution) and not number.is_integer():
            return f"expected an integer, got {value!r}"
        low, high = cls.limits.get(param, (None, None))
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{value!r} is outside the valid range [{low}, {high}]"
        return None

    @classmethod
    def user_set_params(cls) -> list[str]:
        """Parameters a space must set itself: the technique's own choices are placeholders
        that its own check refuses (a checkpoint path is a value only the user can give)."""
        return [param for param, dist in cls.space.items()
                if isinstance(dist, CategoricalDistribution)
                and any(cls.check_value(param, choice) is not None for choice in dist.choices)]

    @classmethod
    def max_epoch_factor(cls, params: dict[str, Any]) -> float:
        """The most this technique can multiply a recipe's epochs by, given its part of a
        space (values fixed or distributions); the pruner's budget spans it. Default 1."""
        return 1.0

    def stages(self, recipe: Any) -> list[Any]:
        """The :class:`automl.stages.Stage` s this technique needs run before training,
        derived from its parameters, ``recipe`` and :attr:`stage_settings` only. Default
        none."""
        return []

    def stage_artifact_path(self, state: Any, name: str) -> Any:
        """The file of this technique's stage ``name``, built on first use and cached for
        the study (:func:`automl.stages.artifact_path`)."""
        from automl.stages import artifact_path

        found = [s for s in self.stages(state.recipe) if s.name == name]
        if not found:
            raise KeyError(f"{self.name}: no stage named {name!r}")
        return artifact_path(state, found[0])

    def stage_artifact(self, state: Any, name: str) -> dict[str, Any]:
        """The artifact (a dict, on the CPU) of this technique's stage ``name``."""
        from automl.checkpoints import read_checkpoint

        return read_checkpoint(self.stage_artifact_path(state, name))

    @classmethod
    def validate_class(cls) -> None:
        """Raise TypeError if the class is not a usable technique (checked at registration)."""
        where = f"{cls.__module__}.{cls.__qualname__}"
        if not _NAME.match(cls.name or ""):
            raise TypeError(f"{where}: name must be lowercase snake_case, got {cls.name!r}")
        for param, dist in cls.space.items():
            if not isinstance(dist, BaseDistribution):
                raise TypeError(f"{where}: space[{param!r}] is not an Optuna distribution")
            if param not in cls.defaults:
                raise TypeError(f"{where}: no default for parameter {param!r}")
            if not contains(dist, cls.defaults[param]):
                raise TypeError(f"{where}: default {cls.defaults[param]!r} of {param!r} "
                                "is outside its space")
        for param, when in cls.conditions.items():
            _validate_when(cls, where, param, when)
        for metric, way in cls.metrics.items():
            if not _NAME.match(str(metric)) or way not in ("maximize", "minimize"):
                raise TypeError(f"{where}: metrics[{metric!r}] must map a snake_case name to "
                                f"'maximize' or 'minimize', got {way!r}")
        extra = set(cls.defaults) - set(cls.space)
        if extra:
            raise TypeError(f"{where}: defaults for unknown parameters {sorted(extra)}")
        _validate_conflicts(cls, where)
        if not cls.summary():
            raise TypeError(f"{where}: missing method card (class docstring)")


def _validate_conflicts(cls: type[Technique], where: str) -> None:
    """``conflicts`` maps other techniques' names to a reason (the name need not be
    installed: a plugin may name another plugin's technique)."""
    if not isinstance(cls.conflicts, dict):
        raise TypeError(f"{where}: conflicts must be a dict of technique name -> reason")
    for other, reason in cls.conflicts.items():
        if not isinstance(other, str) or not _NAME.match(other):
            raise TypeError(f"{where}: conflicts: {other!r} is not a technique name")
        if other == cls.name:
            raise TypeError(f"{where}: conflicts: a technique cannot conflict with itself")
        if not isinstance(reason, str) or not reason.strip():
            raise TypeError(f"{where}: conflicts[{other!r}]: expected a reason (a non-empty "
                            "string)")


def conflict(a: type[Technique], b: type[Technique]) -> str | None:
    """Why ``a`` and ``b`` cannot both be on (declared by either of them), or None."""
    return a.conflicts.get(b.name) or b.conflicts.get(a.name)


def conflicts_of(cls: type[Technique], catalog: dict[str, type[Technique]]
                 ) -> dict[str, str]:
    """Every technique ``cls`` cannot be on with, by name, and why: its own declarations and
    those of the catalog's techniques that name it."""
    found = dict(cls.conflicts)
    for name, other in catalog.items():
        if cls.name in other.conflicts and name not in found:
            found[name] = other.conflicts[cls.name]
    return dict(sorted(found.items()))


def _validate_when(cls: type[Technique], where: str, param: str, when: When) -> None:
    names = list(cls.space)
    if param not in cls.space:
        raise TypeError(f"{where}: conditions[{param!r}] names no parameter of the space")
    on = cls.space.get(when.on)
    if not isinstance(on, CategoricalDistribution) or names.index(when.on) > names.index(param):
        raise TypeError(f"{where}: conditions[{param!r}] must depend on a categorical "
                        "parameter declared before it")
    for choice, case in when.cases.items():
        if choice not in on.choices:
            raise TypeError(f"{where}: conditions[{param!r}]: {choice!r} is not a choice of "
                            f"{when.on!r}")
        values = [case] if not isinstance(case, BaseDistribution) else \
            list(case.choices) if isinstance(case, CategoricalDistribution) else [case.low,
                                                                                  case.high]
        if any(not contains(cls.space[param], v) for v in values):
            raise TypeError(f"{where}: conditions[{param!r}][{choice!r}] lies outside "
                            f"space[{param!r}]")
    default_case = when.case(cls.defaults[when.on])
    if default_case is not NOT_APPLICABLE and not (
            contains(default_case, cls.defaults[param]) if isinstance(default_case,
                                                                      BaseDistribution)
            else default_case == cls.defaults[param]):
        raise TypeError(f"{where}: default {cls.defaults[param]!r} of {param!r} is outside "
                        f"its case for {when.on}={cls.defaults[when.on]!r}")


def describe_distribution(dist: BaseDistribution) -> str:
    """Short human form of a distribution, for listings."""
    if isinstance(dist, CategoricalDistribution):
        return "{" + ", ".join(repr(c) if c == "" else str(c) for c in dist.choices) + "}"
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        text = f"[{dist.low}, {dist.high}]"
        if dist.log:
            text += " log"
        if dist.step not in (None, 1) or (isinstance(dist, FloatDistribution) and dist.step):
            text += f" step {dist.step}"
        return text
    return repr(dist)


def describe_parameter(cls: type[Technique], param: str) -> str:
    """The default search range of a technique's parameter, conditions included."""
    when = cls.conditions.get(param)
    if when is None:
        return describe_distribution(cls.space[param])
    cases = "; ".join(
        f"{choice}: {describe_distribution(case) if isinstance(case, BaseDistribution) else case}"
        for choice, case in when.cases.items())
    unused = len(when.cases) < len(cls.space[when.on].choices)
    return f"by {when.on} ({cases}{'; otherwise unused' if unused else ''})"


def markdown_table(catalog: dict[str, type[Technique]]) -> str:
    """The catalog as the README's Markdown table: name, kind, summary, space, source."""
    rows = ["| technique | kind | what it does | parameters (default space) | source |",
            "|---|---|---|---|---|"]
    for name, cls in catalog.items():
        kind = "optional" if cls.optional else "required"
        params = ", ".join(f"`{p}` {describe_parameter(cls, p)}" for p in cls.space)
        summary = cls.summary().rstrip(".").replace("|", "\\|")
        source = cls.card_section("Source").replace("|", "\\|")
        rows.append(f"| `{name}` | {kind} | {summary} | {params or 'on/off only'} | {source} |")
    return "\n".join(rows)
