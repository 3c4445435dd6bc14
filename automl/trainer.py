"""The training loop: plain torch, one hook call per stage, one code path for CPU and CUDA.

Data lives in memory as uint8 tensors (on the GPU when there is one); batches are cut by
index, augmented by ``augment_batch`` hooks on the device, normalised, then mixed by
``on_batch`` hooks. Image folders too large for memory arrive through DataLoader workers
(pinned, non-blocking copies) and are augmented the same way. Metrics accumulate on the
device: the host waits for the GPU once per epoch, not per batch. With several ranks
(automl.distributed) every rank prepares the whole batch, then trains on its share of it.
"""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import pluggy
import torch
import torch.nn.functional as F

from automl.class_metrics import add_predictions, new_confusion
from automl.data import DataBundle, ImageFiles, Split
from automl.distributed import World, agree_on_stop, share, sum_across, world
from automl.errors import UserError
from automl.functional import resize
from automl.objectives import model_metrics
from automl.state import TrainState

if TYPE_CHECKING:
    from automl.recipe import Recipe

__all__ = ["TrainingDiverged", "resolve_device", "prepare", "fit", "evaluate", "train",
           "EpochCallback", "split_on_device", "device_batches", "normalise_batch", "autocast",
           "class_recall", "evaluate_with_confusion", "model_kwargs", "release_memory"]

EpochCallback = Callable[[TrainState, dict[str, float]], None]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(name: str | None = None) -> torch.device:
    """``name`` if given, else CUDA when present, else CPU.

    A named device this machine cannot use (no CUDA, a GPU number past the count, no MPS, a
    typo) is a UserError here, before anything starts: otherwise every trial of a search
    fails on it, or a training run ends in a traceback.
    """
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {name!r}: not a device; use cpu, cuda, cuda:N or mps"
                        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {name}: no usable CUDA GPU on this machine "
                            "(torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: this machine has CUDA GPUs 0..{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"--device {name}: MPS (Apple GPU) is not available on this "
                            "machine; use --device cpu")
    elif device.type != "cpu":
        raise UserError(f"--device {name}: only cpu, cuda, cuda:N and mps are supported")
    return device


def prepare(recipe: Recipe, data: DataBundle, pm: pluggy.PluginManager,
            device: torch.device, *, compile: bool = False) -> TrainState:
    """Configure the run, then build model, optimizer, scheduler and loss through the hooks.

    ``compile`` trains through ``torch.compile(model)`` (same parameters; evaluation and the
    hooks keep the plain module): slower to start, faster per batch on a GPU.
    """
    torch.manual_seed(recipe.seed)
    here = world()
    batch_size = min(recipe.data["batch_size"], len(data.train.labels))
    generator = torch.Generator(device=device)
    generator.manual_seed(recipe.seed)
    state = TrainState(
        recipe=recipe, data=data, device=device, epochs=recipe.epochs, batch_size=batch_size,
        batches_per_epoch=len(data.train.labels) // batch_size, generator=generator,
        amp_dtype=torch.bfloat16 if device.type == "cuda" else None,
        train_image_size=data.image_size, input_mean=data.mean, input_std=data.std,
        rank=here.rank, world_size=here.size,
    )
    pm.hook.configure_training(state=state)
    state.batch_size = max(1, min(state.batch_size, len(data.train.labels)))
    state.batches_per_epoch = len(data.train.labels) // state.batch_size
    state.accumulation_steps = max(1, min(state.accumulation_steps, state.batches_per_epoch))
    state.model = pm.hook.build_model(state=state, kwargs=model_kwargs(state, pm))
    pm.hook.modify_model(state=state)
    state.model.to(device=device, memory_format=torch.channels_last)
    pm.hook.configure_param_groups(state=state)
    state.optimizer = pm.hook.build_optimizer(state=state)
    state.scheduler = pm.hook.build_scheduler(state=state)
    pm.hook.build_loss(state=state)
    state.train_model = _data_parallel(state, here)
    if compile:
        state.train_model = torch.compile(state.train_model)
    _capture_features(state)
    pm.hook.on_train_start(state=state)
    return state


