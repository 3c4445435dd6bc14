"""The promise of the GPU path: no training batch makes the host wait for the device.

Every technique of the catalog is checked, so a new one is covered the day it is registered.
On a CPU the tests count the calls that would read back from a GPU (see ``HostReads``); where
a GPU is present, ``torch.cuda.set_sync_debug_mode("error")`` makes CUDA itself refuse every
synchronising call inside the training steps.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from automl.data import load_data
from automl.discovery import technique_catalog, training_manager
from automl.recipe import Recipe
from automl.trainer import fit, prepare

#: Hooks that run once per batch (training or evaluation); a host read in one is per batch.
PER_BATCH_HOOKS = ("augment_batch", "on_batch", "after_loss", "after_backward", "after_step",
                   "eval_batch")

#: aten ops whose CUDA kernels make the host wait: a value read back (``.item()``, ``bool()``,
#: ``int()``, ``float()``, ``torch.equal``) or an output whose size depends on the data.
_SYNCING_OPS = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "nonzero_static",
                "masked_select", "unique", "_unique", "_unique2", "unique_dim",
                "unique_consecutive", "bincount", "histc", "repeat_interleave"}
#: Python-level reads that never reach the dispatcher for a CPU tensor.
_PYTHON_READS = ("tolist", "numpy", "cpu")


def _batched(cls: type) -> bool:
    return any(callable(getattr(cls, hook, None)) for hook in PER_BATCH_HOOKS)


#: Every technique, the batched ones (those with a per-batch hook) first.
TECHNIQUES = sorted(technique_catalog(), key=lambda n: (not _batched(technique_catalog()[n]), n))
BATCHED = [name for name in TECHNIQUES if _batched(technique_catalog()[name])]


class HostReads(TorchDispatchMode):
    """Records every call that would make the host wait for a CUDA device.

    Sees: every aten op dispatched from Python or from a composite op (so ``.item()``,
    ``bool(t)``, ``int(t)``, ``float(t)``, ``if t:``, ``t.nonzero()``, boolean-mask indexing,
    ``unique``, ``bincount`` however they are reached), plus ``Tensor.tolist`` / ``numpy`` /
    ``cpu`` and ``torch.cuda.synchronize`` patched at the Python level.
    Cannot see, on a CPU: reads inside a native kernel (CUDA's ``bincount`` reading its
    input's maximum, for one), copies from the host to the device (a ``torch.tensor(list,
    device=...)`` is a synchronous copy on CUDA and nothing at all on a CPU), and CUDA-only
    code paths. The CUDA test below sees all of those.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        super().__init__()
        self.reads: list[str] = []
        self.active = True  # cleared while outside the code being watched
        for method in _PYTHON_READS:
            self._patch(monkeypatch, torch.Tensor, method)
        self._patch(monkeypatch, torch.cuda, "synchronize")

    def _patch(self, monkeypatch, owner, name: str) -> None:
        original = getattr(owner, name)

        def counting(*args, **kwargs):
            if self.active:
                self.reads.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counting)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if self.active and (name in _SYNCING_OPS or _boolean_index(name, args)):
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


def _boolean_index(name: str, args) -> bool:
    """Indexing with a boolean mask: its CUDA kernel first counts the mask on the host."""
    if name not in ("index", "index_put", "index_put_", "_index_put_impl_"):
        return False
    return any(t is not None and t.dtype == torch.bool for t in args[1])


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """A digits-shaped automl_resnet8 state dict: the one setting a default cannot give."""
    import automl.models

    path = tmp_path_factory.mktemp("weights") / "resnet8.pt"
    torch.save(automl.models.automl_resnet8(num_classes=10, in_chans=1).state_dict(), path)
    return str(path)


def _recipe(techniques: list[str], weights: str) -> Recipe:
    """automl_resnet8 on digits with ``techniques`` at their defaults (and the optimizer);
    half the labels hidden when one trains on unlabelled images, and label propagation
    without its warm-up, so its per-batch term runs in the one epoch."""
    needs = {"transfer_learning": {"checkpoint": weights},
             "label_propagation": {"warmup_epochs": 0}}
    data = {"dataset": "digits", "batch_size": 32}
    if any(technique_catalog()[name].needs_unlabelled for name in techniques):
        data["labelled_fraction"] = 0.5
    return Recipe(model="automl_resnet8", data=data, epochs=1, seed=0,
                  techniques={name: needs.get(name, {}) for name in ["optimizer", *techniques]})


def _watch_hooks(pm, reads: HostReads, hooks=PER_BATCH_HOOKS):
    """Watch only while one of ``hooks`` runs (every implementation, the core's included)."""
    reads.active = False

    def before(hook_name, _impls, _kwargs):
        reads.active = hook_name in hooks

    def after(_outcome, _hook_name, _impls, _kwargs):
        reads.active = False

    return pm.add_hookcall_monitoring(before, after)


