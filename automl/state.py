"""TrainState: what the trainer builds and what hooks read and change during one training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pathlib import Path

    from automl.data import DataBundle
    from automl.recipe import Recipe


@dataclass
class TrainState:
    """One training run. Hooks change fields in place; ``extras`` holds plugin-private data."""

    recipe: Recipe
    data: DataBundle
    device: torch.device
    epochs: int
    batch_size: int
    batches_per_epoch: int
    generator: torch.Generator  # on ``device``: per-sample randomness for augmentation
    amp_dtype: torch.dtype | None = None  # bf16 on CUDA, None (fp32) on CPU
    model: torch.nn.Module | None = None
    train_model: Any = None  # what the step calls: ``model``, in DDP and/or torch.compile
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    loss_fn: Any = None
    epoch: int = 0
    step: int = 0
    images: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # float32 outputs of the step's forward (None outside)
    features: torch.Tensor | None = None  # the classifier's input of that forward (N×D)
    closure: Any = None  # recomputes the step's gradients (see hookspecs.after_backward)
    eval_model: Any = None  # the model under evaluation, between on_eval_start and on_eval_end
    accumulation_steps: int = 1  # micro-batches summed per optimizer step
    lr_scale: float = 1.0  # multiplies the optimizer's LR (the batch-size scaling rule)
    train_image_size: int = 0  # resolution batches are trained at (0 = stored size)
    eval_image_size: int | None = None  # set by inference-resize techniques
    input_mean: tuple[float, ...] = ()  # normalisation in [0, 1] units (default: data's own)
    input_std: tuple[float, ...] = ()
    loss_options: dict[str, Any] = field(default_factory=dict)  # see automl.losses
    stop_training: bool = False  # set by on_validation hooks to end after this epoch
    stop_reason: str = ""  # and why, shown on the trial's line ("early stopping: ...")
    history: list[dict[str, float]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    stage_dir: Path | None = None  # where stages are cached (automl.stages; None: default)
    rank: int = 0  # this process's rank in a data-parallel training (automl.distributed)
    world_size: int = 1  # ranks sharing each batch; ``batch_size`` is the global batch

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def in_chans(self) -> int:
        return self.data.in_chans

    @property
    def image_size(self) -> int:
        return self.data.image_size

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (batches divided by gradient-accumulation steps)."""
        return max(self.batches_per_epoch // self.accumulation_steps, 1)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def params_of(self, name: str) -> dict[str, Any]:
        """The recipe's parameters of technique ``name`` ({} when it is off)."""
        return self.recipe.techniques.get(name, {})
