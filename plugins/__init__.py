"""Built-in techniques, registered through the same hook as third-party plugins."""

from __future__ import annotations

from automl.hookspecs import hookimpl

from .augment_policy import AugmentPolicy
from .cutmix import CutMix
from .dropout import Dropout
from .ema import EMA
from .flip import Flip
from .grad_clip import GradClip
from .inference_resize import InferenceResize
from .label_smoothing import LabelSmoothing
from .lr_schedule import LRSchedule
from .mixup import Mixup
from .optimizer import Optimizer
from .random_crop import RandomCrop
from .stochastic_depth import StochasticDepth
from .weight_decay import WeightDecay

BUILTIN_TECHNIQUES = (
    Optimizer, WeightDecay, LRSchedule, Flip, RandomCrop, AugmentPolicy, Dropout,
    StochasticDepth, LabelSmoothing, Mixup, CutMix, EMA, GradClip, InferenceResize,
)


@hookimpl
def register_techniques(register):
    for cls in BUILTIN_TECHNIQUES:
        register(cls)