def test_every_batched_technique_is_covered():
    """The augmentations the README promises run on the device are among the checked ones."""
    assert {"flip", "random_crop", "augment_policy", "augmix", "random_erasing", "mixup",
            "cutmix"} <= set(BATCHED)


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment", "autoaugment_imagenet"])
def test_policy_hooks_read_nothing_back(data, monkeypatch, policy):
    """Each policy draws ops per sample, so a few batches reach every op (Equalize too)."""
    recipe = Recipe(model="automl_resnet8", data={"dataset": "digits", "batch_size": 32},
                    epochs=1, seed=0, techniques={"optimizer": {},
                                                  "augment_policy": {"policy": policy}})
    pm = training_manager(recipe)
    state = prepare(recipe, data, pm, torch.device("cpu"))
    with HostReads(monkeypatch) as reads:
        _watch_hooks(pm, reads)
        fit(state, pm, max_steps=3)
    assert reads.reads == []


@pytest.mark.parametrize("name", BATCHED)
def test_per_batch_hooks_read_nothing_back(data, weights, monkeypatch, name):
    """Not one host read inside a per-batch hook, first batch included."""
    recipe = _recipe([name], weights)
    pm = training_manager(recipe)
    state = prepare(recipe, load_data(recipe.data), pm, torch.device("cpu"))
    with HostReads(monkeypatch) as reads:
        _watch_hooks(pm, reads)
        fit(state, pm, max_steps=3)
    assert reads.reads == []


@pytest.mark.parametrize("name", TECHNIQUES)
def test_the_training_loop_never_waits_for_the_device_per_batch(data, weights, monkeypatch,
                                                                  name):
    """Host reads over the whole of 1 and of 4 steps (one epoch, validation included): the
    same count, so none of them is per batch (the per-epoch loss and validation reads are all
    there is). Every technique of the catalog, each with the core's defaults."""
    counts = []
    for steps in (1, 4):
        recipe = _recipe([name], weights)
        pm = training_manager(recipe)
        state = prepare(recipe, load_data(recipe.data), pm, torch.device("cpu"))
        with HostReads(monkeypatch) as reads:
            fit(state, pm, max_steps=steps)
        monkeypatch.undo()
        assert state.step == steps
        counts.append(sorted(reads.reads))
    assert counts[0] == counts[1]
    assert counts[0], "the epoch's loss is read once: a counter that sees nothing is broken"


def test_all_batched_techniques_together_read_nothing_back_per_batch(data, weights,
                                                                      monkeypatch):
    """The batched techniques in one recipe (as a search combines them), with a schedule,
    weight decay and label smoothing: no read in their hooks, none per batch in the loop."""
    names = [*BATCHED, "lr_schedule", "weight_decay", "label_smoothing"]
    counts = []
    for steps in (1, 4):
        recipe = _recipe(names, weights)
        pm = training_manager(recipe)
        state = prepare(recipe, load_data(recipe.data), pm, torch.device("cpu"))
        with HostReads(monkeypatch) as loop:
            fit(state, pm, max_steps=steps)
        monkeypatch.undo()
        counts.append(sorted(loop.reads))
        with HostReads(monkeypatch) as hooks:
            _watch_hooks(pm, hooks)
            fit(state, pm, max_steps=state.step + 2)
        monkeypatch.undo()
        assert hooks.reads == []
    assert counts[0] == counts[1]


# --- on a GPU: CUDA itself refuses every synchronising call -------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", TECHNIQUES)
def test_on_cuda_no_training_step_synchronises(data, weights, name):
    """Steps 2 and 3 run whole (next batch, hooks, forward, backward, optimizer step) under
    ``set_sync_debug_mode("error")``; step 1 warms up (the policies' magnitude tables are
    copied to the device once per image size). The epoch's end reads the loss, so the mode
    goes back before it; evaluation's per-batch hook runs under it too."""
    recipe = _recipe([name], weights)
    pm = training_manager(recipe)
    state = prepare(recipe, load_data(recipe.data), pm, torch.device("cuda"))

    def before(hook_name, _impls, _kwargs):
        if (hook_name == "augment_batch" and state.step >= 1) or hook_name == "eval_batch":
            torch.cuda.set_sync_debug_mode("error")
        elif hook_name == "on_epoch_end":
            torch.cuda.set_sync_debug_mode("default")

    def after(_outcome, hook_name, _impls, _kwargs):
        if hook_name == "eval_batch":
            torch.cuda.set_sync_debug_mode("default")

    undo = pm.add_hookcall_monitoring(before, after)
    try:
        fit(state, pm, max_steps=3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        undo()
    assert state.step == 3
