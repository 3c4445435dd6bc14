"""Search spaces: YAML <-> Optuna distributions, and sampling one trial into a Recipe.

A space file names the model, data, epochs, study settings and the techniques to search. Under
``techniques:`` each entry is ``{}`` (the technique's own space), or a mapping whose values are
either fixed scalars or distributions written as ``{type: float|int|categorical, ...}``.
``enabled: true|false`` fixes an optional technique on or off; without it, the search decides.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from automl.data.settings import DATA_ACCESS_KEYS, DATA_KEYS, unlabelled_problem
from automl.discovery import hook_order
from automl.errors import ConfigError
from automl.objectives import CORE_METRICS, MetricProblem, parse_objectives
from automl.provenance import checked_provenance
from automl.recipe import Recipe
from automl.search_algorithms import PRUNERS, SAMPLERS
from automl.technique import (
    NOT_APPLICABLE,
    Technique,
    When,
    conditional_name,
    conflict,
    contains,
)
from automl.yamlio import Lines, load_yaml

if TYPE_CHECKING:
    import optuna

__all__ = ["SearchSpace", "TechniqueSpace", "load_space", "load_recipe", "recipe_from_space",
           "parse_space", "suggest", "definition_difference",
           "DEFAULT_STUDY", "DATA_KEYS"]

TOP_KEYS = ("model", "data", "epochs", "seed", "techniques", "study", "provenance")
SEED_RANGE = (0, 2**63 - 1)  # what torch.manual_seed takes
SAMPLER_SEED_RANGE = (0, 2**32 - 1)  # what numpy's RandomState (Optuna's samplers) takes
DEFAULT_STUDY: dict[str, Any] = {
    "sampler": "tpe", "pruner": "hyperband", "n_trials": 20, "timeout": None,
    "metric": "val/acc1", "direction": "maximize", "seed": 0,
    # fidelity: the first rung ("auto": the longest training / reduction_factor²),
    # Hyperband's reduction factor, the trials the sampler draws at random before modelling,
    # and the rank correlation an epoch's scores must show before trials are pruned there
    "min_resource": "auto", "reduction_factor": 3, "startup_trials": 5, "rung_trust": 0.5,
    # known recipes evaluated right after the baseline (automl.warm_start)
    "warm_start": True,
    # the top trials re-run with more seeds before the best is named (automl.confirm)
    "confirm_top": "auto", "confirm_seeds": 2, "confirm_splits": False,
}
#: The core's metrics and the way each improves (techniques declare theirs:
#: automl.objectives). A study's ``direction`` follows its metric unless given, and one
#: against its metric is refused (Optuna would keep the worst trial as the best).
METRIC_DIRECTIONS = CORE_METRICS
METRICS = tuple(METRIC_DIRECTIONS)
#: The key of a space definition that names the version of the rules it was made under: 2
#: added the required techniques a space leaves out and the order hooks call techniques in.
DEFINITION_RULES = "definition_rules"
RULES_VERSION = "2"


@dataclass
class TechniqueSpace:
    """One technique's part of a space: on/off (None = searched) and each parameter."""

    cls: type[Technique]
    enabled: bool | None
    #: A BaseDistribution is searched, a When depends on a searched choice, anything else is
    #: fixed; a conditional parameter that never applies (its choice is fixed) is absent.
    params: dict[str, Any]
    #: False for a required technique the space leaves out: on, at its defaults.
    listed: bool = True

    @property
    def name(self) -> str:
        return self.cls.name

    def is_fixed(self) -> bool:
        if self.enabled is None:
            return False
        return not self.enabled or not any(
            isinstance(v, BaseDistribution | When) for v in self.params.values())

    def searched_names(self) -> list[str]:
        """The Optuna names of every parameter this technique may sample (not ``enabled``)."""
        names = []
        for p, v in self.params.items():
            if isinstance(v, BaseDistribution):
                names.append(f"{self.name}.{p}")
            elif isinstance(v, When):
                names += [conditional_name(self.name, p, choice)
                          for choice, case in v.cases.items()
                          if isinstance(case, BaseDistribution)]
        return names

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """This technique's values for one trial; a parameter whose case is absent is left
        out (it does not apply to the choice made)."""
        values: dict[str, Any] = {}
        for p, v in self.params.items():
            name, v = self._resolved(p, v, values)
            if v is not NOT_APPLICABLE:
                values[p] = suggest(trial, name, v) if isinstance(v, BaseDistribution) else v
        return values

    def trial_params(self, wanted: dict[str, Any]) -> dict[str, Any]:
        """The trial parameters that make :meth:`sample` give the values nearest to
        ``wanted`` (missing ones: the technique's defaults), inside this space."""
        params: dict[str, Any] = {}
        values: dict[str, Any] = {}
        for p, v in self.params.items():
            name, v = self._resolved(p, v, values)
            if isinstance(v, BaseDistribution):
                values[p] = params[name] = _nearest(v, wanted.get(p, self.cls.defaults[p]))
            elif v is not NOT_APPLICABLE:
                values[p] = v
        return params

    def _resolved(self, param: str, value: Any, chosen: dict[str, Any]) -> tuple[str, Any]:
        """The Optuna name and the distribution or value of ``param`` given the values
        ``chosen`` so far (a condition becomes its case, or NOT_APPLICABLE)."""
        if isinstance(value, When):
            choice = chosen[value.on]
            return conditional_name(self.name, param, choice), value.case(choice)
        return f"{self.name}.{param}", value


