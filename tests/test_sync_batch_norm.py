"""sync_batch_norm: two real gloo ranks on the CPU, each holding part of a fixed batch, give
what plain BatchNorm2d gives on the whole batch in one process (output, gradients, running
statistics); on one process the technique changes nothing and says so.

The ranks are spawned processes that meet through a FileStore in tmp_path and write what
they computed to files there; the comparisons run in the test process.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from automl.plugins.sync_batch_norm import SyncBatchNorm
from automl.plugins.sync_batch_norm_layer import (
    SyncBatchNorm2d,
    to_sync_batch_norm,
    with_plain_batch_norm,
)
from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct
from torch import multiprocessing, nn

from automl.discovery import technique_catalog, training_manager
from automl.model_file import load_model, save_model
from automl.recipe import Recipe
from automl.technique import conflicts_of
from automl.trainer import fit, prepare, train

CPU = torch.device("cpu")
STEPS = 2  # two steps: the running statistics' update is checked after a first one
TRAINED_STEPS = 3  # optimizer steps of the real data-parallel training
#: name: (each rank's number of samples, the batch norm's momentum)
CASES = {"equal": ((4, 4), 0.1), "unequal": ((5, 3), 0.1), "cumulative": ((3, 5), None)}


def _batch_norm(momentum: float | None) -> nn.Sequential:
    """One batch norm with non-trivial affine weights, in a container (surgery replaces
    children, as in a model)."""
    bn = nn.BatchNorm2d(3, momentum=momentum)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return nn.Sequential(bn)


def _data(n: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's fixed batch (off-centre, so the mean matters) and the targets of its loss."""
    gen = torch.Generator().manual_seed(100 + step)
    return (torch.randn(n, 3, 4, 4, generator=gen) * 2 + 3,
            torch.randn(n, 3, 4, 4, generator=gen))


def _train(model: nn.Module, shares: tuple[int, ...], rank: int) -> dict[str, list]:
    """STEPS steps on this rank's share of each batch. The loss of a share is its part of the
    whole batch's mean loss, so the ranks' losses sum to the whole batch's; the weight and
    bias gradients are summed across ranks (what DDP's average gives when each rank's loss
    is scaled by the number of ranks, as the trainer does)."""
    n, start = sum(shares), sum(shares[:rank])
    bn = model[0]
    seen: dict[str, list] = {"out": [], "x_grad": [], "weight_grad": [], "bias_grad": []}
    for step in range(STEPS):
        images, targets = (t[start:start + shares[rank]] for t in _data(n, step))
        images.requires_grad_(True)
        out = model(images)
        loss = ((out - targets) ** 2).sum() / (n * out[0].numel())
        model.zero_grad()
        loss.backward()
        grads = torch.stack([bn.weight.grad, bn.bias.grad])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(grads)
        for key, value in zip(seen, (out, images.grad, grads[0], grads[1]), strict=True):
            seen[key].append(value.detach().clone())
    seen["running"] = [bn.running_mean.clone(), bn.running_var.clone(),
                       bn.num_batches_tracked.clone()]
    return seen


@contextmanager
def _warnings(logger: str) -> Iterator[list[str]]:
    """The warnings ``logger`` gives inside the block (a spawned rank has no caplog)."""
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger(logger).addHandler(handler)
    try:
        yield said
    finally:
        logging.getLogger(logger).removeHandler(handler)


def _recipe() -> Recipe:
    return Recipe(model="automl_resnet8", epochs=1, techniques={"sync_batch_norm": {}},
                  data={"dataset": "digits", "batch_size": 32})


