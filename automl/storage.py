"""Where a study lives: an Optuna RDB URL, or a journal file (the default, inside the run dir).

Opening a storage is also where its failures become one clear line: a database that cannot be
reached names its URL with the password masked, and a journal file whose last write was cut
off (a killed process, a full disk) is repaired before Optuna reads it, because Optuna would
append after the torn bytes and every later read of the file would fail.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sqlite3
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from automl.errors import UserError, exception_line
from automl.paths import JOURNAL

__all__ = ["open_storage", "shown_storage", "StorageFailed", "storage_failure", "is_rdb_url",
           "STORAGE_ERRORS"]

SQLITE_PREFIX = "sqlite:///"
TABLE_RACE_RETRIES = 3
log = logging.getLogger("automl")


#: What a storage raises when it fails: the journal's file system, the database's driver
#: (SQLAlchemy wraps them all), or Optuna's own storage layer.
STORAGE_ERRORS = (OSError, SQLAlchemyError, optuna.exceptions.StorageInternalError)


class StorageFailed(UserError):
    """The study's storage failed while a search was using it: not the user's mistake, but
    still one line with the real cause (Optuna would show "Should not reach." instead)."""

    exit_code = 1


def is_rdb_url(storage: str | None) -> bool:
    return bool(storage) and "://" in storage


def shown_storage(storage: str) -> str:
    """The storage as it may be printed or saved: a URL's password is replaced by ``***``."""
    if not is_rdb_url(storage):
        return storage
    try:
        return make_url(storage).render_as_string(hide_password=True)
    except ArgumentError:
        return storage.split("://", 1)[0] + "://***"


def storage_failure(exc: BaseException, storage: str | None, doing: str) -> StorageFailed:
    """A storage exception as one line naming the storage (password masked) and the cause."""
    message = exception_line(exc).split(" (Background on this error at:")[0]  # SQLAlchemy link
    password = _password(storage)
    if password:
        message = message.replace(password, "***")
    where = shown_storage(storage) if storage else "the journal file"
    return StorageFailed(f"storage {where} failed while {doing}: {message}")


def open_storage(storage: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    """``postgresql://…``/``sqlite:///…`` open an RDB; anything else is a journal file path."""
    if is_rdb_url(storage):
        return _open_rdb(storage)
    path = Path(storage) if storage else run_dir / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = JournalFileSymlinkLock(str(path))
    backend = JournalFileBackend(str(path), lock_obj=lock)
    lock.acquire()  # another process may be appending right now: its tail is not torn
    try:
        check_journal(path)
    finally:
        lock.release()
    return JournalStorage(backend)


def _open_rdb(storage: str) -> RDBStorage:
    """Open a database; processes that all start on a new one race to create Optuna's tables,
    and the losers retry (the tables exist by then)."""
    retries = 0
    while True:
        try:
            return RDBStorage(_with_installed_driver(storage),
                              engine_kwargs=_sqlite_engine(storage))
        except Exception as exc:  # wrong host, password, database name, missing driver
            raced = "already exists" in str(exc) or "duplicate key" in str(exc)
            if not raced or retries == TABLE_RACE_RETRIES:
                raise UserError(str(storage_failure(exc, storage, "opening it"))) from None
            retries += 1
            time.sleep(0.5 * retries)


def check_journal(path: Path) -> None:
    """Cut a torn last line off a journal file (kept aside in ``NAME.torn``), and refuse a file
    with an unreadable line anywhere else, naming the line: nothing finished is ever dropped."""
    data = path.read_bytes()
    complete, _, torn = data.rpartition(b"\n")
    for number, line in enumerate(complete.split(b"\n") if complete else [], start=1):
        try:
            json.loads(line)
        except ValueError:
            raise UserError(f"{path}:{number}: not a journal record (the file is damaged); "
                            "restore it from a backup or start another study") from None
    if not torn:
        return
    try:
        json.loads(torn)
    except ValueError:
        pass
    else:  # a complete record that lost only its newline
        with open(path, "ab") as f:
            f.write(b"\n")
        return
    line = complete.count(b"\n") + (2 if complete else 1)
    aside = path.with_name(f"{path.name}.torn")
    with open(aside, "ab") as f:
        f.write(time.strftime("# %Y-%m-%d %H:%M:%S\n").encode() + torn + b"\n")
    with open(path, "r+b") as f:
        f.truncate(len(data) - len(torn))
    log.warning("%s:%d: the last line was cut off by an interrupted write; removed it (kept in "
                "%s), every earlier record is intact", path, line, aside)


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; use psycopg 3 when only it is installed."""
    parsed = make_url(url)
    if (parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg2") is None
            and importlib.util.find_spec("psycopg") is not None):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _password(storage: str | None) -> str | None:
    if not is_rdb_url(storage):
        return None
    try:
        return make_url(storage).password
    except ArgumentError:
        return None


def _sqlite_engine(url: str) -> dict:
    """For a SQLite file: write-ahead logging with ``synchronous=NORMAL`` (every commit no
    longer waits for an fsync; bench/overhead measured 12.6 ms per storage call without it),
    and a generous lock timeout for several worker processes on one file."""
    path = url[len(SQLITE_PREFIX):] if url.startswith(SQLITE_PREFIX) else ""
    if not path or path.startswith(":memory:") or "?" in path:
        return {}

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return {"creator": connect}
