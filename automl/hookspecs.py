"""The plugin API in one page: every hook a technique or extension can implement.

Two managers use these specs. The process-wide *discovery* manager collects technique classes,
datasets and CLI commands. A fresh *training* manager per trial holds one configured instance
of each enabled technique; its hooks receive the trial's :class:`~automl.state.TrainState`.

A hook implementation may accept fewer arguments than its spec (pluggy passes only what it
asks for), so specs can grow without breaking plugins. Misspelled hook names are rejected when
a plugin is registered (``check_pending``), naming the plugin and the hook.

Within one hook the techniques are called in their own order, never the space file's: pluggy's
tiers (wrappers around the rest, then ``tryfirst``, plain, ``trylast``) and by technique name
within a tier (:func:`automl.discovery.training_manager`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    import torch

    from automl.state import TrainState

PROJECT = "automl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class DiscoverySpecs:
    """Hooks of the process-wide manager: what exists, not what one trial does."""

    @hookspec
    def register_techniques(self, register: Any) -> None:
        """Call ``register(TechniqueClass)`` for each technique this plugin provides.

        The core validates every class it receives (name, space, hooks) before use.
        """

    @hookspec
    def register_datasets(self, register: Any) -> None:
        """Call ``register(name, load, *, reads=None, requires=(), locate=None)`` for each
        dataset this plugin provides; a space then names it in ``data: {dataset: NAME}``.

        ``load(settings)`` returns ``(train, test, class_names)``: two
        :class:`~automl.data.Split` (uint8 images N×C×H×W, square, int64 labels); the core
        cuts validation from ``train``. ``settings`` is the ``data:`` mapping with every
        default filled in. Import torch and readers inside ``load``, so discovering datasets
        stays cheap. ``reads`` names the ``data:`` keys the loader reads (``data_dir``, or keys
        of its own, which a space may then set); the in-process cache loads again only when
        one of them changes (``None``: any key). ``requires`` names those a space must set,
        and ``locate(settings)`` finds (or downloads) the files without reading them: the
        parent of ``--jobs`` workers calls it instead of loading. The built-in datasets are
        registered through this hook too.
        """

    @hookspec
    def register_commands(self, cli: click.Group) -> None:
        """Add click commands to the ``automl`` command group."""


class TrainingSpecs:
    """Hooks of a trial's manager, listed in the order the trainer calls them: setup, then per
    epoch the training hooks, then evaluation of the validation split (``on_eval_start``,
    ``eval_model`` once, ``eval_batch`` per batch, ``evaluate``, ``on_eval_end``), then
    ``on_validation``; ``on_train_end`` after the last epoch. The evaluation hooks run again
    for the test split after training (``automl train``)."""

    @hookspec
    def configure_training(self, state: TrainState) -> None:
        """Change the run's settings before anything is built.

        Fields meant for this hook: ``epochs`` (longer training), ``batch_size`` (the batch
        size technique), ``accumulation_steps`` (gradient accumulation),
        ``train_image_size`` (training resolution) and ``input_mean`` / ``input_std``
        (input normalisation, in [0, 1] units).
        """

    @hookspec
    def model_kwargs(self, state: TrainState) -> dict[str, Any]:
        """Return keyword arguments for the model factory (merged in call order).

        Example: ``{"drop_rate": 0.2}`` from dropout, ``{"drop_path_rate": 0.1}`` from
        stochastic depth.
        """

    @hookspec(firstresult=True)
    def build_model(self, state: TrainState, kwargs: dict[str, Any]) -> torch.nn.Module:
        """Create the model; the first non-None result wins (default: ``timm.create_model``)."""

    @hookspec
    def modify_model(self, state: TrainState) -> None:
        """Change ``state.model`` in place or replace it (surgery, freezing, init)."""

    @hookspec
    def configure_param_groups(self, state: TrainState) -> None:
        """Rewrite ``state.param_groups`` (a list of optimizer param-group dicts).

        Example: weight decay splits norm and bias parameters into a group without decay.
        The batch-size technique sets ``state.lr_scale`` here, which the optimizer's LR is
        multiplied by (techniques that build optimizers should honour it).
        """

    @hookspec(firstresult=True)
    def build_optimizer(self, state: TrainState) -> torch.optim.Optimizer:
        """Create the optimizer from ``state.param_groups``; the first non-None result wins."""

    @hookspec(firstresult=True)
    def build_scheduler(self, state: TrainState) -> Any:
        """Return an LR scheduler stepped once per optimizer step (or None for constant LR)."""

    @hookspec
    def build_loss(self, state: TrainState) -> None:
        """Set an option in ``state.loss_options`` (``label_smoothing``, ``class_weights``,
        ``focal_gamma``, ``binary``); the core (``trylast``) then builds ``state.loss_fn`` from
        all of them (:mod:`automl.losses`), so loss techniques combine. A technique that needs
        another loss altogether may set ``state.loss_fn(logits, targets)`` itself; targets are
        class indices or soft labels.
        """

    @hookspec
    def on_train_start(self, state: TrainState) -> None:
        """Everything is built (``state.train_model`` too); last chance to set up helpers (an
        EMA copy, a teacher)."""

    @hookspec
    def on_epoch_start(self, state: TrainState) -> None:
        """A training epoch begins (``state.epoch`` counts from 0)."""

    @hookspec(firstresult=True)
    def epoch_order(self, state: TrainState) -> torch.Tensor:
        """Return this epoch's order of training-sample indices (on ``state.device``).

        The first non-None result wins (default: a random permutation from
        ``state.generator``). Consecutive runs of ``batch_size`` indices form the batches; an
        order may repeat indices (repeated augmentation) or leave some out.
        """

    @hookspec
    def augment_batch(self, state: TrainState) -> None:
        """Augment ``state.images`` (uint8, N×C×H×W, on the device) per sample.

        Runs before normalisation: geometric and photometric policies belong here.
        """

    @hookspec
    def on_batch(self, state: TrainState) -> None:
        """Change the normalised float batch and its targets (mixup, cutmix).

        ``state.targets`` may be replaced by soft labels of shape N×num_classes. With
        several data-parallel ranks this (and ``augment_batch``) sees the whole global
        batch; later hooks see this rank's share of it.
        """

    @hookspec
    def after_loss(self, state: TrainState) -> None:
        """Inspect or replace ``state.loss`` before backward (extra loss terms).

        ``state.logits`` (float32) and ``state.features`` (the classifier's input, N×D, for
        models with ``get_classifier``) are the batch's outputs: read them instead of
        registering forward hooks. ``state.closure()`` calls this hook again for every
        micro-batch it recomputes, so a term added here is part of every pass.
        """

    @hookspec
    def after_backward(self, state: TrainState) -> None:
        """Gradients exist; change them before the step (gradient clipping).

        With gradient accumulation this runs once per optimizer step, when the gradients of
        all ``accumulation_steps`` micro-batches have been summed. ``state.closure()`` zeroes
        the gradients and recomputes them for every micro-batch of this step (forward, the
        composed loss with every ``after_loss`` term, backward, same autocast): two-pass
        methods such as SAM call it here (``tryfirst``, so clipping sees the final gradient).
        """

    @hookspec
    def after_step(self, state: TrainState) -> None:
        """The optimizer stepped (weight averaging such as EMA)."""

    @hookspec
    def on_epoch_end(self, state: TrainState) -> None:
        """A training epoch ended, before validation."""

    @hookspec
    def on_eval_start(self, state: TrainState, split: Any, prefix: str) -> None:
        """An evaluation of one split (a :class:`~automl.data.Split`) begins; ``prefix`` is
        ``"val"`` or ``"test"``. Prepare per-evaluation helpers here, once, not per batch."""

    @hookspec(firstresult=True)
    def eval_model(self, state: TrainState) -> torch.nn.Module:
        """Return the model to evaluate; the first non-None result wins (EMA weights).

        Called once per evaluation; the result is ``state.eval_model`` until it ends (hooks
        that evaluate something of their own read that instead of calling this again).
        """

    @hookspec
    def eval_batch(self, state: TrainState) -> None:
        """Change the normalised evaluation batch ``state.images`` (inference resize)."""

    @hookspec
    def evaluate(self, state: TrainState, metrics: dict[str, float], split: Any,
                 prefix: str) -> dict[str, float]:
        """Return extra metrics (names without the prefix) to merge into the evaluation result
        of ``split``; ``state.eval_model`` is the evaluated model. A technique that declares
        them in ``metrics`` makes them usable as the study's metric (``val/<name>``)."""

    @hookspec
    def on_eval_end(self, state: TrainState, split: Any, prefix: str,
                    metrics: dict[str, float]) -> None:
        """The evaluation of ``split`` ended with ``metrics`` (prefixed); release what
        ``on_eval_start`` prepared."""

    @hookspec
    def on_validation(self, state: TrainState, metrics: dict[str, float]) -> None:
        """The epoch's validation ``metrics`` are known (``val/acc1``, ``val/loss``, ...).

        Set ``state.stop_training = True`` to end training after this epoch (early stopping),
        and ``state.stop_reason`` to say why (the search shows it on the trial's line).
        """

    @hookspec
    def on_train_end(self, state: TrainState) -> None:
        """Training ended (the last epoch, early stopping or a step limit), after its final
        validation; not called when training fails or is pruned."""
