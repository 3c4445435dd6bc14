"""The samplers and pruners a study can use: one registry for the CLI, the space parser and
the driver.

The names are plain data, so the CLI's ``--sampler``/``--pruner`` choices and the space's
validation read them without importing Optuna; the factories import it when called.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from automl.errors import UserError

if TYPE_CHECKING:
    import optuna

__all__ = ["SAMPLERS", "PRUNERS", "make_sampler", "make_pruner"]


def _tpe(seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """Seeded, multivariate over conditional groups, constant liar for parallel workers."""
    import optuna
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials,
                                      multivariate=True, group=True, constant_liar=True)


def _random(seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    import optuna
    return optuna.samplers.RandomSampler(seed=seed)


def _cmaes(seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    import optuna
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def _gp(seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    import optuna
    return optuna.samplers.GPSampler(seed=seed)


#: name -> factory(seed, startup_trials); the first is the default.
_SAMPLER_FACTORIES: dict[str, Callable[[int, int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe, "random": _random, "cmaes": _cmaes, "gp": _gp}
SAMPLERS = tuple(_SAMPLER_FACTORIES)
PRUNERS = ("hyperband", "median", "sha", "none")


def make_sampler(name: str, seed: int, startup_trials: int = 5) -> optuna.samplers.BaseSampler:
    """The named sampler, seeded; TPE by default."""
    import optuna
    if name not in _SAMPLER_FACTORIES:
        raise UserError(f"unknown sampler '{name}'; valid: {', '.join(SAMPLERS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _SAMPLER_FACTORIES[name](seed, startup_trials)


def make_pruner(name: str, epochs: int, min_resource: int = 1, reduction_factor: int = 3,
                startup_trials: int = 3, trust: float = -1) -> optuna.pruners.BasePruner:
    """Hyperband over epochs by default; ``none`` trains every trial to the end.

    ``epochs`` is the longest training a trial of the space can run (techniques such as
    long training multiply the space's epochs), so Hyperband's brackets span every trial.
    No trial is judged before ``min_resource`` epochs, nor at an epoch whose scores have not
    been seen to rank trials like their final scores (rank correlation ``trust``).
    """
    import optuna

    from automl.fidelity import TrustedRungPruner

    if name == "hyperband":
        inner = optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=epochs,
                                               reduction_factor=reduction_factor)
    elif name == "median":
        inner = optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                            n_warmup_steps=min_resource - 1)
    elif name == "sha":
        inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource,
                                                       reduction_factor=reduction_factor)
    elif name == "none":
        return optuna.pruners.NopPruner()
    else:
        raise UserError(f"unknown pruner '{name}'; valid: {', '.join(PRUNERS)}")
    return TrustedRungPruner(inner, trust)
