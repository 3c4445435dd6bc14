"""Built-in techniques, registered through the same hook as third-party plugins."""

from __future__ import annotations

from automl.hookspecs import hookimpl

from .augment_policy import AugmentPolicy
from .augmix import AugMix
from .batch_size import BatchSize
from .binary_cross_entropy import BinaryCrossEntropy
from .class_weights import ClassWeights
from .cutmix import CutMix
from .dropout import Dropout
from .early_stopping import EarlyStopping
from .ema import EMA
from .fixres import FixRes
from .flip import Flip
from .focal_loss import FocalLoss
from .ghost_batch_norm import GhostBatchNorm
from .grad_accumulation import GradAccumulation
from .grad_clip import GradClip
from .inference_resize import InferenceResize
from .input_norm import InputNorm
from .l1_penalty import L1Penalty
from .label_smoothing import LabelSmoothing
from .long_training import LongTraining
from .lr_schedule import LRSchedule
from .mixup import Mixup
from .norm_layer import NormLayer
from .optimizer import Optimizer
from .progressive_resizing import ProgressiveResizing
from .random_crop import RandomCrop
from .random_erasing import RandomErasing
from .repeated_augmentation import RepeatedAugmentation
from .stochastic_depth import StochasticDepth
from .transfer_learning import TransferLearning
from .triplet_loss import TripletLoss
from .weight_decay import WeightDecay
from .weight_init import WeightInit

BUILTIN_TECHNIQUES = (  # listed (automl techniques, README) in this order
    # optimisation
    Optimizer, LRSchedule, BatchSize, WeightDecay, L1Penalty, GradClip, GradAccumulation,
    LongTraining, EarlyStopping, EMA,
    # augmentation
    Flip, RandomCrop, AugmentPolicy, AugMix, RandomErasing, RepeatedAugmentation, Mixup, CutMix,
    # resolution
    ProgressiveResizing, FixRes, InferenceResize,
    # regularisation, normalisation and initialisation
    Dropout, StochasticDepth, GhostBatchNorm, NormLayer, WeightInit, TransferLearning, InputNorm,
    # losses
    LabelSmoothing, FocalLoss, ClassWeights, BinaryCrossEntropy, TripletLoss,
)


@hookimpl
def register_techniques(register):
    for cls in BUILTIN_TECHNIQUES:
        register(cls)