def _data_parallel(state: TrainState, here: World) -> torch.nn.Module:
    """The model the step calls: the model itself, or with several ranks, the model in
    DistributedDataParallel (gradients averaged across ranks during backward).

    Every rank draws the global batch's randomness from the shared ``state.generator``; what
    a rank draws after taking its share (dropout, attacks, unlabelled batches) comes from its
    own generator and torch seed, so ranks do not repeat each other's draws.
    """
    if here.size == 1:
        return state.model
    from torch.nn.parallel import DistributedDataParallel

    ids = [state.device.index] if state.device.type == "cuda" else None
    ddp = DistributedDataParallel(state.model, device_ids=ids)
    own = torch.Generator(device=state.device)
    own.manual_seed(state.recipe.seed + 1_000_003 * here.rank)
    torch.manual_seed(state.recipe.seed + 1_000_003 * here.rank)
    state.extras["_ranks"] = _Ranks(here, ddp, state.generator, own)
    return ddp


class _Ranks:
    """What a data-parallel training keeps: this rank, the DDP module, and the two
    generators (the global batch's, shared by all ranks; this rank's own)."""

    def __init__(self, here: World, ddp, shared: torch.Generator, own: torch.Generator):
        self.here, self.ddp, self.shared, self.own = here, ddp, shared, own

    def take_share(self, state: TrainState) -> float:
        """Keep this rank's share of the batch; the weight of its loss, so that DDP's
        average of the ranks' gradients is the gradient of the global batch's mean loss."""
        n = len(state.images)
        state.images, state.targets = share(state.images, self.here), share(state.targets,
                                                                            self.here)
        state.generator = self.own
        return len(state.images) * self.here.size / n

    def sync(self, last: bool):
        """All-reduce gradients only on the optimizer step's last micro-batch."""
        return nullcontext() if last else self.ddp.no_sync()


def _capture_features(state: TrainState) -> None:
    """Keep the classifier's input of each training forward, for ``state.features``.

    A forward pre-hook on timm's ``get_classifier()`` writes it to a private slot; the step
    copies it to ``state.features`` right after its own forward, so forwards a technique makes
    itself (a teacher, an attack, unlabelled data) never replace the batch's features.
    """
    get_classifier = getattr(state.model, "get_classifier", None)
    classifier = get_classifier() if get_classifier is not None else None
    if not isinstance(classifier, torch.nn.Module):
        return

    def keep(module, args):
        if module.training:
            state.extras["_features"] = args[0].flatten(1)

    classifier.register_forward_pre_hook(keep)


def model_kwargs(state: TrainState, pm: pluggy.PluginManager) -> dict:
    """The ``model_kwargs`` hooks' dicts merged in call order: what ``build_model`` gets (and
    what a saved model records, so it can be built again)."""
    kwargs: dict = {}
    for extra in reversed(pm.hook.model_kwargs(state=state)):  # results arrive last-first
        kwargs.update(extra or {})
    return kwargs


