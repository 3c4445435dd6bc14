"""Properties over generated spaces: whatever a valid space samples is written to YAML and read
back as the same recipe, with the same types (an int stays an int, 1e-7 stays a float), and a
second write is byte-identical. The regular tests below pin the bugs these properties found."""

from __future__ import annotations

import math
import os
import string
from pathlib import Path
from typing import Any

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from automl.discovery import technique_catalog
from automl.recipe import Recipe
from automl.space import SearchSpace, load_recipe, load_space
from automl.technique import NOT_APPLICABLE, Technique, When, contains
from automl.yamlio import dump_yaml

optuna.logging.set_verbosity(optuna.logging.ERROR)

CATALOG = technique_catalog()


# Techniques whose own space is usable as it stands (not one needing a user's checkpoint path).
GENERATED = sorted(name for name, cls in CATALOG.items() if not cls.user_set_params())
# Derandomized in CI, so a run there is repeatable; no example database in the checkout.
PROPERTY = settings(max_examples=60, deadline=None, database=None,
                    derandomize=os.environ.get("CI", "").lower() == "true",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
UNBOUNDED = 1e300  # stands in for a limit a parameter does not have (None)

# Strings YAML 1.1 resolves to something else, or that the loader reads as floats.
TRICKY_TEXT = ["1e3", "1E-5", "+1e2", "1_000e3", "1.0", ".5", "0x1F", "0o17", "1_000", "yes",
               "No", "on", "null", "~", "true", "", " lead", "trail ", "#hash", "a: b", "- x",
               "[x]", "{x}", "'q'", '"q"', "multi\nline", "tab\there", "ünï", "\u2028", "-.inf",
               ".NaN", "._", "2001-12-14", "1:20"]


# The Python type a technique receives for a parameter of each kind (a choice: as written).
PYTHON_TYPE = {IntDistribution: int, FloatDistribution: float}


def _as_technique_gets(dist: BaseDistribution, value: Any, written: Any) -> bool:
    """Whether ``value`` is ``written`` as a technique must receive it: the parameter's own
    type (``2.0`` written for an int parameter arrives as the int 2, ``1`` for a float one as
    1.0), the same number (a float to the nearest float), a choice exactly as written."""
    if type(value) is not PYTHON_TYPE.get(type(dist), type(written)):
        return False
    if isinstance(value, float) and isinstance(written, int):
        return value == pytest.approx(written, rel=2**-52)  # an int beyond 2**53 rounds
    return value == written


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type all the way down; floats bit for bit (repr)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float):
        return repr(a) == repr(b)
    return a == b


def _limits(cls: type[Technique], param: str) -> tuple[float, float]:
    low, high = cls.limits.get(param, (None, None))
    return (-UNBOUNDED if low is None else low, UNBOUNDED if high is None else high)


def _int_limits(cls: type[Technique], param: str) -> tuple[int, int]:
    """Integer limits within 64 bits (a YAML file holds no larger integer)."""
    low, high = _limits(cls, param)
    return max(math.ceil(low), -2**62), min(math.floor(high), 2**62)


# --- strategies -----------------------------------------------------------------------------


def _fixed_value(cls: type[Technique], param: str) -> st.SearchStrategy:
    """A value the parameter may be fixed to, as a user might write it (``2.0`` for an int)."""
    dist = cls.space[param]
    if isinstance(dist, CategoricalDistribution):
        return st.sampled_from(dist.choices)
    low, high = _limits(cls, param)
    ints = st.integers(*_int_limits(cls, param))
    if isinstance(dist, IntDistribution):
        return ints | ints.map(float)
    tiny = st.sampled_from([1e-7, 5e-324, 1e-300, 1e300]).filter(lambda v: low <= v <= high)
    return st.floats(low, high, allow_nan=False, allow_infinity=False) | ints | tiny


