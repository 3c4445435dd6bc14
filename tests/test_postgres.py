"""Distributed search on a real PostgreSQL server, reached by the plain ``postgresql://`` URL
users write (SQLAlchemy would pick psycopg2 for it; only psycopg 3 is installed).

The server comes from ``AUTOML_TEST_POSTGRESQL``: ``.ci/run`` starts one with
``.ci/postgres.sh``. Without it the tests skip, except in CI (``CI=true``), where they fail.
Every test uses a fresh study name, so reruns on the same database never collide.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

SCRIPT = Path(sys.executable).parent / "automl"
AUTOML = str(SCRIPT) if SCRIPT.exists() else shutil.which("automl")

# Every trial completes: random sampling, no pruning, SGD with LRs that cannot diverge, and
# a continuous LR so that no two trials share parameters (a duplicate would be pruned).
SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: 1
techniques:
  optimizer: {name: sgd, lr: {type: float, low: 0.01, high: 0.1, log: true}}
  lr_schedule: {schedule: cosine}
  label_smoothing: {}
study: {sampler: random, pruner: none}
"""
PROCESSES = 4
N_TRIALS = 80


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get("AUTOML_TEST_POSTGRESQL")
    if url:
        return url
    reason = ("AUTOML_TEST_POSTGRESQL is not set; start a server with "
              "`export AUTOML_TEST_POSTGRESQL=$(.ci/postgres.sh start)`")
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the PostgreSQL tests)")
    pytest.skip(reason)


@pytest.fixture
def space(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def search_command(space: Path, url: str, study_name: str, n_trials: int,
                   out: Path) -> list[str]:
    assert AUTOML, "the automl console script is not installed"
    return [AUTOML, "search", str(space), "--storage", url, "--study-name", study_name,
            "--n-trials", str(n_trials), "--out", str(out)]


def one_thread_env() -> dict[str, str]:
    """Several searches share the CPU: one intra-op thread each keeps them from stalling."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def fresh_study_name() -> str:
    return f"test-{uuid.uuid4().hex}"


def open_rdb(url: str) -> RDBStorage:
    """The test's own view of the database, independent of how automl opens it."""
    return RDBStorage(make_url(url).set(drivername="postgresql+psycopg")
                      .render_as_string(hide_password=False))


def test_processes_share_one_study_budget(postgres_url, space, tmp_path):
    """Like four machines on one study: together they run exactly --n-trials trials."""
    name = fresh_study_name()
    logs = [tmp_path / f"search{k}.log" for k in range(PROCESSES)]
    processes = []
    try:
        for k, log in enumerate(logs):
            with open(log, "w") as out:
                processes.append(subprocess.Popen(
                    search_command(space, postgres_url, name, N_TRIALS, tmp_path / f"run{k}"),
                    stdout=out, stderr=subprocess.STDOUT, env=one_thread_env()))
        codes = [process.wait(timeout=1200) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    outputs = [log.read_text() for log in logs]
    assert codes == [0] * PROCESSES, "\n".join(outputs)
    assert not any("Traceback" in output for output in outputs), "\n".join(outputs)

    trials = optuna.load_study(study_name=name, storage=open_rdb(postgres_url)).trials
    assert len(trials) == N_TRIALS
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert sorted(t.number for t in trials) == list(range(N_TRIALS))


def test_password_never_appears(postgres_url, space, tmp_path):
    password = make_url(postgres_url).password
    assert password, "AUTOML_TEST_POSTGRESQL must name a password"
    out = tmp_path / "run"
    proc = subprocess.run(search_command(space, postgres_url, fresh_study_name(), 1, out),
                          capture_output=True, text=True, timeout=600, env=one_thread_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert password not in proc.stdout + proc.stderr
    written = [path for path in out.rglob("*") if path.is_file()]
    assert written, "the search wrote nothing under --out"
    for path in written:
        assert password.encode() not in path.read_bytes(), path


def test_wrong_password_is_one_error_line_without_it(postgres_url, space, tmp_path):
    wrong = f"wrong-{uuid.uuid4().hex}"
    url = make_url(postgres_url).set(password=wrong).render_as_string(hide_password=False)
    proc = subprocess.run(search_command(space, url, fresh_study_name(), 1, tmp_path / "run"),
                          capture_output=True, text=True, timeout=600, env=one_thread_env())
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert wrong not in proc.stdout + proc.stderr