def fit(state: TrainState, pm: pluggy.PluginManager, *, on_epoch: EpochCallback | None = None,
        max_steps: int | None = None, validate: bool = True) -> None:
    """Train for ``state.epochs`` epochs, validating after each one.

    ``on_epoch(state, metrics)`` may raise (a pruner stopping the trial). ``max_steps`` stops
    early after that many optimizer steps (used by tests). With gradient accumulation, each
    optimizer step sums the gradients of ``accumulation_steps`` micro-batches.
    ``validate=False`` evaluates no split at all (a stage, which must never see val or test).
    """
    hook, train = pm.hook, state.data.train
    micro = state.accumulation_steps
    ranks: _Ranks | None = state.extras.get("_ranks")
    for epoch in range(state.epochs):
        state.epoch = epoch
        state.model.train()
        hook.on_epoch_start(state=state)
        mean, std = _norm_tensors(state)
        order = hook.epoch_order(state=state)
        loss_sum = torch.zeros((), device=state.device)
        batches = 0
        step_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        batches_of_epoch = _batches(order, state.batch_size, state.steps_per_epoch * micro)
        for i, (images, targets) in enumerate(device_batches(train, batches_of_epoch, state)):
            if ranks is not None:
                state.generator = ranks.shared  # the global batch's randomness
            state.images, state.targets = images, targets
            hook.augment_batch(state=state)
            state.images = resize(_normalise(state.images, mean, std), state.train_image_size)
            hook.on_batch(state=state)
            weight = 1.0 if ranks is None else ranks.take_share(state)
            if i % micro == 0:
                state.optimizer.zero_grad(set_to_none=True)
                step_batches = []
            step_batches.append((state.images, state.targets, weight))
            with nullcontext() if ranks is None else ranks.sync((i + 1) % micro == 0):
                loss = _forward_loss(state, hook)
                _backward(loss, weight, micro)
            loss_sum += loss.detach() if ranks is None else loss.detach() * (
                weight / state.world_size)
            batches += 1
            if (i + 1) % micro:
                continue
            state.closure = _step_closure(state, hook, step_batches, ranks)
            hook.after_backward(state=state)
            state.optimizer.step()
            if state.scheduler is not None:
                state.scheduler.step()
            hook.after_step(state=state)
            state.step += 1
            state.logits = state.features = state.closure = None
            step_batches = []
            if max_steps is not None and state.step >= max_steps:
                break
        state.logits = state.features = state.closure = None
        if ranks is not None:
            state.generator = ranks.shared
        hook.on_epoch_end(state=state)
        if ranks is not None:
            sum_across(loss_sum, ranks.here)
        train_loss = (loss_sum / max(batches, 1)).item()
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss is {train_loss} in epoch {state.epoch + 1}")
        metrics = {"train/loss": train_loss, **model_metrics(state.model)}  # model/params
        if validate:
            metrics.update(evaluate(state, pm, state.data.val, "val"))
        state.history.append({"epoch": state.epoch + 1, **metrics})
        if validate:
            hook.on_validation(state=state, metrics=dict(metrics))
        _after_epoch(state, on_epoch, metrics, ranks)
        if state.stop_training or (max_steps is not None and state.step >= max_steps):
            break
    hook.on_train_end(state=state)


def _after_epoch(state: TrainState, on_epoch: EpochCallback | None, metrics: dict[str, float],
                 ranks: _Ranks | None) -> None:
    """Call ``on_epoch``; with several ranks (only rank 0 is given one), every rank learns
    whether it raised, so all stop together and none waits in a collective alone."""
    if ranks is None:
        if on_epoch is not None:
            on_epoch(state, metrics)
        return
    error = None
    try:
        if on_epoch is not None:
            on_epoch(state, metrics)
    except BaseException as exc:  # pruned, interrupted: re-raised after the others know
        error = exc
    agree_on_stop(error, state.device, ranks.here)


def _backward(loss: torch.Tensor, weight: float, micro: int) -> None:
    """Backward of one micro-batch's share of the step's loss."""
    scale = weight / micro
    (loss * scale if scale != 1 else loss).backward()


def _forward_loss(state: TrainState, hook) -> torch.Tensor:
    """Forward ``state.images``, then the composed loss: ``loss_fn`` and every ``after_loss``
    term. Sets ``state.logits``, ``state.features`` and ``state.loss``; returns the loss."""
    state.extras.pop("_features", None)
    with autocast(state):
        logits = state.train_model(state.images)
    state.logits = logits.float()
    state.features = state.extras.pop("_features", None)
    state.loss = state.loss_fn(state.logits, state.targets)
    hook.after_loss(state=state)
    return state.loss


def _step_closure(state: TrainState, hook,
                  step_batches: list[tuple[torch.Tensor, torch.Tensor, float]],
                  ranks: _Ranks | None = None) -> Callable[[], torch.Tensor]:
    """``state.closure``: fresh gradients of this optimizer step's micro-batches (the batches
    as the model saw them, after ``on_batch``; this rank's shares), each through
    :func:`_forward_loss`, averaged across ranks like the step's own."""
    micro = len(step_batches)

    def closure() -> torch.Tensor:
        state.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=state.device)
        for k, (images, targets, weight) in enumerate(step_batches):
            state.images, state.targets = images, targets
            with nullcontext() if ranks is None else ranks.sync(k == micro - 1):
                loss = _forward_loss(state, hook)
                _backward(loss, weight, micro)
            total += loss.detach()
        return total / micro

    return closure


def evaluate(state: TrainState, pm: pluggy.PluginManager, split: Split, prefix: str,
             max_batches: int | None = None) -> dict[str, float]:
    """Top-1 accuracy, loss and balanced accuracy (mean per-class recall) of the
    ``eval_model`` hook's model on one split."""
    return evaluate_with_confusion(state, pm, split, prefix, max_batches)[0]


