"""The training loop: plain torch, one hook call per stage, one code path for CPU and CUDA.

Data lives in memory as uint8 tensors (on the GPU when there is one); batches are cut by
index, augmented by ``augment_batch`` hooks on the device, normalised, then mixed by
``on_batch`` hooks. Metrics accumulate on the device: no host sync per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import TYPE_CHECKING

import pluggy
import torch
import torch.nn.functional as F

from automl.data import DataBundle, Split
from automl.state import TrainState

if TYPE_CHECKING:
    from automl.recipe import Recipe

__all__ = ["TrainingDiverged", "resolve_device", "prepare", "fit", "evaluate", "train",
           "EpochCallback"]

EpochCallback = Callable[[int, dict[str, float]], None]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(name: str | None = None) -> torch.device:
    """``name`` if given, else CUDA when present, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare(recipe: Recipe, data: DataBundle, pm: pluggy.PluginManager,
            device: torch.device) -> TrainState:
    """Build model, optimizer, scheduler and loss through the hooks."""
    torch.manual_seed(recipe.seed)
    batch_size = min(recipe.data["batch_size"], len(data.train.labels))
    generator = torch.Generator(device=device)
    generator.manual_seed(recipe.seed)
    state = TrainState(
        recipe=recipe, data=data, device=device, epochs=recipe.epochs, batch_size=batch_size,
        steps_per_epoch=len(data.train.labels) // batch_size, generator=generator,
        amp_dtype=torch.bfloat16 if device.type == "cuda" else None,
    )
    kwargs: dict = {}
    for extra in reversed(pm.hook.model_kwargs(state=state)):  # results arrive last-first
        kwargs.update(extra or {})
    state.model = pm.hook.build_model(state=state, kwargs=kwargs)
    pm.hook.modify_model(state=state)
    state.model.to(device=device, memory_format=torch.channels_last)
    pm.hook.configure_param_groups(state=state)
    state.optimizer = pm.hook.build_optimizer(state=state)
    state.scheduler = pm.hook.build_scheduler(state=state)
    pm.hook.build_loss(state=state)
    pm.hook.on_train_start(state=state)
    return state


def fit(state: TrainState, pm: pluggy.PluginManager, *, on_epoch: EpochCallback | None = None,
        max_steps: int | None = None) -> None:
    """Train for ``state.epochs`` epochs, validating after each one.

    ``on_epoch(epoch, metrics)`` may raise (a pruner stopping the trial). ``max_steps`` stops
    early after that many optimizer steps (used by tests).
    """
    hook, train = pm.hook, _on_device(state.data.train, state)
    mean, std = _norm_tensors(state)
    autocast = _autocast(state)
    for epoch in range(state.epochs):
        state.epoch = epoch
        state.model.train()
        hook.on_epoch_start(state=state)
        loss_sum = torch.zeros((), device=state.device)
        steps = 0
        for idx in _batches(len(train.labels), state.batch_size, state.generator, state.device):
            state.images, state.targets = train.images[idx], train.labels[idx]
            hook.augment_batch(state=state)
            state.images = _normalise(state.images, mean, std)
            hook.on_batch(state=state)
            with autocast:
                logits = state.model(state.images)
                state.loss = state.loss_fn(logits.float(), state.targets)
            hook.after_loss(state=state)
            state.optimizer.zero_grad(set_to_none=True)
            state.loss.backward()
            hook.after_backward(state=state)
            state.optimizer.step()
            if state.scheduler is not None:
                state.scheduler.step()
            hook.after_step(state=state)
            loss_sum += state.loss.detach()
            state.step += 1
            steps += 1
            if max_steps is not None and state.step >= max_steps:
                break
        hook.on_epoch_end(state=state)
        train_loss = (loss_sum / max(steps, 1)).item()
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss is {train_loss} in epoch {state.epoch + 1}")
        metrics = {"train/loss": train_loss, **evaluate(state, pm, state.data.val, "val")}
        state.history.append({"epoch": state.epoch + 1, **metrics})
        if on_epoch is not None:
            on_epoch(state.epoch + 1, metrics)
        if max_steps is not None and state.step >= max_steps:
            break


@torch.no_grad()
def evaluate(state: TrainState, pm: pluggy.PluginManager, split: Split, prefix: str,
             max_batches: int | None = None) -> dict[str, float]:
    """Top-1 accuracy and loss of the ``eval_model`` hook's model on one split."""
    model = pm.hook.eval_model(state=state)
    was_training = model.training
    model.eval()
    data = _on_device(split, state)
    mean, std = _norm_tensors(state)
    correct = torch.zeros((), device=state.device)
    loss_sum = torch.zeros((), device=state.device)
    seen = 0
    with _autocast(state):
        for i, start in enumerate(range(0, len(data.labels), 512)):
            if max_batches is not None and i >= max_batches:
                break
            labels = data.labels[start:start + 512]
            state.images = _normalise(data.images[start:start + 512], mean, std)
            pm.hook.eval_batch(state=state)
            logits = model(state.images).float()
            correct += (logits.argmax(1) == labels).sum()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            seen += len(labels)
    model.train(was_training)
    metrics = {f"{prefix}/acc1": (correct / seen).item(),
               f"{prefix}/loss": (loss_sum / seen).item()}
    for extra in pm.hook.evaluate(state=state, metrics=dict(metrics)):
        metrics.update({f"{prefix}/{k}": v for k, v in (extra or {}).items()})
    return metrics


def train(recipe: Recipe, data: DataBundle, pm: pluggy.PluginManager, *,
          device: torch.device | None = None, on_epoch: EpochCallback | None = None,
          max_steps: int | None = None) -> TrainState:
    """Prepare and fit in one call; returns the final state (model, history)."""
    state = prepare(recipe, data, pm, device or resolve_device())
    fit(state, pm, on_epoch=on_epoch, max_steps=max_steps)
    return state


def _batches(n: int, batch_size: int, generator: torch.Generator,
             device: torch.device) -> Iterator[torch.Tensor]:
    """Shuffled index batches, dropping the ragged last one (batch norm needs > 1 sample)."""
    order = torch.randperm(n, generator=generator, device=device)
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start:start + batch_size]


def _on_device(split: Split, state: TrainState) -> Split:
    """The split on the training device, copied there once per training (CPU: no copy)."""
    if split.images.device == state.device:
        return split
    cache = state.extras.setdefault("_on_device", {})
    if id(split) not in cache:
        cache[id(split)] = Split(split.images.to(state.device), split.labels.to(state.device))
    return cache[id(split)]


def _norm_tensors(state: TrainState) -> tuple[torch.Tensor, torch.Tensor]:
    cached = state.extras.get("_norm")
    if cached is None:
        shape = (1, -1, 1, 1)
        mean = torch.tensor(state.data.mean, device=state.device).view(shape) * 255
        std = torch.tensor(state.data.std, device=state.device).view(shape) * 255
        cached = state.extras["_norm"] = (mean, std)
    return cached


def _normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 to normalised float, channels_last (faster convolutions on CPU and GPU alike)."""
    return ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)


def _autocast(state: TrainState):
    if state.amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=state.device.type, dtype=state.amp_dtype)
