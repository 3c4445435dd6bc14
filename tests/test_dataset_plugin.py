"""A dataset from an installed plugin, searched by name through the real ``automl`` command.

The plugin is a real distribution (module + ``.dist-info`` on ``PYTHONPATH``, as in
tests/test_third_party_plugin.py), so discovery goes through entry points, and ``--jobs 2``
workers find it as the parent does. The plugin logs which process locates and which loads
its data: the parent of the workers must only locate it. (`automl train` on a plugin's
dataset, in-process: tests/test_data.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from test_third_party_plugin import builtins_only, environment, install, run

# Three classes of the embedded digits (a real dataset, no download), registered by a plugin.
FEW_DIGITS = '''
import json
import os

from automl import hookimpl


def _log(event, settings):
    with open(os.environ["AUTOML_TEST_PLUGIN_LOG"], "a") as log:
        log.write(json.dumps({"event": event, "pid": os.getpid(),
                              "classes": settings["classes"]}) + "\\n")


def load(settings):
    import torch
    from sklearn.datasets import load_digits

    from automl.data import Split

    _log("load", settings)
    bunch = load_digits()
    keep = torch.from_numpy(bunch.target) < settings["classes"]
    images = torch.from_numpy(bunch.images)[keep].mul(255 / 16).round().to(torch.uint8)
    labels = torch.from_numpy(bunch.target)[keep].to(torch.int64)
    full = Split(images.unsqueeze(1).contiguous(), labels)
    test = torch.arange(len(labels)) % 5 == 0
    train = Split(full.images[~test].contiguous(), labels[~test].contiguous())
    return train, Split(full.images[test].contiguous(), labels[test].contiguous()), \\
        [str(c) for c in range(settings["classes"])]


def locate(settings):
    _log("locate", settings)


@hookimpl
def register_datasets(register):
    register("few_digits", load, reads=("classes",), requires=("classes",), locate=locate)
'''

SPACE = """\
model: automl_resnet8
data: {dataset: few_digits, classes: 3, batch_size: 64}
epochs: 1
techniques:
  optimizer: {}
study: {n_trials: 2, pruner: none, warm_start: false, confirm_top: 0}
"""


def test_a_plugin_dataset_is_searched_by_name_and_only_the_workers_load_it(tmp_path):
    site = tmp_path / "site"
    install(site, "automl-few-digits", "0.1", "few_digits", FEW_DIGITS,
            {"few_digits": "few_digits"})
    (tmp_path / "space.yaml").write_text(SPACE)
    log = tmp_path / "data.jsonl"
    env = environment(site, log)

    search = run(["search", "space.yaml", "--out", "RUN", "--device", "cpu", "--jobs", "2"],
                 tmp_path, env)
    assert search.returncode == 0, search.stdout + search.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    parent = [e for e in events if e["event"] == "locate"]
    loads = [e for e in events if e["event"] == "load"]
    assert len(parent) == 1 and parent[0]["classes"] == 3  # checked once, before any write
    assert len({e["pid"] for e in loads}) == 2  # each worker loads its own copy...
    assert parent[0]["pid"] not in {e["pid"] for e in loads}  # ...and the parent none
    best = yaml.safe_load((tmp_path / "RUN" / "best_recipe.yaml").read_text())
    assert best["data"] == {"dataset": "few_digits", "classes": 3, "batch_size": 64}


def test_listing_and_checking_datasets_imports_neither_torch_nor_numpy(tmp_path):
    """Datasets register lazily: their loaders import torch when they run, not before (the
    built-ins: plugins installed beside them are left out)."""
    code = """
import sys
from automl.data import available_datasets
from automl.data.settings import for_loading
print(" ".join(available_datasets()))
for_loading({"dataset": "folder", "path": "x", "image_size": 8})
print(" ".join(m for m in ("torch", "numpy") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=builtins_only())
    assert result.returncode == 0, result.stderr
    names, loaded = (result.stdout.splitlines() + [""])[:2]
    assert {"cifar10", "cifar100", "digits", "fashion_mnist", "folder", "mnist"} <= \
        set(names.split())
    assert loaded == ""
