"""Data-parallel training (automl.distributed): N gloo ranks on the CPU train what one process
trains. Each rank takes its share of the global batch; the randomness drawn for the batch
(order, augmentation, mixing) is one process's; DDP averages the gradients. What differs is
the order of floating-point sums (gradients averaged across ranks, metrics summed), so the
tolerances below are float32 rounding grown over a few hundred steps, not approximations of
the method."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from automl.data import load_data
from automl.discovery import training_manager
from automl.distributed import World, share, world
from automl.recipe import Recipe
from automl.testing import train_on_ranks
from automl.trainer import train

AUGMENTED = {"optimizer": {"name": "sgd", "lr": 0.02},
             "augment_policy": {"policy": "trivialaugment", "magnitude": 9, "num_ops": 2},
             "mixup": {"alpha": 0.2}, "ema": {"decay": 0.9},
             "norm_layer": {"kind": "group", "groups": 8}}  # per-sample normalisation


def _recipe(techniques, batch_size=32, epochs=2, **data) -> Recipe:
    return Recipe(model="automl_resnet8", epochs=epochs, seed=3, techniques=techniques,
                  data={"dataset": "digits", "batch_size": batch_size, **data})


def _one_process(recipe: Recipe, max_steps=None) -> list[dict]:
    return train(recipe, load_data(recipe.data), training_manager(recipe),
                 device=torch.device("cpu"), max_steps=max_steps).history


def test_shares_cover_the_batch_in_order():
    batch = torch.arange(31)
    shares = [share(batch, World(rank, 2)) for rank in range(2)]
    assert [len(s) for s in shares] == [16, 15]
    assert torch.equal(torch.cat(shares), batch)
    assert world().size == 1 and share(batch, world()) is batch


@pytest.mark.slow
def test_two_ranks_take_the_same_steps_as_one_process():
    """Unequal shares (31 = 16 + 15), gradient accumulation (no all-reduce on the first
    micro-batch), the batch-size technique's LR scaling rule (on the global batch),
    augmentation and mixup: after 6 optimizer steps the loss and validation scores agree to
    float32 rounding (1e-4)."""
    techniques = {**AUGMENTED, "grad_accumulation": {"steps": 2},
                  "batch_size": {"size": 31, "lr_scaling": "sqrt"}}
    recipe = _recipe(techniques, batch_size=16, epochs=1)
    one = _one_process(recipe, max_steps=6)
    ranks = train_on_ranks(recipe, 2, max_steps=6)
    assert [r["world_size"] for r in ranks] == [2, 2]
    for rank in ranks:  # every rank reports the same, all-reduced metrics
        for key in ("train/loss", "val/loss", "val/acc1"):
            assert rank["history"][-1][key] == pytest.approx(one[-1][key], rel=1e-4, abs=1e-4)


@pytest.mark.slow
def test_automl_train_nproc_2_matches_one_process(tmp_path):
    """The acceptance check: `automl train --nproc 2` (torchrun, gloo) on a recipe with
    per-sample augmentation, mixup and EMA gives each epoch's training loss within 0.1% and
    validation accuracy within 2 images (of 145) of one process with the same global batch."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(_recipe(AUGMENTED).to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for out, extra in (("one", []), ("two", ["--nproc", "2"])):
        run = subprocess.run([sys.executable, "-m", "automl", "train", str(recipe), "--device",
                              "cpu", "--out", str(tmp_path / out), *extra],
                             capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.count("epoch ") == 2  # rank 0 alone prints
    one, two = (json.loads((tmp_path / name / "metrics.json").read_text())
                for name in ("one", "two"))
    assert (one["ranks"], two["ranks"]) == (1, 2)
    val_images = 145
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-3)
        assert abs(b["val/acc1"] - a["val/acc1"]) * val_images <= 2 + 1e-6
    assert abs(two["metrics"]["test/acc1"] - one["metrics"]["test/acc1"]) < 0.02


