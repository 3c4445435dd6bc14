"""Weight files: read them without running code, and copy the tensors that fit into a model.

A ``.pt`` file is a pickle, and unpickling can run any code its author chose. Checkpoints are
therefore read with ``torch.load(weights_only=True)``, which accepts only tensors and plain
containers and refuses anything else before running it.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from automl.errors import ConfigError, exception_line

__all__ = ["LoadReport", "load_matching", "load_weights", "read_checkpoint"]

#: Keys under which common training tools nest the weights in a checkpoint.
WRAPPER_KEYS = ("state_dict", "model")


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (a ``state_dict``, bare or under ``state_dict`` /
    ``model``), on the CPU; a one-line ConfigError naming the file for anything else."""
    return _state_dict(read_checkpoint(path), Path(path))


def read_checkpoint(path: str | Path) -> object:
    """What a ``.pt`` file holds (tensors and plain containers only), on the CPU; a one-line
    ConfigError naming the file when it is missing, not a checkpoint, or carries code."""
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a weights file" if path.is_dir() else "no such file"
        raise ConfigError(problem, file=str(path))
    try:
        with warnings.catch_warnings():  # torch notes pickle protocols it did not write itself
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a zip, not a pickle: torch raises many types
        if isinstance(exc, pickle.UnpicklingError) and str(exc).startswith("Weights only"):
            raise ConfigError(f"not a plain weights file (weights_only refused it: "
                              f"{_refusal_reason(str(exc))})", file=str(path)) from None
        raise ConfigError(f"not a PyTorch weights file ({exception_line(exc)})",
                          file=str(path)) from None
    return obj


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        nested = [obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        if nested and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = nested[0]
    if not isinstance(obj, dict):
        raise ConfigError(f"holds a {type(obj).__name__}, not a dict of tensors "
                          "(a model's state_dict)", file=str(path))
    if not obj:
        raise ConfigError("holds no tensors", file=str(path))
    for key, value in obj.items():
        if not (isinstance(key, str) and isinstance(value, torch.Tensor)):
            raise ConfigError(f"not a dict of tensors: {key!r} holds a {type(value).__name__}",
                              file=str(path))
    return obj


def _refusal_reason(text: str) -> str:
    """The line of torch's long refusal that says what was refused (an unsupported global)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reasons = [line for line in lines[1:]
               if not line.startswith(("Check the documentation", "Please file an issue"))]
    return reasons[0] if reasons else lines[0]


@dataclass
class LoadReport:
    """What :func:`load_matching` did: tensors copied, and the model's tensors it left alone."""

    loaded: list[str] = field(default_factory=list)
    #: name -> (shape in the model, shape in the file): another number of classes, say.
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unused: list[str] = field(default_factory=list)  # in the file, not in the model


def load_matching(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> LoadReport:
    """Copy every tensor of ``weights`` whose name and shape match one of ``model``'s
    parameters or buffers; the others keep their current values and are reported."""
    own = model.state_dict()
    report = LoadReport(unused=sorted(set(weights) - set(own)))
    matching = {}
    for name, tensor in own.items():
        if name not in weights:
            report.missing.append(name)
        elif weights[name].shape != tensor.shape:
            report.mismatched[name] = (tuple(tensor.shape), tuple(weights[name].shape))
        else:
            matching[name] = weights[name]
            report.loaded.append(name)
    model.load_state_dict(matching, strict=False)
    return report
