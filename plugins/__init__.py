"""Built-in techniques, registered through the same hook as third-party plugins.

The technique modules are imported when techniques are registered, not with this package:
commands that only need the CLI's commands (``--help``) then import neither them nor Optuna.
Each module imports torch inside the functions that train, so listing the catalog does not.
"""

from __future__ import annotations

import importlib
from functools import cache

from automl.hookspecs import hookimpl

#: module: class of every built-in technique, listed (automl techniques, README) in this order.
_BUILTINS = (
    # optimisation
    "optimizer:Optimizer", "lr_schedule:LRSchedule", "batch_size:BatchSize",
    "weight_decay:WeightDecay", "l1_penalty:L1Penalty", "grad_clip:GradClip",
    "grad_accumulation:GradAccumulation", "sam:SAM", "long_training:LongTraining",
    "early_stopping:EarlyStopping", "ema:EMA",
    # augmentation
    "flip:Flip", "random_crop:RandomCrop", "augment_policy:AugmentPolicy", "augmix:AugMix",
    "random_erasing:RandomErasing", "repeated_augmentation:RepeatedAugmentation",
    "mixup:Mixup", "cutmix:CutMix",
    # resolution
    "progressive_resizing:ProgressiveResizing", "fixres:FixRes",
    "inference_resize:InferenceResize",
    # regularisation, normalisation and initialisation
    "dropout:Dropout", "stochastic_depth:StochasticDepth",
    "ghost_batch_norm:GhostBatchNorm", "sync_batch_norm:SyncBatchNorm", "norm_layer:NormLayer",
    "weight_init:WeightInit",
    "transfer_learning:TransferLearning",
    "self_supervised_pretraining:SelfSupervisedPretraining", "input_norm:InputNorm",
    # losses
    "label_smoothing:LabelSmoothing", "focal_loss:FocalLoss",
    "class_weights:ClassWeights", "binary_cross_entropy:BinaryCrossEntropy",
    "triplet_loss:TripletLoss", "distillation:Distillation",
    # semi-supervised (training images without labels: data.labelled_fraction)
    "pseudo_labels:PseudoLabels", "label_propagation:LabelPropagation",
    # robustness
    "adversarial_training:AdversarialTraining",
    # evaluation
    "test_time_augmentation:TestTimeAugmentation", "quantization:Quantization",
)


@cache
def builtin_techniques() -> tuple[type, ...]:
    """Every built-in technique class, in catalog order (their modules imported now)."""
    classes = []
    for entry in _BUILTINS:
        module, name = entry.split(":")
        classes.append(getattr(importlib.import_module(f"{__name__}.{module}"), name))
    return tuple(classes)


def __getattr__(name: str):
    if name == "BUILTIN_TECHNIQUES":  # the same tuple as an attribute, imported on first use
        return builtin_techniques()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_techniques(register):
    for cls in builtin_techniques():
        register(cls)
