from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from optuna.distributions import IntDistribution

from automl.functional import resize
from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch


def evaluation_batches(state, split, size: int = 512) -> Iterator[tuple[torch.Tensor,
                                                                       torch.Tensor]]:
    """``split``'s images as the trainer evaluates them (normalised, then resized to the
    evaluation size as inference_resize does), with their labels, as float32 CPU batches."""
    import torch

    from automl.trainer import device_batches, normalise_batch

    chunks = torch.arange(len(split.labels), device=state.device).split(size)
    eval_size = state.eval_image_size or state.image_size
    for images, labels in device_batches(split, chunks, state):
        batch = resize(normalise_batch(state, images), eval_size)
        yield batch.float().cpu(), labels.cpu()


class Quantization(Technique):
    """Post-training int8 quantization: each evaluation also scores an int8 copy of the model.

    Helps: deployment on CPUs and edge devices, where int8 weights are about 4x smaller and
    int8 kernels faster; it tells what accuracy that costs, and a study can optimise it
    (``study.metric: val/int8_acc``, or ``[val/acc1, val/latency_ms]`` as two objectives).
    Training is unchanged. At every evaluation (each epoch's validation, the test split) a
    float32 CPU copy of the evaluated model (EMA weights, FixRes statistics and test-time
    augmentation included) is quantized with torch's own FX graph mode
    (``torch.ao.quantization``, torch's default x86/fbgemm qconfig mapping: per-channel
    int8 weights, uint8 activations, convolutions fused with batch norm and ReLU), its
    activation ranges the min and max over ``calibration_batches`` un-augmented training
    batches, never val or test (torch's default histogram observer does work that depends
    on the data). Layers FX cannot trace into (ghost batch norm) stay float; a model FX
    cannot trace at all fails the trial with that error. Adds to the split's metrics:
    ``int8_acc`` (top-1 accuracy of the int8 model on the split, fed as evaluation feeds
    the float model; eval_batch hooks other than inference_resize's resize are not
    replayed), ``model_bytes`` and ``float_bytes`` (the serialised int8 and float32
    state_dict), ``latency_ms`` and ``float_latency_ms`` (median milliseconds per image at
    batch 1 on one CPU thread, over 20 runs after 20 warm-up runs: a measurement of the
    machine and its load at that moment, not a property of the model). The int8 pass runs on the CPU
    whatever the training device: on a GPU it can cost as much as the float validation.
    Quantization-aware training is not offered: fake-quant modules would change the trained
    model's structure under EMA, FixRes and the saved model file. torch deprecates
    torch.ao's FX quantization in favour of torchao; it still ships and works in the
    pinned torch.
    Suggested: calibration_batches 4–8 (more rarely changes the ranges of a small model).
    Source: Jacob et al., "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference" (2018); Krishnamoorthi, "Quantizing deep
    convolutional networks for efficient inference: A whitepaper" (2018).
    """

    name = "quantization"
    space = {"calibration_batches": IntDistribution(1, 16)}
    defaults = {"calibration_batches": 4}
    limits = {"calibration_batches": (1, 1000)}
    #: The metrics it adds that a study may optimise, and in which direction.
    metrics = {"int8_acc": "maximize", "model_bytes": "minimize", "latency_ms": "minimize"}

    @hookimpl
    def evaluate(self, state, split, prefix) -> dict[str, Any]:
        from .fixres import calibration_batches
        from .quantization_int8 import (
            accuracy,
            cpu_float_copy,
            engine,
            latency_ms,
            network,
            quantize,
            state_dict_bytes,
        )

        backend = engine()
        model = cpu_float_copy(state.eval_model)
        float_bytes = state_dict_bytes(network(model))
        image = next(evaluation_batches(state, split))[0][:1]
        float_latency = latency_ms(model, image, backend)
        calibration = (images.float().cpu() for images in
                       calibration_batches(state, self.params["calibration_batches"]))
        int8 = quantize(model, calibration, backend)
        return {"int8_acc": accuracy(int8, evaluation_batches(state, split), backend),
                "model_bytes": state_dict_bytes(network(int8)), "float_bytes": float_bytes,
                "latency_ms": latency_ms(int8, image, backend),
                "float_latency_ms": float_latency}