@st.composite
def _distribution(draw, cls: type[Technique], param: str) -> dict[str, Any]:
    """A ``{type: ...}`` override inside the parameter's valid range."""
    dist = cls.space[param]
    choices = _fixed_value(cls, param)
    if isinstance(dist, CategoricalDistribution) or draw(st.booleans()):
        picked = draw(st.lists(choices, min_size=1, max_size=4,
                               unique_by=lambda v: v))  # 2 and 2.0 are one choice
        return {"type": "categorical", "choices": picked}
    if isinstance(dist, IntDistribution):
        low, high = _int_limits(cls, param)
        lo = draw(st.integers(low, high))
        spec: dict[str, Any] = {"type": "int", "low": lo}
        if lo >= 1 and draw(st.booleans()):
            return {**spec, "high": draw(st.integers(lo, high)), "log": True}
        step = draw(st.integers(1, 5))
        count = draw(st.integers(0, (high - lo) // step))
        return {**spec, "high": lo + count * step, "step": step}
    low, high = _limits(cls, param)
    bounds = sorted(draw(st.lists(st.floats(low, high, allow_nan=False), min_size=2,
                                  max_size=2)))
    spec = {"type": "float", "low": bounds[0], "high": bounds[1]}
    if bounds[0] > 0 and draw(st.booleans()):
        spec["log"] = True
    return spec


@st.composite
def _technique(draw, cls: type[Technique]) -> tuple[Any, dict[str, Any]]:
    """A technique's entry under ``techniques:`` and, for each fixed parameter, its value."""
    states = ["searched", True, False] if cls.optional else ["omitted", True]
    state = draw(st.sampled_from(states))
    entry: dict[str, Any] = {} if state in ("searched", "omitted") else {"enabled": state}
    fixed = {}
    for param in cls.space:
        how = draw(st.sampled_from(["default", "fixed", "distribution"]))
        if how == "fixed":
            entry[param] = fixed[param] = draw(_fixed_value(cls, param))
        elif how == "distribution":
            entry[param] = draw(_distribution(cls, param))
    if entry == {"enabled": True} and draw(st.booleans()):
        entry = True  # the shorthand `ema: true`
    return entry, fixed


_text = st.sampled_from(TRICKY_TEXT) | st.text(string.printable, max_size=12) | st.text(max_size=6)
_path = _text.filter(bool)  # an empty path is refused ("expected a path")


@st.composite
def _data(draw) -> dict[str, Any]:
    dataset = draw(st.sampled_from(["digits", "mnist", "fashion_mnist", "cifar10", "folder"]))
    data: dict[str, Any] = {"dataset": dataset, "batch_size": draw(st.integers(1, 4096))}
    if dataset == "folder":
        data["path"] = draw(_path)
    optional = {
        "val_fraction": st.floats(0, 1, exclude_min=True, exclude_max=True),
        "labelled_fraction": st.floats(0, 1, exclude_min=True),
        "split_seed": st.integers(0, 2**63 - 1),
        "image_size": st.integers(1, 512),
        "data_dir": _path,
        "download": st.booleans(),
        "workers": st.integers(0, 16),
        "in_memory": st.sampled_from([True, False, "auto"]),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        data[key] = draw(optional[key])
    return data


@st.composite
def spaces(draw) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A space as YAML data, and the fixed value of every parameter it fixes."""
    names = draw(st.lists(st.sampled_from(GENERATED), unique=True, max_size=8))
    techniques, fixed = {}, {}
    for name in names:
        techniques[name], fixed[name] = draw(_technique(CATALOG[name]))
    data = draw(_data())
    if any(CATALOG[name].needs_unlabelled for name in names):  # refused without such images
        data["labelled_fraction"] = draw(st.floats(0, 1, exclude_min=True, exclude_max=True))
    space = {"model": draw(st.sampled_from(["automl_resnet8", "resnet18"])), "data": data,
             "epochs": draw(st.integers(1, 1000)), "seed": draw(st.integers(0, 2**63 - 1)),
             "techniques": techniques}
    return space, fixed


# --- properties -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties")


def _write_space(folder: Path, space: dict) -> SearchSpace:
    path = folder / "space.yaml"
    path.write_text(dump_yaml(space), encoding="utf-8")
    return load_space(path, CATALOG)


def _check_sampled(space: SearchSpace, written: dict, fixed: dict, recipe: Recipe) -> None:
    """The recipe holds what the space fixes (typed) and values inside what it searches."""
    assert _same(recipe.data, {"dataset": "digits", "batch_size": 64, **written["data"]})
    assert _same([recipe.model, recipe.epochs, recipe.seed],
                 [written["model"], written["epochs"], written["seed"]])
    for name, tspace in space.techniques.items():
        if tspace.enabled is not None:
            assert (name in recipe.techniques) == tspace.enabled, name
        if name not in recipe.techniques:
            continue
        values = recipe.techniques[name]
        # every parameter, in the space's order, but those whose condition does not apply
        assert list(values) == [p for p in tspace.cls.space if p in values]
        for param in tspace.cls.space:
            searched = tspace.params.get(param, NOT_APPLICABLE)
            if isinstance(searched, When):
                searched = searched.case(values[searched.on])
            assert (param in values) == (searched is not NOT_APPLICABLE), (name, param)
        for param, value in values.items():
            dist = tspace.cls.space[param]
            searched = tspace.params[param]
            if isinstance(searched, When):
                searched = searched.case(values[searched.on])
            if param in fixed.get(name, {}):  # a required technique left out: its defaults
                assert _as_technique_gets(dist, value, fixed[name][param]), (name, param, value)
            elif isinstance(searched, BaseDistribution):
                assert contains(searched, value), (name, param, value)
                assert type(value) is PYTHON_TYPE.get(type(dist), type(value)), \
                    (name, param, value)
            else:
                assert _same(value, searched), (name, param, value)


def _check_round_trip(folder: Path, recipe: Recipe) -> None:
    text = recipe.to_yaml()
    path = folder / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load_recipe(path, CATALOG)
    assert loaded == recipe
    assert _same(loaded.to_dict(), recipe.to_dict())
    assert loaded.to_yaml() == text


@PROPERTY
@given(generated=spaces(), sampler_seed=st.integers(0, 2**32 - 1))
def test_a_sampled_recipe_round_trips_through_yaml(folder, generated, sampler_seed):
    written, fixed = generated
    space = _write_space(folder, written)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sampler_seed))
    recipe = space.sample(study.ask())
    _check_sampled(space, written, fixed, recipe)
    _check_round_trip(folder, recipe)


@PROPERTY
@given(generated=spaces())
def test_the_baseline_lies_inside_the_space_and_round_trips(folder, generated):
    written, fixed = generated
    space = _write_space(folder, written)
    study = optuna.create_study()
    study.enqueue_trial(space.baseline_params())
    recipe = space.sample(study.ask())
    _check_sampled(space, written, fixed, recipe)
    _check_round_trip(folder, recipe)


# --- regressions: bugs the properties found ---------------------------------------------------


@pytest.mark.parametrize("text", ["1e3", "1E-5", "+1e2", "1_000e3"])
def test_a_string_that_reads_as_a_float_round_trips_as_a_string(folder, text):
    """The dumper did not quote ``1e3``, which the loader reads as a float (YAML 1.2 style)."""
    required = {  # always on, so written out in full; in name order, as a loaded recipe is
        "lr_schedule": {"schedule": "constant", "warmup": 0.0, "warmup_shape": "linear"},
        "optimizer": {"name": "sgd", "lr": 0.05}}
    recipe = Recipe(model="automl_resnet8", epochs=1, techniques=required,
                    data={"dataset": "folder", "batch_size": 8, "path": text, "data_dir": text})
    _check_round_trip(folder, recipe)


def test_a_float_parameter_written_as_an_integer_is_a_float(folder):
    space = _write_space(folder, {"techniques": {
        "optimizer": {"name": "sgd", "lr": 1},
        "grad_clip": {"enabled": True, "max_norm": {"type": "categorical", "choices": [1, 2.5]}},
    }})
    lr = space.techniques["optimizer"].params["lr"]
    assert _same(lr, 1.0)
    assert _same(list(space.techniques["grad_clip"].params["max_norm"].choices), [1.0, 2.5])


def test_an_int_parameter_chosen_among_integral_floats_gets_ints(folder):
    """``choices: [2.0, 3]`` for an int parameter reached ``F.pad`` as the float 2.0."""
    space = _write_space(folder, {"techniques": {
        "random_crop": {"enabled": True, "padding": {"type": "categorical", "choices": [2.0, 3]}},
    }})
    choices = space.techniques["random_crop"].params["padding"].choices
    assert _same(list(choices), [2, 3])


@pytest.mark.parametrize(("technique", "param", "spec", "grid"), [
    ("random_crop", "padding", {"type": "int", "low": 1, "high": 5, "step": 2}, (1, 3, 5)),
    ("long_training", "multiplier", {"type": "float", "low": 1.25, "high": 2.75, "step": 0.5},
     (1.25, 1.75, 2.25, 2.75)),
])
def test_the_baseline_snaps_a_default_onto_the_step_grid(folder, technique, param, spec, grid):
    """The default (2) lies between grid points; Optuna ran such an enqueued value as given."""
    space = _write_space(folder, {"techniques": {technique: {"enabled": True, param: spec}}})
    value = space.baseline_params()[f"{technique}.{param}"]
    assert value in grid and type(value) is type(grid[0])
    assert abs(value - CATALOG[technique].defaults[param]) <= spec["step"] / 2
