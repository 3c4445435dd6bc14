"""Which study a reading command (show, export, report) means, said out loud.

A command that reads a search used to fall back on the study ``default``: right after
``automl search small`` it showed (and exported) another study without a word. Without
``--study-name`` the study is now the only one in the run folder or storage, or else the most
recently active one, and the command always prints which study and storage it read, with the
other candidates and how to pick one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import click
import optuna

from automl.errors import UserError
from automl.optuna_adapter import study_id
from automl.paths import JOURNAL, RUNS, check_study_name
from automl.storage import is_rdb_url, open_storage, shown_storage

__all__ = ["RUNS", "select_study", "open_study", "journal_path", "storage_text"]

_NO_STUDY_HINT = "run `automl search` first, or pass --out DIR / --storage URL|PATH"


@dataclass
class _Candidate:
    name: str
    storage: str | None  # the --storage value that opens it (None: the run folder's journal)
    run_dir: Path
    active: datetime  # the last time one of its trials started or finished
    trials: int


def journal_path(run_dir: Path, storage: str | None) -> Path | None:
    """The journal file a study is read from; None for a database URL."""
    return None if is_rdb_url(storage) else Path(storage or run_dir / JOURNAL)


def open_study(study_name: str, run_dir: Path, storage: str | None) -> optuna.Study:
    """Load an existing study; an unknown name lists the ones the storage holds."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = _open_existing(run_dir, storage)
    try:
        return optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        names = optuna.get_all_study_names(backend)
        raise UserError(f"no study named '{study_name}'; this storage has: "
                        f"{', '.join(names) or 'none'}") from None


def select_study(study_name: str | None, out: Path | None, storage: str | None) -> optuna.Study:
    """The study a command's ``--study-name`` / ``--out`` / ``--storage`` mean, after printing
    (on stderr) which study and storage it is.

    A name opens that study (in ``out`` or ``runs/NAME`` or ``storage``). Without one, the
    candidates are the studies in ``storage``, or in ``out``'s journal, or (neither given) in
    every run folder under ``runs/``: the only one, or else the most recently active one, the
    others listed with how to choose.
    """
    if study_name is not None:
        check_study_name(study_name)
        run_dir = out or (RUNS / study_name if storage else _run_dir_of(study_name))
        study = open_study(study_name, run_dir, storage)
        _say(study.study_name, storage_text(run_dir, storage), "")
        return study
    candidates = _candidates(out, storage)
    chosen = max(candidates, key=lambda c: c.active)
    others = [c for c in candidates if c is not chosen]
    note = ""
    if others:
        listed = ", ".join(f"{c.name} ({storage_text(c.run_dir, c.storage)}, {c.trials} trials)"
                           for c in sorted(others, key=lambda c: c.active, reverse=True))
        note = (f"; the most recently active of {len(candidates)} studies, the others: "
                f"{listed}; choose one with --study-name (and --out/--storage)")
    study = open_study(chosen.name, chosen.run_dir, chosen.storage)
    _say(chosen.name, storage_text(chosen.run_dir, chosen.storage), note)
    return study


def _run_dir_of(study_name: str) -> Path:
    """``runs/NAME``, or else the one run folder under ``runs/`` holding a study of that name
    (a search run with ``--out runs/OTHER``)."""
    default = RUNS / study_name
    if (default / JOURNAL).exists() or not RUNS.is_dir():
        return default
    found = [journal.parent for journal in sorted(RUNS.glob(f"*/{JOURNAL}"))
             if study_name in optuna.get_all_study_names(_open_existing(journal.parent, None))]
    return found[0] if len(found) == 1 else default


def _say(name: str, where: str, note: str) -> None:
    click.echo(f"study '{name}' in {where}{note}", err=True)


def storage_text(run_dir: Path, storage: str | None) -> str:
    """Where a study lives, as printed: the journal file, or the URL with its password masked."""
    return shown_storage(storage) if is_rdb_url(storage) else str(journal_path(run_dir, storage))


def _candidates(out: Path | None, storage: str | None) -> list[_Candidate]:
    if out is not None or storage is not None:
        run_dir = out or RUNS
        found = _studies_in(run_dir, storage)
        if not found:
            raise UserError(f"{storage_text(run_dir, storage)} holds no study ({_NO_STUDY_HINT})")
        return found
    journals = sorted(RUNS.glob(f"*/{JOURNAL}")) if RUNS.is_dir() else []
    found = [c for journal in journals for c in _studies_in(journal.parent, None)]
    if not found:
        raise UserError(f"no study found: no run folder under {RUNS}/ holds a {JOURNAL} "
                        f"({_NO_STUDY_HINT})")
    return found


def _studies_in(run_dir: Path, storage: str | None) -> list[_Candidate]:
    """Every study of one storage with the time it was last active."""
    backend = _open_existing(run_dir, storage)
    found = []
    for frozen in backend.get_all_studies():
        trials = backend.get_all_trials(study_id(frozen), deepcopy=False)
        times = [t for trial in trials for t in (trial.datetime_start, trial.datetime_complete)
                 if t is not None]
        found.append(_Candidate(frozen.study_name, storage, run_dir,
                                max(times, default=datetime.min), len(trials)))
    return found


def _open_existing(run_dir: Path, storage: str | None) -> optuna.storages.BaseStorage:
    """Open a storage for reading; a journal file that does not exist is an error, never
    created (reading never makes a run folder)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = journal_path(run_dir, storage)
    if journal is not None and not journal.exists():
        raise UserError(f"no study found: {journal} does not exist ({_NO_STUDY_HINT})")
    return open_storage(storage, run_dir)
