"""A search's run settings: the space's ``study:`` section with command-line overrides applied.

Plain picklable values, so every ``--jobs`` worker process receives the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from automl.space import SearchSpace

__all__ = ["SearchSettings"]


@dataclass
class SearchSettings:
    """Run settings: the space's ``study:`` section with command-line overrides applied."""

    study_name: str
    run_dir: Path
    storage: str | None
    n_trials: int
    timeout: float | None
    seed: int
    sampler: str
    pruner: str
    metric: str  # the first of ``metrics``: what tables and curves show
    direction: str
    min_resource: int | str = "auto"  # first rung of Hyperband/SHA, or the median's warmup
    reduction_factor: int = 3
    startup_trials: int = 5  # random trials before TPE models; the median pruner's start-up
    rung_trust: float = 0.5  # prune only at epochs ranking trials like this (Spearman's rho)
    warm_start: bool = True  # evaluate the known recipes right after the baseline
    confirm_top: int | str = "auto"  # re-run this many of the best trials with more seeds
    confirm_seeds: int = 2
    confirm_splits: bool = False  # confirmation runs also draw another validation split
    device: str | None = None
    jobs: int = 1  # trials running at once (per GPU with ``gpus``), each in its own process
    gpus: str | None = None  # "all" or "0,2": one set of ``jobs`` workers per listed GPU
    #: Ranks (processes, each on its own GPU or a share of the CPU cores) per trial: each
    #: trial trains data-parallel on them (automl.trial_ranks); never changes what is trained.
    gpus_per_trial: int = 1
    #: The device of each rank of this process's trials (set by run_search from --gpus and
    #: --device; empty: derived from the device, see automl.trial_ranks.rank_devices).
    rank_devices: tuple[str | None, ...] = ()
    compile: bool = False  # train through torch.compile
    log: tuple[str, ...] = ()  # experiment trackers (automl.tracking): tensorboard, mlflow
    #: Every metric the study optimises and its direction (several: a multi-objective study,
    #: see automl.objectives); empty: ``metric`` and ``direction`` alone.
    metrics: tuple[str, ...] = ()
    directions: tuple[str, ...] = ()

    def __post_init__(self):
        self.metrics = tuple(self.metrics) or (self.metric,)
        self.directions = tuple(self.directions) or (self.direction,)

    @property
    def multi_objective(self) -> bool:
        """Several metrics: Optuna keeps a Pareto front and cannot prune."""
        return len(self.metrics) > 1

    @classmethod
    def from_space(cls, space: SearchSpace, *, study_name: str, run_dir: Path,
                   storage: str | None = None, device: str | None = None, jobs: int = 1,
                   gpus: str | None = None, gpus_per_trial: int = 1, compile: bool = False,
                   log: tuple[str, ...] = (), **overrides) -> SearchSettings:
        study = {**space.study, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(study_name=study_name, run_dir=run_dir, storage=storage,
                   n_trials=study["n_trials"], timeout=study["timeout"], seed=study["seed"],
                   sampler=study["sampler"], pruner=study["pruner"], metric=study["metric"],
                   direction=study["direction"], min_resource=study["min_resource"],
                   reduction_factor=study["reduction_factor"],
                   startup_trials=study["startup_trials"], rung_trust=study["rung_trust"],
                   warm_start=study["warm_start"],
                   confirm_top=study["confirm_top"], confirm_seeds=study["confirm_seeds"],
                   confirm_splits=study["confirm_splits"], device=device, jobs=jobs, gpus=gpus,
                   gpus_per_trial=gpus_per_trial,
                   compile=compile, log=tuple(log), metrics=tuple(study.get("metrics", ())),
                   directions=tuple(study.get("directions", ())))

    def first_rung(self, max_epochs: int) -> int:
        """The earliest epoch a trial may be pruned at: unless set, the longest training over
        reduction_factor², so that two rungs come before the end. Whether a rung is used is
        then up to the evidence (:class:`automl.fidelity.TrustedRungPruner`)."""
        if self.min_resource == "auto":
            return max(1, round(max_epochs / self.reduction_factor ** 2))
        return min(int(self.min_resource), max_epochs)

    def confirmations(self) -> int:
        """How many of the best trials are confirmed: "auto" is one per 20 trials, at least
        one from 10 trials on, at most 3 (with 2 seeds each and the baseline's, 4 to 8 more
        trainings: a fifth of a 20-trial budget, a tenth of 60)."""
        if self.confirm_top == "auto":
            return 0 if self.n_trials < 10 else min(3, max(1, self.n_trials // 20))
        return int(self.confirm_top)
