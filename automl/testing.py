"""Checks a plugin author's own tests call: a technique checked the way the project checks its
built-ins (tests/test_techniques.py uses these same functions for every installed technique).

Plain functions that raise ``AssertionError`` with a message naming the technique, so they
work under pytest or any other runner; pytest is not needed to import this module.

    from automl.testing import (check_round_trip, check_technique_class, edge_params,
                                train_a_few_batches)

    def test_input_noise():
        check_technique_class(InputNoise)
        for params in edge_params(InputNoise).values():
            check_round_trip(InputNoise, params)
            train_a_few_batches(InputNoise, params)

A technique need not be installed to be checked: the class given is used in place of any
technique of the same name the catalog has. Training runs on the CPU on the embedded
``digits`` data (half of its labels hidden for a technique that ``needs_unlabelled``), so a
check takes seconds.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from automl.errors import UserError

if TYPE_CHECKING:
    from automl.state import TrainState
    from automl.technique import Technique

__all__ = ["CARD_SECTIONS", "check_round_trip", "check_technique_class", "data_for",
           "edge_params", "train_a_few_batches", "train_on_ranks"]

#: The labelled sections every method card has (after its one-line summary).
CARD_SECTIONS = ("Helps", "Suggested", "Source")


def check_technique_class(cls: type[Technique]) -> None:
    """The class is a usable, documented technique: what registration checks (name, space,
    defaults inside the space, method card, hook names and arguments), plus the card's
    Helps/Suggested/Source sections, defaults that the technique's own ``check_value``
    accepts, ``limits`` that name numeric parameters and contain their space, and a finite
    positive ``max_epoch_factor``."""
    from automl.discovery import check_technique_hooks

    try:
        cls.validate_class()
        check_technique_hooks(cls)
    except (TypeError, UserError) as exc:
        raise AssertionError(str(exc)) from None
    where = f"technique '{cls.name}'"
    for label in CARD_SECTIONS:
        assert cls.card_section(label), f"{where}: the method card lacks a '{label}:' section"
    for param, bounds in cls.limits.items():
        dist = cls.space.get(param)
        assert isinstance(dist, (FloatDistribution, IntDistribution)), \
            f"{where}: limits[{param!r}] names no numeric parameter of the space"
        assert isinstance(bounds, tuple) and len(bounds) == 2, \
            f"{where}: limits[{param!r}] must be a (low, high) tuple, got {bounds!r}"
        low, high = bounds
        assert low is None or high is None or low <= high, \
            f"{where}: limits[{param!r}] = {bounds!r} is empty"
        assert (low is None or low <= dist.low) and (high is None or dist.high <= high), \
            f"{where}: space[{param!r}] [{dist.low}, {dist.high}] leaves limits {bounds!r}"
    user_set = cls.user_set_params()
    for param, default in cls.defaults.items():
        if param not in user_set:
            problem = cls.check_value(param, default)
            assert problem is None, f"{where}: its own check refuses default {param}: {problem}"
    factor = cls.max_epoch_factor(dict(cls.space))
    assert isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0, \
        f"{where}: max_epoch_factor of its own space is {factor!r}, not a finite number > 0"


def edge_params(cls: type[Technique], user_values: dict[str, Any] | None = None
                ) -> dict[str, dict[str, Any]]:
    """Parameter sets at the edges of the technique's space, by case name: ``low`` and
    ``high`` (every parameter at its low/high bound, a choice at its first/last), and for a
    choice among three or more, each choice with the other parameters at their defaults.

    ``user_values`` gives the parameters only a user can give (``cls.user_set_params()``, a
    checkpoint path say): every case uses them, and leaving one out is an error.
    """
    user_values = dict(user_values or {})
    missing = [p for p in cls.user_set_params() if p not in user_values]
    if missing:
        raise ValueError(f"technique '{cls.name}': give user_values for {', '.join(missing)} "
                         "(values only a user can give; see Technique.user_set_params)")
    unknown = sorted(set(user_values) - set(cls.space))
    if unknown:
        raise ValueError(f"technique '{cls.name}': user_values names unknown parameter(s) "
                         f"{', '.join(unknown)}")
    cases = {edge: {**{p: _edge(d, edge) for p, d in cls.space.items()}, **user_values}
             for edge in ("low", "high")}
    for param, dist in cls.space.items():
        if isinstance(dist, CategoricalDistribution) and len(dist.choices) > 2 \
                and param not in user_values:
            for choice in dist.choices:
                cases[f"{param}={choice}"] = {**cls.defaults, **user_values, param: choice}
    return cases


def _edge(dist: Any, edge: str) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[0] if edge == "low" else dist.choices[-1]
    return dist.low if edge == "low" else dist.high


def check_round_trip(cls: type[Technique], params: dict[str, Any] | None = None, *,
                     samples: int = 3) -> None:
    """A space listing the technique (on, with ``params`` fixed and its other parameters
    searched over its own space) gives recipes that are written to YAML and read back equal,
    with each fixed value as given (same type), and written again byte for byte the same.

    Each of ``samples`` recipes is drawn by a seeded random sampler; a technique with
    user-set parameters needs them in ``params``.
    """
    import optuna

    from automl.space import load_recipe, load_space
    from automl.yamlio import dump_yaml

    params = dict(params or {})
    where = f"technique '{cls.name}'"
    catalog = _catalog_with(cls)
    space_text = dump_yaml({"model": "automl_resnet8", "data": data_for(cls, "digits"),
                            "epochs": 1, "techniques": {cls.name: {"enabled": True, **params}}})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "space.yaml"
        path.write_text(space_text, encoding="utf-8")
        try:
            space = load_space(path, catalog)
        except UserError as exc:
            raise AssertionError(f"{where}: the space refuses {params}: {exc}") from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # as the project's commands do
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(samples):
            recipe = space.sample(study.ask())
            values = recipe.techniques.get(cls.name)
            assert values is not None, f"{where}: enabled in the space, absent from its recipe"
            for param, value in params.items():
                got = values.get(param)
                assert got == value and _same_kind(got, value, cls.space[param]), \
                    f"{where}: {param} fixed at {value!r} reaches the recipe as {got!r}"
            text = recipe.to_yaml()
            path = Path(folder) / "recipe.yaml"
            path.write_text(text, encoding="utf-8")
            loaded = load_recipe(path, catalog)
            assert loaded == recipe, \
                f"{where}: the recipe read back differs:\n{text}\nread as\n{loaded.to_yaml()}"
            assert loaded.to_yaml() == text, f"{where}: a recipe written twice differs"


def _same_kind(got: Any, value: Any, dist: Any) -> bool:
    """Whether a recipe's value has the type a technique receives: an int parameter an int,
    a float parameter a float (a written 1 arrives as 1.0), a choice as written."""
    if isinstance(dist, IntDistribution):
        return type(got) is int
    if isinstance(dist, FloatDistribution):
        return type(got) is float
    return type(got) is type(value)


def data_for(cls: type[Technique], dataset: str, **settings: Any) -> dict[str, Any]:
    """The ``data:`` settings a technique is checked on: ``dataset`` (and ``settings``), with
    half of the training labels hidden when it trains on unlabelled images
    (``needs_unlabelled``)."""
    extra = {"labelled_fraction": 0.5} if cls.needs_unlabelled else {}
    return {"dataset": dataset, **extra, **settings}


def _catalog_with(cls: type[Technique]) -> dict[str, type[Technique]]:
    """The installed catalog with ``cls`` in place of any technique of its name."""
    from automl.discovery import technique_catalog

    return {**technique_catalog(), cls.name: cls}


def train_a_few_batches(technique: type[Technique] | str, params: dict[str, Any] | None = None,
                        *, model: str = "automl_resnet8", dataset: str = "digits",
                        steps: int = 2, batch_size: int = 32,
                        extra_techniques: dict[str, dict[str, Any]] | None = None,
                        extra_plugins: list[Any] = (), device: str = "cpu") -> TrainState:
    """Train a real model with the technique on (``params`` over its defaults) for ``steps``
    optimizer steps and one validation, and check what any technique must keep true: the
    technique got its parameters, every step ran, the losses are finite, the accuracy is a
    fraction, and some weight changed. Returns the final TrainState for checks of your own.

    The recipe holds the required techniques at their defaults (as every recipe does), the
    ``extra_techniques`` (name: params) and the technique. ``extra_plugins`` are registered
    in the trial's manager too (objects with ``@hookimpl`` methods that observe training).
    A hook that raises makes this raise the same exception.
    """
    import torch

    from automl.data import load_data
    from automl.discovery import technique_catalog, training_manager
    from automl.hookspecs import hookimpl
    from automl.recipe import Recipe
    from automl.trainer import train

    cls = technique_catalog()[technique] if isinstance(technique, str) else technique
    catalog = _catalog_with(cls)
    params = dict(params or {})
    where = f"technique '{cls.name}'"
    required = {name: {} for name, c in catalog.items()
                if not c.optional and not c.user_set_params()}
    techniques = {**required, **(extra_techniques or {}), cls.name: params}
    recipe = Recipe(model=model, data=data_for(cls, dataset, batch_size=batch_size),
                    epochs=1, techniques=techniques)

    class Observer:
        """Records the weights when training starts and counts the optimizer's steps."""

        initial: dict[str, torch.Tensor] = {}
        optimizer_steps = 0

        @hookimpl(tryfirst=True)
        def on_train_start(self, state):
            self.initial = {k: v.detach().clone() for k, v in state.model.named_parameters()}
            state.optimizer.register_step_post_hook(self._count)

        def _count(self, *_):
            self.optimizer_steps += 1

    observer = Observer()
    pm = training_manager(recipe, catalog, extra_plugins=[observer, *extra_plugins])
    configured = pm.get_plugin(cls.name).params
    assert configured == {**cls.defaults, **params}, \
        f"{where}: configured with {configured}, not its defaults updated by {params}"

    state = train(recipe, load_data(recipe.data), pm, device=torch.device(device),
                  max_steps=steps)

    assert state.step == steps == observer.optimizer_steps, \
        f"{where}: {steps} optimizer steps asked, {state.step} counted by the trainer, " \
        f"{observer.optimizer_steps} taken by the optimizer"
    assert state.history, f"{where}: training ended without a validation"
    metrics = state.history[-1]
    for key in ("train/loss", "val/loss"):
        assert math.isfinite(metrics[key]), f"{where}: {key} is {metrics[key]}"
    assert 0.0 <= metrics["val/acc1"] <= 1.0, f"{where}: val/acc1 is {metrics['val/acc1']}"
    changed = [k for k, v in state.model.named_parameters()
               if k in observer.initial and not torch.equal(v.detach(), observer.initial[k])]
    assert changed, f"{where}: no weight changed in {steps} optimizer steps"
    return state


