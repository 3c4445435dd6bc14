"""Where a study lives: an Optuna RDB URL, or a journal file (the default, inside the run dir)."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

__all__ = ["open_storage"]


def open_storage(storage: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    """``postgresql://…``/``sqlite:///…`` open an RDB; anything else is a journal file path."""
    if storage and "://" in storage:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(storage, heartbeat_interval=60, grace_period=120)
    path = Path(storage) if storage else run_dir / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))