@pytest.mark.slow
def test_rank_zero_stopping_stops_every_rank():
    """A pruned trial: rank 0's epoch callback raises after epoch 1; rank 1 stops there too
    (StoppedByRankZero) instead of waiting in the next epoch's collectives."""
    ranks = train_on_ranks(_recipe({}, epochs=3), 2, stop_after_epoch=1)
    assert ranks[0]["error"] == "_StopHere"
    assert ranks[1]["error"] == "StoppedByRankZero"


@pytest.mark.parametrize("args, message", [
    (["--nnodes", "2", "--node-rank", "2", "--master-port", "29500"], "--node-rank 2"),
    (["--nnodes", "2"], "--master-port"),
])
def test_launch_options_are_checked(tmp_path, args, message):
    from click.testing import CliRunner

    from automl.cli import cli

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(_recipe({}).to_yaml())
    result = CliRunner().invoke(cli, ["train", str(recipe), "--device", "cpu", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


#: Techniques that act after the batch is cut (extra forwards, a second gradient pass, their
#: own draws, a teacher built in a stage, evaluation wrappers): each must train on 2 ranks.
AFTER_THE_CUT = ["adversarial_training", "distillation", "dropout", "fixres", "label_propagation",
                 "pseudo_labels", "quantization", "sam", "stochastic_depth",
                 "test_time_augmentation", "triplet_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("name", AFTER_THE_CUT)
def test_technique_trains_on_two_ranks(name):
    from automl.discovery import technique_catalog
    from automl.testing import data_for

    cls = technique_catalog()[name]
    recipe = Recipe(model="automl_resnet8", epochs=1, seed=1,
                    data=data_for(cls, "digits", batch_size=32),
                    techniques={name: dict(cls.defaults)})
    ranks = train_on_ranks(recipe, 2, max_steps=3)
    assert all("error" not in rank for rank in ranks), ranks
    first, second = (rank["history"][-1] for rank in ranks)
    for key in ("train/loss", "val/loss", "val/acc1"):  # all-reduced: the same on each rank
        assert first[key] == second[key]


def _children(pid: int) -> dict[int, dict[str, str]]:
    """The processes whose parent is ``pid``, with their environments."""
    from pathlib import Path

    found = {}
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
            if f"\nPPid:\t{pid}\n" in status:
                environ = (entry / "environ").read_bytes().split(b"\0")
                found[int(entry.name)] = dict(item.decode().split("=", 1)
                                              for item in environ if b"=" in item)
        except OSError:  # ended meanwhile
            continue
    return found


@pytest.mark.slow
def test_a_killed_rank_ends_automl_train(tmp_path):
    """kill -9 of rank 1 mid-training: torchrun's agent stops rank 0, and `automl train`
    exits 1 with one line naming the rank and the signal; nothing is written, no rank left."""
    import signal
    import time

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(_recipe(AUGMENTED, epochs=50).to_yaml())
    launcher = subprocess.Popen(
        [sys.executable, "-m", "automl", "train", str(recipe), "--device", "cpu", "--out",
         str(tmp_path / "out"), "--nproc", "2"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launcher.stdout.readline().startswith("epoch   1/50")  # the ranks are training
    ranks = _children(launcher.pid)
    rank1 = next(pid for pid, env in ranks.items() if env.get("RANK") == "1")
    os.kill(rank1, signal.SIGKILL)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 1
    assert err.strip().splitlines()[-1] == ("Error: rank 1 of automl train failed (killed by "
                                            "signal SIGKILL); the other ranks were stopped")
    assert not (tmp_path / "out" / "model.pt").exists()
    time.sleep(1)
    assert not any(os.path.exists(f"/proc/{pid}/status") and "State:\tZ" not in
                   open(f"/proc/{pid}/status").read() for pid in ranks)


def test_each_rank_under_torchrun_takes_its_own_gpu(monkeypatch):
    from automl.distributed import rank_device
    from automl.errors import UserError

    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    assert rank_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert rank_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(UserError, match="--device cuda:0: names one GPU for 2 ranks"):
        rank_device(torch.device("cuda", 0))
