"""Technique: one training technique, its search space and its method card.

A technique is a class whose docstring is its method card (first line: what it does; then when
it helps, the suggested range and the source). The class declares its space as Optuna
distributions; the core instantiates it with concrete parameters for one trial and registers
the instance in that trial's plugin manager, where its ``@hookimpl`` methods act on training.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any, ClassVar

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

__all__ = ["Technique", "contains", "describe_distribution", "markdown_table"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SECTION = re.compile(r"^([A-Z][a-z]+):\s*(.*)$")


class Technique:
    """Base class of every technique; subclasses set ``name``, ``space`` and ``defaults``."""

    name: ClassVar[str] = ""
    #: Parameters searched by default, as Optuna distributions.
    space: ClassVar[dict[str, BaseDistribution]] = {}
    #: The baseline value of every parameter (the search's first trial uses these).
    defaults: ClassVar[dict[str, Any]] = {}
    #: Hard validity bounds (inclusive) for numeric parameters a user may fix or re-range.
    limits: ClassVar[dict[str, tuple[float | None, float | None]]] = {}
    #: Optional techniques are searched on/off; required ones are always on.
    optional: ClassVar[bool] = True
    #: Whether the baseline trial uses this technique (optional techniques only).
    default_enabled: ClassVar[bool] = False

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
        extra = set(cls.defaults) - set(cls.space)
        if extra:
            raise TypeError(f"{where}: defaults for unknown parameters {sorted(extra)}")
        if not cls.summary():
            raise TypeError(f"{where}: missing method card (class docstring)")


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` lies in ``dist`` (Optuna's own check, tolerant of bad types)."""
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


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


def markdown_table(catalog: dict[str, type[Technique]]) -> str:
    """The catalog as the README's Markdown table: name, kind, summary, space, source."""
    rows = ["| technique | kind | what it does | parameters (default space) | source |",
            "|---|---|---|---|---|"]
    for name, cls in catalog.items():
        kind = "optional" if cls.optional else "required"
        params = ", ".join(f"`{p}` {describe_distribution(d)}" for p, d in cls.space.items())
        summary = cls.summary().rstrip(".").replace("|", "\\|")
        source = cls.card_section("Source").replace("|", "\\|")
        rows.append(f"| `{name}` | {kind} | {summary} | {params or 'on/off only'} | {source} |")
    return "\n".join(rows)