def _rank(rank: int, size: int, folder: str) -> None:
    """One rank: join the group, run every case with the layer and with the technique's
    conversion, and write the results to ``folder/rank{rank}.pt``."""
    from automl import distributed

    torch.set_num_threads(1)
    store = torch.distributed.FileStore(f"{folder}/store", size)
    distributed.init_process_group(CPU, rank, size, store=store, timeout=60)
    try:
        results = {}
        for name, (shares, momentum) in CASES.items():
            model = _batch_norm(momentum)
            converted = to_sync_batch_norm(model, CPU)
            results[name] = {"converted": converted, "type": type(model[0]).__name__,
                             **_train(model, shares, rank)}
            plain = with_plain_batch_norm(model)
            results[name]["plain_type"] = type(plain[0]).__name__
            results[name]["plain_state"] = plain.state_dict()
        recipe = _recipe()
        from automl.data import load_data

        data = load_data(recipe.data)
        pm = training_manager(recipe)
        state = prepare(recipe, data, pm, CPU)
        results["technique"] = {
            "train_types": sorted({type(m).__name__ for m in state.model.modules()
                                   if isinstance(m, nn.modules.batchnorm._BatchNorm)}),
            "eval_types": sorted({type(m).__name__ for m in pm.hook.eval_model(state=state)
                                  .modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}),
        }
        try:
            SyncBatchNorm().modify_model(dataclasses.replace(state, model=nn.Conv2d(1, 3, 1)))
        except ValueError as exc:
            results["technique"]["no_batch_norm"] = str(exc)
        fit(state, pm, max_steps=TRAINED_STEPS)
        results["technique"]["history"] = state.history
        if rank == 0:  # what automl train does after training
            with _warnings("automl") as said:
                save_model(Path(folder) / "model.pt", state, pm,
                           pm.hook.eval_model(state=state), state.history[-1])
            results["technique"]["save_warnings"] = said
        torch.save(results, f"{folder}/rank{rank}.pt")
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def ranks_folder(tmp_path_factory) -> Path:
    """Where two gloo ranks (one spawn for all cases) wrote what they computed."""
    folder = tmp_path_factory.mktemp("ranks")
    multiprocessing.spawn(_rank, args=(2, str(folder)), nprocs=2, join=True)
    return folder


