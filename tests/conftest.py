"""Fixtures every test file shares."""

from __future__ import annotations

import pytest
import torch

from automl.data import load_data


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest, and it does not stall when the CPU is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _stage_cache(tmp_path_factory):
    """Stages a test builds without a run folder (automl.stages) are cached for this session
    only, never in the user's ~/.cache."""
    import os

    from automl.stages import STAGE_DIR_ENV

    before = os.environ.get(STAGE_DIR_ENV)
    os.environ[STAGE_DIR_ENV] = str(tmp_path_factory.mktemp("stages"))
    yield
    if before is None:
        os.environ.pop(STAGE_DIR_ENV, None)
    else:
        os.environ[STAGE_DIR_ENV] = before


@pytest.fixture(scope="module")
def data():
    """The embedded digits dataset in batches of 32 (loaded once per process, then cached)."""
    return load_data({"dataset": "digits", "batch_size": 32})