def evaluate_with_confusion(state: TrainState, pm: pluggy.PluginManager, split: Split,
                            prefix: str, max_batches: int | None = None, *,
                            model: torch.nn.Module | None = None
                            ) -> tuple[dict[str, float], torch.Tensor]:
    """:func:`evaluate`'s metrics and the confusion matrix they are counted from (flat, on
    the device; :func:`automl.class_metrics.class_report` reads it). ``model``: evaluate this
    one instead of asking the ``eval_model`` hook (the model ``automl train`` saves)."""
    with _evaluation(state, pm, split, prefix, model) as metrics:
        confusion, loss_sum = _confusion(state, pm, split, max_batches)
        matrix = confusion.view(state.num_classes, state.num_classes)
        hits, counts = matrix.diagonal(), matrix.sum(1)
        present = counts > 0
        metrics.update({f"{prefix}/acc1": (hits.sum() / counts.sum()).item(),
                        f"{prefix}/loss": (loss_sum / counts.sum()).item(),
                        f"{prefix}/balanced_acc": (hits[present] / counts[present]).mean().item()})
        for extra in pm.hook.evaluate(state=state, metrics=dict(metrics), split=split,
                                      prefix=prefix):
            metrics.update({f"{prefix}/{k}": v for k, v in (extra or {}).items()})
    return dict(metrics), confusion


@contextmanager
def _evaluation(state: TrainState, pm: pluggy.PluginManager, split: Split, prefix: str,
                model: torch.nn.Module | None = None) -> Iterator[dict[str, float]]:
    """One evaluation of ``split``: ``on_eval_start``, the evaluated model resolved once into
    ``state.eval_model``, then ``on_eval_end`` with the metrics the body filled in."""
    pm.hook.on_eval_start(state=state, split=split, prefix=prefix)
    state.eval_model = model if model is not None else pm.hook.eval_model(state=state)
    metrics: dict[str, float] = {}
    try:
        yield metrics
        pm.hook.on_eval_end(state=state, split=split, prefix=prefix, metrics=dict(metrics))
    finally:
        state.eval_model = None


def class_recall(state: TrainState, pm: pluggy.PluginManager, split: Split,
                 prefix: str = "val") -> torch.Tensor:
    """Recall of every class on ``split`` (NaN for a class the split lacks)."""
    with _evaluation(state, pm, split, prefix):
        confusion = _confusion(state, pm, split)[0]
    matrix = confusion.view(state.num_classes, state.num_classes)
    return (matrix.diagonal() / matrix.sum(1)).cpu()


@torch.no_grad()
def _confusion(state: TrainState, pm: pluggy.PluginManager, split: Split,
               max_batches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat confusion matrix (true × predicted counts) and the summed loss of
    ``state.eval_model``, on device."""
    model = state.eval_model
    was_training = model.training
    model.eval()
    mean, std = _norm_tensors(state)
    confusion = new_confusion(state.num_classes, state.device)
    loss_sum = torch.zeros((), device=state.device)
    here = world()  # several ranks: each evaluates its share, the counts are summed
    chunks = share(torch.arange(len(split.labels), device=state.device), here).split(512)
    with autocast(state):
        for images, labels in device_batches(split, chunks[:max_batches], state):
            state.images = _normalise(images, mean, std)
            pm.hook.eval_batch(state=state)
            logits = model(state.images).float()
            add_predictions(confusion, labels, logits.argmax(1), state.num_classes)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
    model.train(was_training)
    return sum_across(confusion, here), sum_across(loss_sum, here)


def train(recipe: Recipe, data: DataBundle, pm: pluggy.PluginManager, *,
          device: torch.device | None = None, on_epoch: EpochCallback | None = None,
          max_steps: int | None = None, compile: bool = False) -> TrainState:
    """Prepare and fit in one call; returns the final state (model, history)."""
    state = prepare(recipe, data, pm, device or resolve_device(), compile=compile)
    fit(state, pm, on_epoch=on_epoch, max_steps=max_steps)
    return state


def _batches(order: torch.Tensor, batch_size: int, limit: int) -> Iterator[torch.Tensor]:
    """At most ``limit`` full batches of ``order``; the ragged end is dropped (batch norm)."""
    count = min(len(order) // batch_size, limit)
    for start in range(0, count * batch_size, batch_size):
        yield order[start:start + batch_size]


def device_batches(split: Split, batches: Iterable[torch.Tensor], state: TrainState
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 images and labels of each batch of indices, on the training device.

    In-memory splits are indexed on the device; :class:`~automl.data.ImageFiles` splits are
    decoded by the folder's DataLoader workers, ahead of the training step.
    """
    if not isinstance(split.images, ImageFiles):
        data = split_on_device(split, state)
        for idx in batches:
            yield data.images[idx], data.labels[idx]
        return
    cuda = state.device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        split.images.dataset(split.labels), batch_sampler=[b.tolist() for b in batches],
        num_workers=split.images.workers, pin_memory=cuda)
    batches_of = iter(loader)
    while True:
        try:
            images, labels = next(batches_of)
        except StopIteration:
            return
        except (ConnectionError, EOFError) as exc:  # a worker died mid-transfer
            raise _dead_worker(batches_of) or exc from exc
        yield (images.to(state.device, non_blocking=cuda),
               labels.to(state.device, non_blocking=cuda))