def train_on_ranks(recipe: Any, ranks: int = 2, *, max_steps: int | None = None,
                   stop_after_epoch: int | None = None, timeout: float = 120.0
                   ) -> list[dict[str, Any]]:
    """Train ``recipe`` data-parallel on ``ranks`` CPU processes (gloo), as ``automl train
    --nproc`` would; what each rank ended with: ``history`` (its per-epoch metrics), or
    ``error`` (the exception's type name). ``stop_after_epoch``: rank 0's epoch callback
    raises there, as a pruned trial's does. To check that a technique gives the same
    numbers on several ranks as on one (``automl.trainer.train`` in this process)."""
    from automl.distributed import run_on_ranks

    try:
        ended = run_on_ranks(_train_rank, ranks, (recipe, max_steps, stop_after_epoch),
                             timeout=timeout)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None
    return [ended[rank] for rank in range(ranks)]


class _StopHere(Exception):
    """Rank 0's epoch callback stopping the training (see train_on_ranks)."""


def _train_rank(rank: int, size: int, port: int, recipe: Any, max_steps: int | None,
                stop_after_epoch: int | None, results: Any) -> None:
    """One rank of :func:`train_on_ranks` (a spawned process)."""
    import torch

    from automl import distributed
    from automl.data import load_data
    from automl.discovery import training_manager
    from automl.trainer import train

    torch.set_num_threads(1)
    distributed.join_store(torch.device("cpu"), rank, size, port, timeout=60)

    def on_epoch(state: TrainState, metrics: dict[str, float]) -> None:
        if state.epoch + 1 == stop_after_epoch:
            raise _StopHere(f"stopped after epoch {stop_after_epoch}")

    try:
        state = train(recipe, load_data(recipe.data), training_manager(recipe),
                      device=torch.device("cpu"), max_steps=max_steps,
                      on_epoch=on_epoch if rank == 0 and stop_after_epoch else None)
        results.put((rank, {"history": state.history, "world_size": state.world_size}))
    except Exception as exc:
        results.put((rank, {"error": type(exc).__name__, "message": str(exc)}))
    finally:
        distributed.shutdown()
