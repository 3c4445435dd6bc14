"""The contract of automl/optuna_adapter.py, the one module that uses Optuna's private API.

Each function runs against the storages a search uses: a journal file, SQLite and PostgreSQL
(from ``AUTOML_TEST_POSTGRESQL``, as in tests/test_postgres.py: skipped without it, failed in
CI). Two "processes" are two storages opened separately on the same study, the way two
workers see it. The tests check behaviour the driver relies on (who wins a claim, what a
finished trial refuses, what a second process reads), so an Optuna upgrade that changes any of
it fails here first, naming the function. The last tests grep the code for Optuna's private
names outside the adapter.
"""

from __future__ import annotations

import inspect
import os
import re
import threading
import tomllib
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.trial import TrialState
from packaging.requirements import Requirement
from packaging.version import Version

from automl import optuna_adapter as adapter
from automl.storage import open_storage

ROOT = Path(__file__).resolve().parent.parent
ADAPTER = ROOT / "automl" / "optuna_adapter.py"
STORAGES = ["journal", "sqlite", "postgresql"]


@pytest.fixture(params=STORAGES)
def open_as(request, tmp_path):
    """A function that opens one "process"'s own handle on the same study, on this storage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if request.param == "journal":
        url = str(tmp_path / "study.journal")
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'study.db'}"
    else:
        url = os.environ.get("AUTOML_TEST_POSTGRESQL")
        if not url:
            reason = ("AUTOML_TEST_POSTGRESQL is not set; start a server with "
                      "`export AUTOML_TEST_POSTGRESQL=$(.ci/postgres.sh start)`")
            if os.environ.get("CI") == "true":
                pytest.fail(f"{reason} (CI must run the PostgreSQL tests)")
            pytest.skip(reason)
    name = f"adapter-{uuid.uuid4().hex}"  # reruns on one database never collide

    def open_study() -> optuna.Study:
        return optuna.create_study(study_name=name, storage=open_storage(url, tmp_path),
                                   load_if_exists=True)

    return open_study


def test_storage_of_is_the_storage_the_study_writes_through(open_as):
    study = open_as()
    storage = adapter.storage_of(study)
    assert isinstance(storage, BaseStorage)
    trial = study.ask()
    study.tell(trial, 0.5)
    assert storage.get_trial(adapter.trial_id(trial)).state == TrialState.COMPLETE
    storage.set_study_user_attr(adapter.study_id(study), "written", "through it")
    assert study.user_attrs["written"] == "through it"
    assert open_as().user_attrs["written"] == "through it"  # stored, not only cached


def test_study_id_names_the_study_in_its_storage(open_as):
    study = open_as()
    other = optuna.create_study(study_name=f"other-{uuid.uuid4().hex}",
                                storage=adapter.storage_of(study))
    storage = adapter.storage_of(study)
    for each in (study, other):
        assert storage.get_study_id_from_name(each.study_name) == adapter.study_id(each)
    assert adapter.study_id(study) != adapter.study_id(other)
    study.enqueue_trial({"x": 1.0})
    frozen = {s.study_name: s for s in storage.get_all_studies()}  # FrozenStudy objects
    assert adapter.study_id(frozen[study.study_name]) == adapter.study_id(study)
    assert [t.number for t in storage.get_all_trials(adapter.study_id(frozen[study.study_name]))
            ] == [0]
    assert storage.get_all_trials(adapter.study_id(frozen[other.study_name])) == []


def test_trial_id_is_the_same_for_a_trial_and_its_frozen_copy(open_as):
    study = open_as()
    trials = [study.ask() for _ in range(3)]
    ids = [adapter.trial_id(t) for t in trials]
    assert len(set(ids)) == 3
    storage = adapter.storage_of(study)
    for trial, frozen in zip(trials, study.get_trials(deepcopy=False), strict=True):
        assert adapter.trial_id(frozen) == adapter.trial_id(trial)
        assert storage.get_trial_id_from_study_id_trial_number(
            adapter.study_id(study), trial.number) == adapter.trial_id(trial)


def test_get_frozen_trial_reads_what_another_process_wrote(open_as):
    mine, theirs = open_as(), open_as()
    trial = mine.ask()
    trial.set_user_attr("fail_reason", None)
    assert adapter.get_frozen_trial(mine, trial).state == TrialState.RUNNING
    adapter.set_trial_state(theirs, adapter.get_frozen_trial(theirs, trial), TrialState.FAIL)
    frozen = adapter.get_frozen_trial(mine, trial)  # not a cached RUNNING copy
    assert frozen.state == TrialState.FAIL and frozen.number == trial.number
    done = mine.ask()
    mine.tell(done, 0.25)
    for handle in (done, mine.trials[done.number]):  # a Trial or a FrozenTrial
        frozen = adapter.get_frozen_trial(mine, handle)
        assert (frozen.state, frozen.value) == (TrialState.COMPLETE, 0.25)


def test_claim_waiting_trial_grants_a_ticket_to_exactly_one_process(open_as):
    first, second = open_as(), open_as()
    first.enqueue_trial({"x": 0.125}, user_attrs={"ticket": 1})
    ticket = second.get_trials(deepcopy=False, states=(TrialState.WAITING,))[0]
    trial = adapter.claim_waiting_trial(first, ticket)
    assert isinstance(trial, optuna.Trial) and trial.number == ticket.number
    assert adapter.claim_waiting_trial(second, ticket) is None  # lost the race
    assert trial.suggest_float("x", 0.0, 1.0) == 0.125  # the ticket's parameters
    assert trial.user_attrs["ticket"] == 1
    assert second.trials[0].state == TrialState.RUNNING
    first.tell(trial, 1.0)
    assert adapter.claim_waiting_trial(second, ticket) is None  # finished meanwhile
    assert first.trials[0].state == TrialState.COMPLETE and len(first.trials) == 1


def test_set_trial_state_fails_another_process_trial_once(open_as):
    owner, sweeper = open_as(), open_as()
    trial = owner.ask()
    running = sweeper.get_trials(deepcopy=False, states=(TrialState.RUNNING,))[0]
    assert adapter.set_trial_state(sweeper, running, TrialState.RUNNING) is False
    assert adapter.set_trial_state(sweeper, running, TrialState.FAIL) is True
    with pytest.raises(UpdateFinishedTrialError):  # a second sweeper loses
        adapter.set_trial_state(open_as(), running, TrialState.FAIL)
    # What the owner's tell() then meets: a ValueError, not UpdateFinishedTrialError (which
    # comes only when the sweep lands between tell's read and its write).
    with pytest.raises(ValueError, match="Cannot tell a FAIL trial"):
        owner.tell(trial, 1.0)
    assert owner.trials[0].state == TrialState.FAIL


@pytest.mark.parametrize("setter, read", [
    (adapter.set_trial_user_attr, lambda t: t.user_attrs),
    (adapter.set_trial_system_attr, lambda t: t.system_attrs),
])
def test_attribute_setters_write_to_another_process_trial(open_as, setter, read):
    owner, other = open_as(), open_as()
    trial = owner.ask()
    frozen = other.get_trials(deepcopy=False)[0]
    setter(other, frozen, "worker", {"host": "h", "pid": 7})
    thread = threading.Thread(target=setter, args=(owner, trial, "beat", 12.5))
    thread.start()  # the heartbeat writes from its own thread
    thread.join()
    seen = read(adapter.get_frozen_trial(owner, trial))
    assert seen["worker"] == {"host": "h", "pid": 7} and seen["beat"] == 12.5
    assert read(open_as().trials[0])["beat"] == 12.5
    owner.tell(trial, 1.0)
    with pytest.raises(UpdateFinishedTrialError):
        setter(other, frozen, "late", 1)


@pytest.mark.parametrize("dist, inside, outside", [
    # a numeric string converts (Optuna's to_internal_repr); None and other types do not
    (FloatDistribution(0.1, 1.0), [0.1, 0.5, 1.0, 1, "0.5"], [0.05, 1.5, "a", None, [0.5]]),
    (FloatDistribution(1e-4, 1e-1, log=True), [1e-4, 0.01], [0.0, 0.2]),
    (FloatDistribution(0.0, 1.0, step=0.25), [0.0, 0.5, 1.0], [0.3, 1.25]),
    (IntDistribution(2, 10, step=2), [2, 4, 10, "4"], [3, 12, 0, "a", None]),
    (IntDistribution(1, 64, log=True), [1, 7, 64], [0, 65]),
    (CategoricalDistribution(["sgd", None, True, 3]), ["sgd", None, True, 3], ["adam", 4]),
])
def test_distribution_contains_as_sampling_does(dist, inside, outside):
    assert all(adapter.distribution_contains(dist, v) for v in inside), inside
    assert not any(adapter.distribution_contains(dist, v) for v in outside), outside


def test_the_pin_names_the_major_version_the_adapter_was_written_for():
    """An Optuna upgrade is a decision: run this suite against it, then move WRITTEN_FOR and
    the pin together."""
    installed = Version(optuna.__version__)
    assert installed.major == adapter.WRITTEN_FOR, (
        f"Optuna {installed} is installed; automl/optuna_adapter.py was written for "
        f"{adapter.WRITTEN_FOR}.x: check this suite against it, then update WRITTEN_FOR and "
        "the pin in pyproject.toml")
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"]
    pin = next(Requirement(d) for d in dependencies if Requirement(d).name == "optuna")
    assert pin.specifier.contains(f"{adapter.WRITTEN_FOR}.0")
    assert not pin.specifier.contains(f"{adapter.WRITTEN_FOR + 1}.0"), pin
    assert not pin.specifier.contains(f"{adapter.WRITTEN_FOR - 1}.99"), pin


def _optuna_private_names() -> set[str]:
    """The adapter's names, and every private attribute of the Optuna objects the code
    handles (so that a new private use is caught even before it is routed)."""
    study = optuna.create_study(storage=InMemoryStorage())
    trial = study.ask({"x": FloatDistribution(0, 1)})
    study.tell(trial, 1.0)
    objects = [study, trial, study.trials[0], FloatDistribution(0, 1), IntDistribution(0, 1),
               CategoricalDistribution([1]), *adapter.storage_of(study).get_all_studies()]
    classes = {type(o) for o in objects} | {JournalStorage, RDBStorage, InMemoryStorage}
    names = {n for o in objects for n in vars(o)}
    names |= {n for c in classes for k in inspect.getmro(c) if k.__module__.startswith("optuna")
              for n in vars(k)}
    return {n for n in names if n.startswith("_") and not n.startswith("__")} | set(
        adapter.PRIVATE_NAMES)


def _private_uses(path: Path, names: set[str]) -> list[str]:
    """Lines of ``path`` that name a private Optuna attribute (not one of our own ``self._x``),
    import a private Optuna module, or build a ``Trial`` by hand."""
    alternatives = "|".join(map(re.escape, sorted(names)))
    attribute = re.compile(rf"(?<!\bself)(?<!\bcls)\.({alternatives})\b")
    by_name = re.compile(rf"[\"']({alternatives})[\"']")  # getattr(study, "_storage")
    private_module = re.compile(r"\boptuna(\.\w+)*\._\w+|\bfrom optuna(\.\w+)* import _")
    constructor = re.compile(r"\boptuna\.(trial\.)?Trial\(")
    return [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for number, line in enumerate(path.read_text().splitlines(), start=1)
            if any(p.search(line) for p in (attribute, by_name, private_module, constructor))]


def test_no_module_but_the_adapter_uses_optuna_private_names():
    names = _optuna_private_names()
    found = [use for folder in ("automl", "plugins", "bench")
             for path in sorted((ROOT / folder).rglob("*.py")) if path != ADAPTER
             for use in _private_uses(path, names)]
    assert not found, "Optuna's private API outside automl/optuna_adapter.py:\n" + "\n".join(
        found)


def test_the_grep_finds_every_private_use_of_the_adapter():
    """The grep above is not vacuous: each name the adapter routes is found in the adapter."""
    names = _optuna_private_names()
    assert set(adapter.PRIVATE_NAMES) <= names
    found = "\n".join(_private_uses(ADAPTER, names))
    for name in adapter.PRIVATE_NAMES:
        assert f".{name}" in found, name
    assert "optuna.study._frozen" in found and "optuna.Trial(" in found
