"""``python -m bench.stages --quick``: every multi-stage comparison runs end to end (one seed,
one epoch, the digits data; its verdicts mean nothing at that size). Slow for a test (teacher
and pretraining stages train too): marked ``slow``; CI runs it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.stages import COMPARISONS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_trains_every_arm_and_reports_each_expectation(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.stages", "--quick", "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "BENCH_RESULTS": str(tmp_path)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["benchmark"] == "stages" and summary["quick"] and summary["seeds"] == 1
    assert set(summary["comparisons"]) == set(COMPARISONS)
    assert list((tmp_path).glob("stages-quick-*.json"))  # a smoke run never replaces a full one
    for name, result in summary["comparisons"].items():
        comparison = COMPARISONS[name]
        assert set(result["arms"]) == set(comparison.arms), name
        means = {}
        for arm, row in result["arms"].items():
            assert set(comparison.metrics) <= set(row["metrics"]), (name, arm)
            means[arm] = {m: v["mean"] for m, v in row["metrics"].items()}
            assert all(math.isfinite(v) for v in means[arm].values()), (name, arm)
            assert 0.0 <= means[arm]["test/acc1"] <= 1.0
        assert result["holds"] is bool(comparison.verdict(means)), name
        assert summary["held"][name] is result["holds"]
        assert f"{name}: {comparison.expectation}" in run.stdout
    semi = summary["comparisons"]["semi_supervised"]
    assert semi["unlabelled_images"] > 8 * semi["labelled_images"]  # 10% labelled
    distilled = summary["comparisons"]["distillation"]["arms"]
    assert distilled["distilled"]["stage_seconds"] > 0  # the teacher stage ran, timed apart
    assert distilled["scratch"]["stage_seconds"] == 0
    assert 0.0 <= distilled["distilled"]["metrics"]["teacher/test_acc1"]["mean"] <= 1.0
