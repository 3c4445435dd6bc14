"""Post-training int8 quantization with torch's own FX graph mode, and what it is measured by.

Apart from the ``quantization`` technique (which imports this module when it evaluates), so
that listing techniques does not import torch.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from automl.model_file import EvalWrapper

#: Timed forward passes of one image (after as many warm-up passes): their median is reported.
LATENCY_RUNS = 20


def engine() -> str:
    """The quantized backend: x86 (fbgemm and oneDNN) where torch has it, else qnnpack (ARM)."""
    return "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"


@contextmanager
def quantized_engine(name: str) -> Iterator[None]:
    """Run with torch's quantized backend set to ``name`` (a process-wide setting, restored
    after), without the warnings torch.ao prints on every use: its FX quantization is
    deprecated in favour of torchao, which this project does not depend on."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
            warnings.filterwarnings("ignore", message=r"(?s).*reduce_range will be deprecated")
            warnings.filterwarnings("ignore", message=r"(?s).*quantized tensor creation "
                                    "functions")
            yield
    finally:
        torch.backends.quantized.engine = previous


def cpu_float_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` on the CPU in eval mode, its weights in the default memory
    format (the trainer keeps them channels_last); ``model`` is not changed."""
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32,
                                   memory_format=torch.contiguous_format).eval()


def network(model: nn.Module) -> nn.Module:
    """The network inside ``model``'s :class:`~automl.model_file.EvalWrapper` layers (test-time
    augmentation), or ``model`` itself."""
    while isinstance(model, EvalWrapper):
        model = model.module
    return model


def qconfig_mapping(backend: str):
    """torch's default qconfig mapping for ``backend``, its activation observer replaced by a
    min/max one (torch's default for activations is a histogram observer). The histogram
    observer's work depends on the values it sees, and so does the number of times it
    reads a value back on the host; with min/max observers the whole int8 evaluation reads
    back the same number of values whatever the weights, which tests/test_host_sync.py
    relies on to tell per-batch reads from per-evaluation ones.
    """
    from torch.ao.quantization import MinMaxObserver, QConfig, get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping(backend)
    default = mapping.global_qconfig
    reduce_range = backend in ("x86", "fbgemm")  # as torch's default: no overflow on AVX2
    return mapping.set_global(QConfig(
        activation=MinMaxObserver.with_args(reduce_range=reduce_range),
        weight=default.weight))


def quantize(model: nn.Module, calibration: Iterable[torch.Tensor], backend: str) -> nn.Module:
    """An int8 version of ``model`` (a CPU float32 copy, :func:`cpu_float_copy`, changed in
    place): FX graph-mode post-training static quantization with :func:`qconfig_mapping`'s
    qconfigs for ``backend`` (per-channel int8 weights, uint8 activations whose ranges are
    observed on the ``calibration`` batches; convolutions fused with batch norm and ReLU).

    Only the network is traced and quantized: :class:`~automl.model_file.EvalWrapper` layers
    around it stay as they are (their views run in float), and calibration runs through them,
    so the observed ranges are those of the inputs the network gets in evaluation.
    """
    from torch.ao.quantization.quantize_fx import convert_fx

    holder, inner = None, model
    while isinstance(inner, EvalWrapper):
        holder, inner = inner, inner.module
    batches = iter(calibration)
    first = next(batches)
    with quantized_engine(backend), torch.no_grad():
        prepared = _prepared(inner, qconfig_mapping(backend), first)
        if holder is None:
            model = prepared
        else:
            holder.module = prepared
        for images in (first, *batches):
            model(images)
        converted = convert_fx(prepared)
    if holder is None:
        return converted
    holder.module = converted
    return model


def _prepared(model: nn.Module, qconfig_mapping, example: torch.Tensor) -> nn.Module:
    """``prepare_fx``'s observed model. A model FX cannot trace is tried again with the
    layers it cannot trace into kept whole, in float: subclasses of torch's own layers that
    change their training behaviour only (ghost batch norm), which torch treats as leaves
    but FX does not know as such."""
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import prepare_fx

    try:
        return prepare_fx(model, qconfig_mapping, example_inputs=(example,))
    except Exception as first_error:  # noqa: BLE001  (tracing fails in many ways)
        leaves = sorted({type(m) for m in model.modules() if _subclasses_a_torch_layer(type(m))},
                        key=lambda cls: cls.__qualname__)
        if leaves:
            config = PrepareCustomConfig().set_non_traceable_module_classes(leaves)
            try:
                return prepare_fx(model, qconfig_mapping, example_inputs=(example,),
                                  prepare_custom_config=config)
            except Exception:  # noqa: BLE001, S110  (report the first error, the model's own)
                pass
        raise RuntimeError(f"cannot trace {type(model).__name__} for torch's FX quantization: "
                           f"{type(first_error).__name__}: {first_error}") from first_error


def _subclasses_a_torch_layer(cls: type) -> bool:
    """A class from outside torch whose parent is one of torch.nn's own layers."""
    if cls.__module__.startswith("torch."):
        return False
    return any(base.__module__.startswith("torch.nn.modules.") and base is not nn.Module
               and base.__name__ not in ("Sequential", "ModuleList", "ModuleDict")
               for base in cls.__mro__[1:])


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the file a deployment would ship."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@torch.no_grad()
def latency_ms(model: nn.Module, image: torch.Tensor, backend: str,
               runs: int = LATENCY_RUNS) -> float:
    """Median wall-clock milliseconds of ``model`` on one image (a batch of 1), over ``runs``
    timed forward passes after as many warm-up passes, on one CPU thread (torch's thread
    count is restored after): several threads on a tiny batch mostly wait for each other,
    and wait far longer when other processes load the CPU.

    A measurement of this machine at this moment (its load), not a property of the model:
    compare values from one machine, in one run.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with quantized_engine(backend):
            return _median_ms(lambda: model(image), runs)
    finally:
        torch.set_num_threads(threads)


def _median_ms(call: Callable[[], object], runs: int) -> float:
    for _ in range(runs):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             backend: str) -> float:
    """Top-1 accuracy of ``model`` over ``(images, labels)`` CPU batches."""
    hits = count = 0
    with quantized_engine(backend):
        for images, labels in batches:
            hits += int((model(images).argmax(1) == labels).sum())
            count += len(labels)
    return hits / max(count, 1)
