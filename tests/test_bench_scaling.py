"""``python -m bench.scaling --quick``: 1 rank against 2 gloo ranks runs end to end on a CPU (the
digits data, a few steps; its figures mean nothing at that size). Slow for a test (every arm
is a launch of spawned processes that import torch): marked ``slow``; CI runs it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_times_every_arm_and_reports_the_ratio(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.scaling", "--quick", "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1",
                              "BENCH_RESULTS": str(tmp_path)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "scaling" and result["quick"] and result["backend"] == "gloo"
    assert [(a["ranks"], a["threads_per_rank"]) for a in result["arms"]] == [
        (1, 1), (1, 2), (2, 1)]
    for arm in result["arms"]:
        assert len(arm["runs_images_per_s"]) == result["repeats"]
        assert math.isfinite(arm["images_per_s"]) and arm["images_per_s"] > 0
    rates = [arm["images_per_s"] for arm in result["arms"]]
    assert result["baseline"] == "1 rank x 1 thread" and result["ranks"] == 2
    assert result["ratio"] == pytest.approx(rates[2] / rates[0], rel=1e-2)
    assert result["efficiency"] == pytest.approx(result["ratio"] / 2, rel=1e-2)
    assert result["ratio_same_cores"] == pytest.approx(rates[2] / rates[1], rel=1e-2)
    assert list(tmp_path.glob("scaling-quick-*.json"))  # a smoke run never replaces a full one
