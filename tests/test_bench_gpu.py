"""``python -m bench.gpu --quick``: the one command for a lent GPU runs end to end on a CPU.

Slow for a test (each benchmark is a process of its own that imports torch, and ``jobs`` starts
worker processes: under 2 minutes on 2 cores, 6-8 when they are busy): marked ``slow``, so
``pytest -m "not slow"`` leaves it out locally. CI runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import STEPS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_writes_every_result_and_a_summary(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.gpu", "--quick", "--device", "cpu",
                          "--results", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["benchmark"] == "gpu" and summary["quick"]
    rows = {row["name"]: row for row in summary["steps"]}
    assert list(rows) == [step.name for step in STEPS]
    for step in STEPS:
        row = rows[step.name]
        if step.quick is None:
            assert row["ok"] is None, row
            continue
        assert row["ok"], row
        assert row["result"]["quick"] and row["result"]["benchmark"] == step.module
        assert step.name in run.stdout.split("measurement", 1)[1]  # the printed table
    written = {path.name.split("-quick-")[0] for path in tmp_path.glob("*-quick-*.json")}
    assert written == {step.module for step in STEPS if step.quick is not None} | {"gpu"}