@pytest.fixture(scope="module")
def two_ranks(ranks_folder) -> list[dict]:
    return [torch.load(ranks_folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _whole_batch(case: str) -> dict[str, list]:
    shares, momentum = CASES[case]
    return _train(_batch_norm(momentum), (sum(shares),), 0)


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_normalise_by_the_whole_batch_and_pass_its_gradients(two_ranks, case):
    whole = _whole_batch(case)
    for r in range(2):
        assert two_ranks[r][case]["converted"] == 1
        assert two_ranks[r][case]["type"] == "SyncBatchNorm2d"
    for step in range(STEPS):
        for key in ("out", "x_grad"):  # each rank's rows of the whole batch's
            joined = torch.cat([two_ranks[r][case][key][step] for r in range(2)])
            torch.testing.assert_close(joined, whole[key][step], atol=1e-5, rtol=1e-5)
        for key in ("weight_grad", "bias_grad"):  # summed across ranks
            for r in range(2):
                torch.testing.assert_close(two_ranks[r][case][key][step], whole[key][step],
                                           atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_keep_the_running_statistics_of_the_whole_batch(two_ranks, case):
    mean, var, tracked = _whole_batch(case)["running"]
    for r in range(2):
        got_mean, got_var, got_tracked = two_ranks[r][case]["running"]
        torch.testing.assert_close(got_mean, mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_var, var, atol=1e-5, rtol=1e-5)
        assert got_tracked.item() == tracked.item() == STEPS
        assert two_ranks[r][case]["plain_type"] == "BatchNorm2d"
        assert two_ranks[r][case]["plain_state"]["0.running_var"].equal(got_var)


def test_the_technique_trains_synchronised_and_evaluates_plain_batch_norm(two_ranks):
    for r in range(2):
        assert {k: v for k, v in two_ranks[r]["technique"].items()
                if k not in ("history", "save_warnings")} == {
            "train_types": ["SyncBatchNorm2d"], "eval_types": ["BatchNorm2d"],
            "no_batch_norm": "sync_batch_norm: model automl_resnet8 has no BatchNorm2d layers "
                             "to synchronise"}


def test_data_parallel_training_with_it_is_one_process_training(two_ranks, data):
    """The trainer's DDP on two ranks with synchronised batch norm trains what one process
    trains on the same global batches (batch norm is what would differ otherwise): the same
    training loss and validation accuracy, up to float32 reduction order."""
    one = train(_recipe(), data, training_manager(_recipe()), device=CPU,
                max_steps=TRAINED_STEPS).history
    for r in range(2):
        got = two_ranks[r]["technique"]["history"]
        assert len(got) == len(one) == 1
        assert got[0].keys() == one[0].keys() >= {"train/loss", "val/loss", "val/acc1"}
        assert got[0] == pytest.approx(one[0], rel=1e-4)


def test_a_model_trained_on_two_ranks_loads_on_one(two_ranks, ranks_folder, data):
    assert two_ranks[0]["technique"]["save_warnings"] == []
    loaded = load_model(ranks_folder / "model.pt")
    assert {type(m) for m in loaded.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)} == {nn.BatchNorm2d}
    images = data.val.images[:8]
    assert loaded.model(loaded.preprocess(images)).shape == (8, 10)


# --- one process --------------------------------------------------------------------------------


def test_on_one_process_the_technique_changes_nothing_and_says_so(data, caplog):
    recipe = Recipe(model="automl_resnet8", epochs=1, techniques={"sync_batch_norm": {}},
                    data={"dataset": "digits", "batch_size": 32})
    pm = training_manager(recipe)
    with caplog.at_level(logging.INFO, logger="automl"):
        state = prepare(recipe, data, pm, CPU)
        pm.hook.modify_model(state=state)  # said once per training, however often it is asked
    types = {type(m) for m in state.model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert types == {nn.BatchNorm2d}
    assert pm.hook.eval_model(state=state) is state.model
    notes = [r.getMessage() for r in caplog.records if r.name == "automl"]
    assert notes == ["sync_batch_norm: one process, batch-norm statistics are already the "
                     "whole batch's; nothing to synchronise"]


def test_a_timm_norm_act_keeps_its_activation_and_comes_back_as_itself():
    model = nn.Sequential(BatchNormAct2d(3, act_layer=nn.ReLU), nn.BatchNorm2d(3))
    model[0].running_mean.fill_(0.5)
    x = torch.randn(4, 3, 2, 2)
    expected = model(x)
    assert to_sync_batch_norm(model, CPU) == 2
    assert [type(m) for m in model] == [SyncBatchNorm2d, SyncBatchNorm2d]
    assert isinstance(model[0].act, nn.ReLU)
    torch.testing.assert_close(model(x), expected)  # one process: plain batch norm
    plain = with_plain_batch_norm(model)
    assert [type(m) for m in plain] == [BatchNormAct2d, nn.BatchNorm2d]
    assert plain[0].running_mean.equal(model[0].running_mean)
    torch.testing.assert_close(plain.eval()(x), model.eval()(x))


def test_on_cuda_it_is_pytorchs_sync_batch_norm_and_comes_back_plain():
    """The CUDA conversion (PyTorch's SyncBatchNorm, timm's SyncBatchNormAct), checked on
    CPU modules: it needs no GPU until the forward."""
    model = nn.Sequential(BatchNormAct2d(3, act_layer=nn.ReLU), nn.BatchNorm2d(3))
    model[1].running_var.fill_(2.0)
    assert to_sync_batch_norm(model, torch.device("cuda")) == 2
    assert [type(m) for m in model] == [SyncBatchNormAct, nn.SyncBatchNorm]
    assert isinstance(model[0].act, nn.ReLU)
    plain = with_plain_batch_norm(model)
    assert [type(m) for m in plain] == [BatchNormAct2d, nn.BatchNorm2d]
    assert isinstance(plain[0].act, nn.ReLU) and plain[1].running_var.eq(2.0).all()


def test_it_never_trains_with_ghost_batch_norm_or_norm_layer():
    catalog = technique_catalog()
    assert conflicts_of(catalog["sync_batch_norm"], catalog).keys() == {"ghost_batch_norm",
                                                                        "norm_layer"}
    for other in ("ghost_batch_norm", "norm_layer"):
        assert "sync_batch_norm" in conflicts_of(catalog[other], catalog)
