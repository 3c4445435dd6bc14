"""Plugin dispatch per batch: the trainer's hooks against the same techniques applied inline.

One recipe (automl_resnet8 on digits, batches of 32: flip, random crop, mixup, label
smoothing, gradient clipping, EMA, cosine LR with warmup, weight decay, SGD) trained two ways
from one prepared state (same model, optimizer, scheduler, loss, EMA copy):

- hooks: the real ``automl.trainer.fit``; a bench-only plugin times each epoch from its last
  ``on_epoch_start`` hook to its first ``on_epoch_end`` hook (the shuffle and the batch loop);
- inline: the trainer's batch loop written out with each hook call replaced by the work the
  plugin does, calling the plugins' own functions (``random_hflip``, ``random_translate``,
  ``mixup``, ``ema_update``, ``clip_grad_norm_`` as the plugin calls it), so only the
  dispatch differs: pluggy's calls, the plugins' methods and parameter look-ups, and batches
  passed through ``TrainState`` fields. The trainer's gradient-accumulation and ``max_steps``
  branches are left out of the inline loop, so the gap is an upper bound on dispatch.

Each repeat trains ``--batches`` batches one way then the other (the order alternates), after
warm-up; reported are the median time per batch of each way and, as the figure, the median
over repeats of the hooks/inline ratio within a repeat: short, adjacent runs cancel most of
the drift of a shared machine, and the ratio's quartiles show what noise is left.

Also reported: the raw pluggy cost, the five per-batch hook calls (``augment_batch``,
``on_batch``, ``after_loss``, ``after_backward``, ``after_step``) with this recipe's plugins
registered but every body replaced by a no-op, on a dummy state, in microseconds per batch
(best of 7 runs, as ``timeit`` advises: slower runs measure the machine's other work).

Torch runs on one CPU thread unless ``--threads`` says otherwise (steady timings on a small
shared machine; more threads make a batch faster and the same dispatch a larger share).

    python -m bench.dispatch [--quick] [--repeats N] [--batches N] [--device cpu|cuda]
                             [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import timeit
import types
from collections.abc import Callable

import pluggy
import torch
from automl.plugins.ema import ema_update
from automl.plugins.flip import random_hflip
from automl.plugins.mixup import mixup
from automl.plugins.random_crop import random_translate

from automl.data import load_data
from automl.discovery import training_manager
from automl.functional import resize, soft_targets
from automl.hookspecs import PROJECT, TrainingSpecs, hookimpl
from automl.recipe import Recipe
from automl.state import TrainState
from automl.trainer import autocast, device_batches, fit, normalise_batch, prepare, resolve_device

from .common import device_name, report

TARGET = 0.03
BATCH_SIZE = 32
TECHNIQUES = {
    "optimizer": {"name": "sgd", "lr": 0.05},
    "lr_schedule": {"schedule": "cosine", "warmup": 0.1, "warmup_shape": "linear", "cycles": 3},
    "weight_decay": {"value": 5e-4, "exclude_norm_bias": True},
    "flip": {"p": 0.5},
    "random_crop": {"padding": 2, "padding_mode": "reflect"},
    "mixup": {"alpha": 0.2},
    "label_smoothing": {"smoothing": 0.1},
    "grad_clip": {"max_norm": 1.0},
    "ema": {"decay": 0.99},
}
PER_BATCH_HOOKS = ("augment_batch", "on_batch", "after_loss", "after_backward", "after_step")


class EpochClock:
    """Bench-only plugin: wall time from the last ``on_epoch_start`` to the first
    ``on_epoch_end`` hook of the latest epoch."""

    def __init__(self, sync: Callable[[], None]):
        self.sync, self.started, self.seconds = sync, 0.0, 0.0

    @hookimpl(trylast=True)
    def on_epoch_start(self, state):
        self.sync()
        self.started = time.perf_counter()

    @hookimpl(tryfirst=True)
    def on_epoch_end(self, state):
        self.sync()
        self.seconds = time.perf_counter() - self.started


def hooks_per_batch(state: TrainState, pm: pluggy.PluginManager, clock: EpochClock,
                    batches: int) -> float:
    """Seconds per batch of one epoch of the real trainer, cut at ``batches`` steps."""
    fit(state, pm, max_steps=state.step + batches)
    return clock.seconds / batches


def inline_per_batch(state: TrainState, batches: int, sync: Callable[[], None]) -> float:
    """Seconds per batch of the trainer's loop with the recipe's techniques written in."""
    p, ema = TECHNIQUES, state.extras["ema"]
    generator, model = state.generator, state.train_model
    state.model.train()
    sync()
    started = time.perf_counter()
    order = torch.randperm(len(state.data.train), generator=generator, device=state.device)
    mixed_precision = autocast(state)
    loss_sum = torch.zeros((), device=state.device)
    cuts = (order[i * state.batch_size:(i + 1) * state.batch_size] for i in range(batches))
    for images, targets in device_batches(state.data.train, cuts, state):
        images = random_translate(images, p["random_crop"]["padding"],
                                  p["random_crop"]["padding_mode"], generator)
        images = random_hflip(images, p["flip"]["p"], generator)
        images = resize(normalise_batch(state, images), state.train_image_size)
        images, targets = mixup(images, soft_targets(targets, state.num_classes),
                                p["mixup"]["alpha"], generator)
        with mixed_precision:
            logits = model(images)
            loss = state.loss_fn(logits.float(), targets)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss_sum += loss.detach()
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), p["grad_clip"]["max_norm"],
                                       foreach=True)
        state.optimizer.step()
        state.scheduler.step()
        ema_update(ema, state.model, min(p["ema"]["decay"], (1 + state.step) / (10 + state.step)))
        state.step += 1
    sync()
    seconds = time.perf_counter() - started
    if not math.isfinite((loss_sum / batches).item()):
        raise RuntimeError("the inline loop diverged")
    return seconds / batches


def noop_mirror(pm: pluggy.PluginManager) -> pluggy.PluginManager:
    """A manager with the same plugins, in the same order and with the same ordering options
    on their per-batch hooks, whose hook bodies do nothing: calling it times pluggy alone."""
    mirror = pluggy.PluginManager(PROJECT)
    mirror.add_hookspecs(TrainingSpecs)
    hooks: dict[str, dict[str, dict]] = {name: {} for name, _ in pm.list_name_plugin()}
    for hook in PER_BATCH_HOOKS:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            hooks[impl.plugin_name][hook] = impl.opts
    for name, impls in hooks.items():
        if impls:
            methods = {hook: hookimpl(**opts)(_noop()) for hook, opts in impls.items()}
            mirror.register(type(f"NoOp_{name}", (), methods)(), name=name)
    return mirror


def _noop() -> Callable:
    def hook(self, state):
        return None
    return hook


def pluggy_us_per_batch(pm: pluggy.PluginManager, repeats: int, number: int) -> float:
    """Microseconds for one batch's per-batch hook calls on a dummy state (best run)."""
    hook, state = noop_mirror(pm).hook, types.SimpleNamespace()

    def one_batch():
        hook.augment_batch(state=state)
        hook.on_batch(state=state)
        hook.after_loss(state=state)
        hook.after_backward(state=state)
        hook.after_step(state=state)

    times = timeit.repeat(one_batch, repeat=repeats, number=number)
    return min(times) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 repeats")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--batches", type=int, default=8, help="per repeat and way")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: steady timings on a shared machine)")
    args = parser.parse_args()
    repeats, batches = (30 if args.quick else args.repeats), args.batches
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    data = load_data({"dataset": "digits", "batch_size": BATCH_SIZE})
    batches = min(batches, len(data.train) // BATCH_SIZE)
    warmup = 2
    steps_per_epoch = len(data.train) // BATCH_SIZE  # so the LR schedule spans the whole run
    recipe = Recipe(model="automl_resnet8", data={"dataset": "digits", "batch_size": BATCH_SIZE},
                    epochs=math.ceil(2 * (warmup + repeats) * batches / steps_per_epoch),
                    techniques=TECHNIQUES)
    clock = EpochClock(sync)
    pm = training_manager(recipe, extra_plugins=[clock])
    state = prepare(recipe, data, pm, device)
    started = time.perf_counter()
    hooks, inline = [], []
    for r in range(warmup + repeats):
        pair = [lambda: hooks_per_batch(state, pm, clock, batches),
                lambda: inline_per_batch(state, batches, sync)]
        first, second = pair if r % 2 == 0 else pair[::-1]
        a, b = first(), second()
        if r >= warmup:
            h, i = (a, b) if r % 2 == 0 else (b, a)
            hooks.append(h)
            inline.append(i)
    hooks_s, inline_s = statistics.median(hooks), statistics.median(inline)
    ratios = [h / i for h, i in zip(hooks, inline, strict=True)]
    ratio, (q1, _, q3) = statistics.median(ratios), statistics.quantiles(ratios, n=4)
    share = ratio - 1
    raw_us = pluggy_us_per_batch(training_manager(recipe), repeats=7, number=2000)
    impls = {h: len(getattr(pm.hook, h).get_hookimpls()) for h in PER_BATCH_HOOKS}
    print(f"{'per batch':<22} {'median ms':>10} {'min ms':>8}")
    print(f"{'hooks (trainer.fit)':<22} {hooks_s * 1e3:>10.3f} {min(hooks) * 1e3:>8.3f}")
    print(f"{'inline':<22} {inline_s * 1e3:>10.3f} {min(inline) * 1e3:>8.3f}")
    print(f"hooks / inline {ratio:.4f} (median of {repeats} paired repeats; quartiles "
          f"{q1:.3f}-{q3:.3f}: the shared machine's noise); "
          f"dispatch overhead {share:+.2%} "
          f"(target < {TARGET:.0%}: {'met' if share < TARGET else 'missed'})")
    print(f"raw pluggy: {raw_us:.1f} us per batch for {sum(impls.values())} implementations "
          f"over {len(impls)} hooks ({raw_us * 1e-6 / inline_s:.3%} of an inline batch)")
    report("dispatch", {
        "benchmark": "dispatch", "device": device_name(device), "quick": args.quick,
        "batch_size": BATCH_SIZE, "batches_per_repeat": batches, "repeats": repeats,
        "techniques": sorted(TECHNIQUES),
        "hooks_ms_per_batch": round(hooks_s * 1e3, 4),
        "inline_ms_per_batch": round(inline_s * 1e3, 4),
        "hooks_ms_per_batch_min": round(min(hooks) * 1e3, 4),
        "inline_ms_per_batch_min": round(min(inline) * 1e3, 4),
        "ratio": round(ratio, 4), "ratio_quartiles": [round(q1, 4), round(q3, 4)],
        "overhead_share": round(share, 4),
        "target_overhead_share": TARGET, "target_met": share < TARGET,
        "pluggy_us_per_batch": round(raw_us, 2), "hook_implementations": impls,
        "pluggy_share_of_batch": round(raw_us * 1e-6 / inline_s, 5),
        "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