@dataclass
class SearchSpace:
    """A parsed, validated space; a recipe is a space where everything is fixed."""

    model: str
    data: dict[str, Any]
    epochs: int
    seed: int
    techniques: dict[str, TechniqueSpace]
    study: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_STUDY))
    source: str = "<space>"
    #: A recipe file's record of where it came from (automl.provenance); never searched,
    #: never part of :meth:`definition`.
    provenance: dict[str, Any] | None = None

    def is_fixed(self) -> bool:
        return all(t.is_fixed() for t in self.techniques.values())

    def free_keys(self) -> list[str]:
        """Dotted names of every choice the search still makes."""
        keys = []
        for t in self.techniques.values():
            if t.enabled is None:
                keys.append(f"{t.name}.enabled")
            if t.enabled is not False:
                keys += t.searched_names()
        return keys

    def sample(self, trial: optuna.Trial) -> Recipe:
        """Ask the trial for every free value; parameters of an off technique are not asked,
        nor is the on/off of one that conflicts with a technique already on."""
        chosen: dict[str, dict[str, Any]] = {}
        for t, on, _ in self._switched(
                lambda t: trial.suggest_categorical(f"{t.name}.enabled", [False, True])):
            if on:
                chosen[t.name] = t.sample(trial)
        return Recipe(model=self.model, data=dict(self.data), epochs=self.epochs,
                      seed=self.seed, techniques=chosen)

    def unlisted_note(self) -> str | None:
        """One line naming the required techniques the file leaves out, with the defaults
        they run at (None when it lists them all): said, not silently assumed."""
        left = [t for t in self.techniques.values() if not t.listed]
        if not left:
            return None
        return "not listed, so at their defaults (required): " + " ".join(
            f"{t.name}({', '.join(f'{k}={v}' for k, v in t.params.items())})" for t in left)

    def definition(self) -> dict[str, str]:
        """What makes trials of this space comparable, as flat strings: model, data (without
        where the files live), epochs, seed, every technique's parameters and ranges (the
        required ones too when left out) and their stages' settings, the order in which each
        hook calls the techniques that share it, and the version of these rules. A study
        stores it, so resuming with another space, or under other order rules, is caught; the
        order of the file is not part of it."""
        items = {"model": self.model, "epochs": str(self.epochs), "seed": str(self.seed),
                 DEFINITION_RULES: RULES_VERSION,
                 **{f"data.{k}": repr(v) for k, v in sorted(self.data.items())
                    if k not in DATA_ACCESS_KEYS}}
        for t in self.techniques.values():
            items[f"{t.name}.enabled"] = "searched" if t.enabled is None else str(t.enabled)
            for p, v in t.params.items():
                items[f"{t.name}.{p}"] = (distribution_to_json(v) if isinstance(v, BaseDistribution)
                                          else v.to_json() if isinstance(v, When) else repr(v))
            if t.enabled is not False:  # a stage's settings that are not parameters
                for k, v in sorted(t.cls.stage_settings.items()):
                    items[f"{t.name}.stage.{k}"] = repr(v)
        used = [t.cls for t in self.techniques.values() if t.enabled is not False]
        for hook, names in hook_order(used).items():
            items[f"order.{hook}"] = ", ".join(names)
        return items

    def max_epochs(self) -> int:
        """The longest training any trial of this space can run (the pruning budget)."""
        factor = 1.0
        for t in self.techniques.values():
            if t.enabled is not False:
                factor *= t.cls.max_epoch_factor(t.params)
        return max(1, round(self.epochs * factor))

    def baseline_params(self) -> dict[str, Any]:
        """Trial parameters of the baseline: every technique's defaults, clipped to the space."""
        return self.params_for({name: {} for name, t in self.techniques.items()
                                if t.cls.default_enabled or not t.cls.optional})

    def params_for(self, techniques: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Trial parameters for the recipe nearest to ``techniques`` (name -> values; a
        technique left out is off, a value left out is the default) that this space can
        sample: what it fixes stays fixed, values are clipped into its ranges."""
        params: dict[str, Any] = {}
        for t, on, blocker in self._switched(lambda t: t.name in techniques):
            if t.enabled is None and blocker is None:
                params[f"{t.name}.enabled"] = on
            if on:
                params.update(t.trial_params(techniques.get(t.name, {})))
        return params

    def conflicts_left_off(self, techniques: dict[str, Any]) -> list[tuple[str, str, str]]:
        """``(left off, kept, why)`` for each technique of ``techniques`` that
        :meth:`params_for` leaves off because it conflicts with one kept on."""
        return [(t.name, blocker, conflict(t.cls, self.techniques[blocker].cls) or "")
                for t, _, blocker in self._switched(lambda t: t.name in techniques)
                if blocker is not None and t.name in techniques]

    def _switched(self, wanted: Callable[[TechniqueSpace], bool]
                  ) -> Iterator[tuple[TechniqueSpace, bool, str | None]]:
        """Each technique in the canonical order, whether it is on, and the technique already
        on (fixed on, or earlier in the order) that keeps it off when they conflict. A
        technique the space fixes is as fixed; a searched one that no conflict keeps off is
        on when ``wanted(t)`` says so, asked only then (a trial's define-by-run order)."""
        on_names = [name for name, t in self.techniques.items() if t.enabled]
        for t in self.techniques.values():
            if t.enabled is not None:
                yield t, t.enabled, None
                continue
            blocker = next((name for name in on_names
                            if conflict(t.cls, self.techniques[name].cls)), None)
            on = blocker is None and bool(wanted(t))
            if on:
                on_names.append(t.name)
            yield t, on, blocker

    def check_conflicts(self, fail: Callable[[tuple[str, ...], str], None]) -> None:
        """Refuse two techniques fixed on (or required) that cannot work together."""
        on = [t for t in self.techniques.values() if t.enabled]
        for i, a in enumerate(on):
            for b in on[i + 1:]:
                why = conflict(a.cls, b.cls)
                if why:
                    fail(("techniques", b.name if b.listed else a.name),
                         f"'{a.name}' and '{b.name}' cannot both be on: {why}; set "
                         "enabled: false on one (or leave it to the search)")


def definition_difference(stored: dict[str, str], current: dict[str, str]) -> str | None:
    """What differs between a study's stored definition and a space's, in words (None: the
    same); a study stored under older rules is named as such."""
    if stored.get(DEFINITION_RULES) != current.get(DEFINITION_RULES):
        return (f"its definition follows older rules (version {stored.get(DEFINITION_RULES, 1)}, "
                f"now {current.get(DEFINITION_RULES)}: required techniques always on, "
                "techniques in a canonical order)")
    for key in sorted(stored.keys() | current.keys()):
        if stored.get(key) != current.get(key):
            return f"{key} was {_shown(stored.get(key))}, now {_shown(current.get(key))}"
    return None


def _shown(value: str | None) -> str:
    return "absent" if value is None else value


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Sample ``dist`` through the trial's public API."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    raise TypeError(f"unsupported distribution {dist!r}")


def _nearest(dist: BaseDistribution, value: Any) -> Any:
    """The value of ``dist`` closest to ``value``: clipped to the range, then onto the step grid
    (Optuna would otherwise run an enqueued value that lies off the grid)."""
    if contains(dist, value):
        return value
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[0]
    clipped = min(max(value, dist.low), dist.high)
    if dist.step is not None:
        clipped = min(dist.low + round((clipped - dist.low) / dist.step) * dist.step, dist.high)
    return _typed(dist, clipped)


def _typed(dist: BaseDistribution, value: Any) -> Any:
    """A number as its parameter's type: ``2.0`` for an int parameter is ``2`` (``F.pad`` takes
    no floats), ``1`` for a float one is ``1.0`` (a recipe reads the same however written)."""
    if isinstance(dist, IntDistribution):
        return int(value)
    if isinstance(dist, FloatDistribution):
        return float(value)
    return value


def load_space(path: str | Path, catalog: dict[str, type[Technique]]) -> SearchSpace:
    """Read and validate a space (or recipe) file."""
    data, lines = load_yaml(path)
    return parse_space(data, lines, str(path), catalog)


def recipe_from_space(space: SearchSpace) -> Recipe:
    """The recipe a fully fixed space describes; an error names the first free value."""
    free = space.free_keys()
    if free:
        raise ConfigError(f"a recipe must fix every value, but {free[0]} is searched "
                          f"({len(free)} free value(s); fix them or set enabled: true/false)",
                          file=space.source)
    techniques = {t.name: dict(t.params) for t in space.techniques.values() if t.enabled}
    return Recipe(model=space.model, data=dict(space.data), epochs=space.epochs,
                  seed=space.seed, techniques=techniques, provenance=space.provenance)


def load_recipe(path: str | Path, catalog: dict[str, type[Technique]]) -> Recipe:
    """Read, validate and return a recipe file (a space with every value fixed)."""
    return recipe_from_space(load_space(path, catalog))


def parse_space(data: Any, lines: Lines, file: str,
                catalog: dict[str, type[Technique]]) -> SearchSpace:
    """Validate a YAML mapping against the technique catalog; every error names file:line."""
    p = _Parser(lines, file)
    if data is None:
        data = {}
    p.expect(isinstance(data, dict), (), "the file must be a mapping of "
             + ", ".join(TOP_KEYS))
    p.known_keys(data, (), TOP_KEYS)
    model = data.get("model", "automl_resnet8")
    p.expect(isinstance(model, str) and model, ("model",), "expected a timm model name")
    _check_model(p, model)
    epochs = data.get("epochs", 10)
    p.expect(_is_int(epochs) and epochs >= 1, ("epochs",),
             f"expected an integer >= 1, got {epochs!r}")
    seed = data.get("seed", 0)
    _expect_seed(p, ("seed",), seed, SEED_RANGE)
    space = SearchSpace(model=model, data=_parse_data(p, data.get("data", {})), epochs=epochs,
                        seed=seed, techniques={}, study=_parse_study(p, data.get("study", {})),
                        source=file, provenance=checked_provenance(data.get("provenance"), file))
    techniques = data.get("techniques", {}) or {}
    p.expect(isinstance(techniques, dict), ("techniques",), "expected a mapping of technique names")
    for name, entry in techniques.items():
        key = ("techniques", name)
        if name not in catalog:
            p.fail(key, f"unknown technique '{name}'{_did_you_mean(name, catalog)}; valid: "
                   + ", ".join(sorted(catalog)))
        space.techniques[name] = _parse_technique(p, key, catalog[name], entry)
        if catalog[name].needs_unlabelled and space.techniques[name].enabled is not False:
            problem = unlabelled_problem(space.data)
            p.expect(problem is None, key, f"{name} {problem}")
    for cls in catalog.values():
        if not cls.optional and cls.name not in space.techniques:
            space.techniques[cls.name] = _required_at_defaults(p, cls)
    # By name, whatever the file's order: the order of sampling and of a recipe's techniques
    # (the order hooks call them in is the plugin manager's: automl.discovery).
    space.techniques = dict(sorted(space.techniques.items()))
    space.check_conflicts(p.fail)
    _parse_objectives(p, space, data.get("study") or {}, catalog)
    return space


def _parse_objectives(p: _Parser, space: SearchSpace, study: Any,
                      catalog: dict[str, type[Technique]]) -> None:
    """``study.metric`` (one name or a list) and its ``direction``, checked against the
    techniques on in every trial; ``space.study`` gets ``metrics`` and ``directions`` (lists)
    and ``metric``/``direction`` (the first of each)."""
    try:
        metrics, directions = parse_objectives(
            space.study["metric"], study.get("direction") if isinstance(study, dict) else None,
            space.techniques, catalog)
    except MetricProblem as exc:
        p.fail(("study", exc.key), exc.message)
        raise  # not reached: fail() raises
    space.study.update(metric=metrics[0], direction=directions[0], metrics=metrics,
                       directions=directions)


def _required_at_defaults(p: _Parser, cls: type[Technique]) -> TechniqueSpace:
    """A required technique the space leaves out: on, each parameter fixed at its default (a
    conditional one only where the default choice has a case)."""
    must_set = cls.user_set_params()
    p.expect(not must_set, ("techniques",), f"technique '{cls.name}' is required: list it "
             f"and set {', '.join(must_set)}")
    params = {}
    for param, dist in cls.space.items():
        when = cls.conditions.get(param)
        if when is None or when.case(cls.defaults[when.on]) is not NOT_APPLICABLE:
            params[param] = _typed(dist, cls.defaults[param])
    return TechniqueSpace(cls=cls, enabled=True, params=params, listed=False)


class _Parser:
    """Carries the file and line map so each check can raise a located error."""

    def __init__(self, lines: Lines, file: str):
        self.lines, self.file = lines, file

    def fail(self, path: tuple[str, ...], message: str) -> None:
        line = self.lines.get(path)
        probe = path
        while line is None and probe:
            probe = probe[:-1]
            line = self.lines.get(probe)
        raise ConfigError(message, file=self.file, key=".".join(path) or None, line=line)

    def expect(self, ok: bool, path: tuple[str, ...], message: str) -> None:
        if not ok:
            self.fail(path, message)

    def known_keys(self, mapping: dict, path: tuple[str, ...], valid: tuple[str, ...] | list[str]):
        for key in mapping:
            if key not in valid:
                self.fail((*path, key), f"unknown key{_did_you_mean(key, valid)}; valid: "
                          + ", ".join(valid))


def _did_you_mean(name: str, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expect_seed(p: _Parser, key: tuple[str, ...], value: Any, valid: tuple[int, int]) -> None:
    low, high = valid
    p.expect(_is_int(value) and low <= value <= high, key,
             f"expected an integer in [{low}, {high}], got {value!r}")


def _check_model(p: _Parser, model: str) -> None:
    import timm

    import automl.models  # noqa: F401  (registers the project's small networks in timm)

    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=3)
        hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
        p.fail(("model",), f"unknown model '{model}'{hint}")


def _parse_data(p: _Parser, data: Any) -> dict[str, Any]:
    """The ``data:`` mapping, checked by :mod:`automl.data.settings` (the one place data
    settings are checked, for spaces and for loading alike), located in the file."""
    from automl.data import settings

    p.expect(isinstance(data, dict), ("data",), "expected a mapping with a 'dataset' key")
    p.known_keys(data, ("data",), settings.data_keys())
    try:
        return settings.for_space(data)
    except ConfigError as exc:
        p.fail(tuple((exc.key or "data").split(".")), exc.message)
        raise  # not reached: fail() raises


def _parse_study(p: _Parser, study: Any) -> dict[str, Any]:
    p.expect(isinstance(study, dict), ("study",), "expected a mapping")
    p.known_keys(study, ("study",), tuple(DEFAULT_STUDY))
    out = {**DEFAULT_STUDY, **study}
    for key, valid in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        p.expect(out[key] in valid, ("study", key),
                 f"unknown value {out[key]!r}; valid: {', '.join(valid)}")
    # metric and direction: checked by _parse_objectives, once the techniques are known
    p.expect(_is_int(out["n_trials"]) and out["n_trials"] >= 1, ("study", "n_trials"),
             f"expected an integer >= 1, got {out['n_trials']!r}")
    t = out["timeout"]
    p.expect(t is None or (isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0),
             ("study", "timeout"), f"expected seconds > 0, got {t!r}")
    _expect_seed(p, ("study", "seed"), out["seed"], SAMPLER_SEED_RANGE)
    for key, least in (("min_resource", 1), ("confirm_top", 0)):
        p.expect(out[key] == "auto" or (_is_int(out[key]) and out[key] >= least), ("study", key),
                 f"expected auto or an integer >= {least}, got {out[key]!r}")
    for key, least in (("reduction_factor", 2), ("startup_trials", 0), ("confirm_seeds", 1)):
        p.expect(_is_int(out[key]) and out[key] >= least, ("study", key),
                 f"expected an integer >= {least}, got {out[key]!r}")
    trust = out["rung_trust"]
    p.expect(isinstance(trust, int | float) and not isinstance(trust, bool)
             and -1 <= trust <= 1, ("study", "rung_trust"),
             f"expected a rank correlation in [-1, 1] (-1: prune anywhere), got {trust!r}")
    for key in ("warm_start", "confirm_splits"):
        p.expect(isinstance(out[key], bool), ("study", key), "expected true or false")
    return out


def _parse_technique(p: _Parser, key: tuple[str, ...], cls: type[Technique],
                     entry: Any) -> TechniqueSpace:
    if entry is None:
        entry = {}
    if isinstance(entry, bool):
        entry = {"enabled": entry}
    p.expect(isinstance(entry, dict), key, "expected a mapping of parameters, {} or true/false")
    valid = ["enabled", *cls.space]
    p.known_keys(entry, key, valid)
    enabled = entry.get("enabled", None if cls.optional else True)
    p.expect(enabled is None or isinstance(enabled, bool), (*key, "enabled"),
             "expected true or false")
    if enabled is False and not cls.optional:
        p.fail((*key, "enabled"), f"technique '{cls.name}' is required and cannot be disabled")
    params: dict[str, Any] = {}
    for param, default_dist in cls.space.items():
        pkey = (*key, param)
        value = entry.get(param, cls.conditions.get(param, default_dist))
        if param not in entry and enabled is not False:
            p.expect(param not in cls.user_set_params(), pkey,
                     f"must be set here ({cls.check_value(param, cls.defaults[param])})")
        if isinstance(value, dict) and "when" in value:
            value = _parse_when(p, pkey, cls, param, value)
        elif isinstance(value, dict):
            value = _parse_distribution(p, pkey, cls, param, value)
        elif not isinstance(value, BaseDistribution | When):
            value = _parse_value(p, pkey, cls, param, value)
        if isinstance(value, When):
            value = _resolve_when(p, pkey, value, params)
        if value is not NOT_APPLICABLE:
            params[param] = value
    return TechniqueSpace(cls=cls, enabled=enabled, params=params)


def _parse_value(p: _Parser, key: tuple[str, ...], cls: type[Technique], param: str,
                 value: Any) -> Any:
    problem = cls.check_value(param, value)
    p.expect(problem is None, key, problem or "")
    return _typed(cls.space[param], value)


def _parse_when(p: _Parser, key: tuple[str, ...], cls: type[Technique], param: str,
                spec: dict) -> When:
    """``{when: CHOICE_PARAM, cases: {choice: value or distribution, ...}}``."""
    p.known_keys(spec, key, ("when", "cases"))
    on = spec["when"]
    names = list(cls.space)
    before = [n for n in names[:names.index(param)]
              if isinstance(cls.space[n], CategoricalDistribution)]
    p.expect(on in before, (*key, "when"), f"expected a choice parameter of '{cls.name}' "
             f"listed before '{param}' (one of: {', '.join(before) or 'none'}), got {on!r}")
    cases = spec.get("cases")
    p.expect(isinstance(cases, dict) and cases, (*key, "cases"),
             "expected a mapping of choices to values or distributions")
    parsed = {}
    for choice, case in cases.items():
        ckey = (*key, "cases", str(choice))
        problem = cls.check_value(on, choice)
        p.expect(problem is None, ckey, problem or "")
        parsed[choice] = (_parse_distribution(p, ckey, cls, param, case) if isinstance(case, dict)
                          else _parse_value(p, ckey, cls, param, case))
    return When(on, parsed)


def _resolve_when(p: _Parser, key: tuple[str, ...], when: When, params: dict[str, Any]) -> Any:
    """A condition on a fixed choice is its case; on a searched one, the cases it allows."""
    on = params.get(when.on, NOT_APPLICABLE)
    if on is NOT_APPLICABLE:
        return NOT_APPLICABLE
    if isinstance(on, When):
        p.fail(key, f"depends on '{when.on}', which is itself conditional; fix '{when.on}' "
               "or give it a plain distribution")
    if isinstance(on, CategoricalDistribution):
        return when.restricted(list(on.choices))
    return when.case(on)


def _parse_distribution(p: _Parser, key: tuple[str, ...], cls: type[Technique], param: str,
                        spec: dict) -> BaseDistribution:
    kind = spec.get("type")
    base = cls.space[param]
    if kind == "categorical":
        p.known_keys(spec, key, ("type", "choices"))
        choices = spec.get("choices")
        p.expect(isinstance(choices, list) and len(choices) >= 1, (*key, "choices"),
                 "expected a non-empty list")
        typed: list[Any] = []
        for i, choice in enumerate(choices):
            problem = cls.check_value(param, choice)
            p.expect(problem is None, (*key, "choices", str(i)), problem or "")
            choice = _typed(base, choice)
            p.expect(choice not in typed, (*key, "choices", str(i)),
                     f"{choice!r} is listed twice")
            typed.append(choice)
        return CategoricalDistribution(typed)
    p.expect(kind in ("float", "int"), (*key, "type"),
             f"expected float, int or categorical, got {kind!r}")
    p.expect(not isinstance(base, CategoricalDistribution), (*key, "type"),
             f"'{param}' is a choice among {list(base.choices)}; use type: categorical"
             if isinstance(base, CategoricalDistribution) else "")
    if kind == "float":
        p.expect(isinstance(base, FloatDistribution), (*key, "type"),
                 f"'{param}' takes integers; use type: int")
    else:
        p.expect(isinstance(base, IntDistribution), (*key, "type"),
                 f"'{param}' takes real numbers; use type: float")
    p.known_keys(spec, key, ("type", "low", "high", "log", "step"))
    for bound in ("low", "high"):
        p.expect(bound in spec, key, f"missing '{bound}'")
        problem = cls.check_value(param, spec[bound])
        p.expect(problem is None, (*key, bound), problem or "")
    log, step = spec.get("log", False), spec.get("step")
    p.expect(isinstance(log, bool), (*key, "log"), "expected true or false")
    if kind == "float":
        p.expect(step is None or (isinstance(step, (int, float)) and not isinstance(step, bool)
                                  and 0 < step < math.inf), (*key, "step"),
                 f"expected a number > 0, got {step!r}")
    else:
        p.expect(step is None or (_is_int(step) and step >= 1), (*key, "step"),
                 f"expected an integer >= 1, got {step!r}")
    try:
        if kind == "float":
            return FloatDistribution(float(spec["low"]), float(spec["high"]), log=log, step=step)
        return IntDistribution(int(spec["low"]), int(spec["high"]), log=log, step=step or 1)
    except (ValueError, TypeError) as exc:
        p.fail(key, str(exc))
        raise AssertionError("unreachable") from None