def _dead_worker(batches_of) -> RuntimeError | None:
    """The error torch raises for a killed DataLoader worker, when a worker's death reached
    this process as a broken connection instead (it depends on timing): names its pid."""
    for worker in getattr(batches_of, "_workers", []):  # torch keeps its processes private
        if not worker.is_alive() and worker.exitcode:  # is_alive() reaps a dead worker
            how = (f"killed by signal {-worker.exitcode}" if worker.exitcode < 0
                   else f"exit code {worker.exitcode}")
            return RuntimeError(f"DataLoader worker (pid {worker.pid}) exited unexpectedly "
                                f"({how})")
    return None


def release_memory(device: torch.device, model: weakref.ref | None = None) -> None:
    """Free what a finished (or pruned, or failed) trial left, so the next trial (or another
    process on the GPU) starts from the baseline: cached CUDA blocks go back to the driver.

    ``model`` is a weak reference to the trial's model. Reference counting frees it as soon as
    the trial ends unless a reference cycle holds it; only then does this run a full garbage
    collection, which costs a few hundred milliseconds once torch is loaded.
    """
    if model is None or model() is not None:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def split_on_device(split: Split, state: TrainState) -> Split:
    """The split on the training device, copied there once per training (CPU, and folders
    read from disk: no copy)."""
    if isinstance(split.images, ImageFiles) or split.images.device == state.device:
        return split
    cache = state.extras.setdefault("_on_device", {})
    if id(split) not in cache:
        cache[id(split)] = Split(split.images.to(state.device), split.labels.to(state.device))
    return cache[id(split)]


def normalise_batch(state: TrainState, images: torch.Tensor) -> torch.Tensor:
    """A uint8 batch normalised exactly as the trainer feeds the model (before any resize)."""
    return _normalise(images, *_norm_tensors(state))


def _norm_tensors(state: TrainState) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_mean`` / ``input_std`` as 0–255 tensors, rebuilt only when a hook changes them."""
    cached = state.extras.get("_norm")
    if cached is None or cached[0] is not state.input_mean or cached[1] is not state.input_std:
        mean, std = (_as_image_stats(v, state) * 255 for v in (state.input_mean, state.input_std))
        cached = state.extras["_norm"] = (state.input_mean, state.input_std, mean, std)
    return cached[2], cached[3]


def _as_image_stats(values, state: TrainState) -> torch.Tensor:
    """Per-channel values (C) or a per-pixel map (C×H×W) as a broadcastable 4-d tensor."""
    tensor = torch.as_tensor(values, dtype=torch.float32, device=state.device)
    return tensor.view(1, -1, 1, 1) if tensor.dim() == 1 else tensor.unsqueeze(0)


def _normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 to normalised float, channels_last (faster convolutions on CPU and GPU alike)."""
    return ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)


def autocast(state: TrainState):
    """bf16 autocast on CUDA, a no-op on CPU (fp32)."""
    if state.amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=state.device.type, dtype=state.amp_dtype)
