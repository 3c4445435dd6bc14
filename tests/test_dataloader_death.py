"""A DataLoader worker killed mid-trial fails that trial alone: the reason names the worker, the
next trials train with fresh workers, and the search neither hangs nor leaves workers behind.

The images are a folder of PNGs kept on disk (``in_memory: false``), so every batch is decoded
by DataLoader worker processes; a test technique SIGKILLs one of them during the first trial.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from optuna.trial import TrialState
from PIL import Image

from automl import data as data_module
from automl.data import ImageFiles, load_data
from automl.discovery import technique_catalog
from automl.hookspecs import hookimpl
from automl.report import SilentReporter
from automl.search import Plugins, SearchSettings, run_search
from automl.space import load_space
from automl.technique import Technique

KILL_AT_BATCH = 2
KILLED: list[int] = []  # pids killed in this test session: the first trial kills, no other


def live_children() -> set[int]:
    """Pids of this process's children that have not exited (from /proc, so any child)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)"
        except OSError:  # exited while we looked
            continue
        state, parent = fields[0], int(fields[1])
        if parent == os.getpid() and state not in ("Z", "X"):
            children.add(int(stat.parent.name))
    return children


class KillWorker(Technique):
    """Kills one DataLoader worker process with SIGKILL, once: a worker the kernel's OOM killer
    took, or one that crashed in native decoding code.

    Helps: testing. Suggested: never. Source: this test.
    """

    name = "kill_worker"

    @hookimpl
    def on_train_start(self, state):
        self.before = live_children()  # the training loader starts its workers after this
        self.batches = 0

    @hookimpl
    def on_batch(self, state):
        self.batches += 1
        if KILLED or self.batches != KILL_AT_BATCH:
            return
        workers = sorted(live_children() - self.before)
        assert workers, "the batches do not come from worker processes"
        KILLED.append(workers[0])
        os.kill(workers[0], signal.SIGKILL)


@pytest.fixture
def image_folder(tmp_path, data) -> Path:
    """10 real digits per class as PNG files in train/ and test/ (RGB, 8x8)."""
    for part, split in (("train", data.train), ("test", data.test)):
        for label in range(10):
            folder = tmp_path / "images" / part / f"class{label}"
            folder.mkdir(parents=True)
            for i, image in enumerate(split.images[split.labels == label][:10]):
                grey = image[0].numpy()
                Image.fromarray(np.stack([grey] * 3, -1)).save(folder / f"{i:02d}.png")
    return tmp_path / "images"


@pytest.fixture
def catalog():
    catalog = {**technique_catalog(), "kill_worker": KillWorker}
    KILLED.clear()
    data_module.clear_cache()
    yield catalog
    data_module.clear_cache()


def test_a_killed_dataloader_worker_fails_its_trial_and_the_search_goes_on(tmp_path, catalog,
                                                                          image_folder):
    path = tmp_path / "space.yaml"
    path.write_text(f"""\
model: automl_resnet8
data: {{dataset: folder, path: {image_folder}, image_size: 8, batch_size: 16, workers: 2,
        in_memory: false}}
epochs: 1
techniques:
  optimizer: {{}}
  kill_worker: {{enabled: true}}
study: {{sampler: random, pruner: none, n_trials: 3, seed: 0}}
""")
    space = load_space(path, catalog)
    data = load_data(space.data)
    earlier = live_children()  # e.g. multiprocessing's resource tracker from another test
    assert isinstance(data.train.images, ImageFiles) and data.train.images.workers == 2
    assert data.train.labels.numel() // 16 > KILL_AT_BATCH
    settings = SearchSettings.from_space(space, study_name="killed", run_dir=tmp_path / "run",
                                         device="cpu")
    study = run_search(space, settings, SilentReporter(), data=data,
                       plugins=Plugins(catalog=catalog))

    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert len(KILLED) == 1
    reason = trials[0].user_attrs["fail_reason"]
    assert "DataLoader worker" in reason and str(KILLED[0]) in reason, reason
    assert "\n" not in reason
    assert live_children() - earlier == set(), "a DataLoader worker outlived its trial"
