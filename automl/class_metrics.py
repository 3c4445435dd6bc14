"""Per-class results from a confusion matrix: recall, precision, support, a short table.

One confusion matrix (rows: true class, columns: predicted class) gives every per-class number,
so the trainer, ``automl train``'s metrics.json and ``automl evaluate`` all count it the same
way. Pure torch, no training code: ``automl evaluate`` uses it on a loaded model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["add_predictions", "class_report", "class_table", "confusion_table", "new_confusion"]

#: ``class_table`` lists every class up to this many; beyond it, the lowest recalls only.
TABLE_ROWS = 20


def new_confusion(num_classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """An empty confusion matrix, flat (``num_classes²`` int64 counts) for cheap updates."""
    return torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)


def add_predictions(confusion: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor,
                    num_classes: int) -> None:
    """Count one batch into a flat confusion matrix, on its device (no host sync)."""
    confusion.index_add_(0, labels * num_classes + predicted, torch.ones_like(labels))


def class_report(confusion: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Recall, precision and support per class, the matrix itself and the accuracies, as
    plain values for JSON (``None`` where a rate is undefined: a class absent from the split
    has no recall, a class never predicted no precision)."""
    names = list(class_names)
    matrix = confusion.view(len(names), len(names)).cpu()
    hits, support, predicted = matrix.diagonal(), matrix.sum(1), matrix.sum(0)
    recall = [_rate(h, n) for h, n in zip(hits.tolist(), support.tolist(), strict=True)]
    precision = [_rate(h, n) for h, n in zip(hits.tolist(), predicted.tolist(), strict=True)]
    present = [r for r in recall if r is not None]
    return {"classes": names,
            "accuracy": _rate(int(hits.sum()), int(support.sum())),
            "balanced_accuracy": sum(present) / len(present) if present else None,
            "recall": dict(zip(names, recall, strict=True)),
            "precision": dict(zip(names, precision, strict=True)),
            "support": dict(zip(names, support.tolist(), strict=True)),
            "confusion": matrix.tolist()}


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def class_table(report: dict, rows: int = TABLE_ROWS) -> str:
    """The per-class lines of a :func:`class_report`: all classes, or the ``rows // 2``
    lowest recalls when there are more than ``rows`` (the minority classes a user looks for)."""
    names = report["classes"]
    shown = names
    if len(names) > rows:
        shown = sorted(names, key=lambda n: _sort_key(report["recall"][n]))[:rows // 2]
    width = max(5, *(len(n) for n in shown))
    lines = [f"{'class':<{width}}  recall  precision  support"]
    for name in shown:
        lines.append(f"{name:<{width}}  {_cell(report['recall'][name]):>6}  "
                     f"{_cell(report['precision'][name]):>9}  {report['support'][name]:>7}")
    if len(shown) < len(names):
        lines.append(f"({len(shown)} lowest recalls of {len(names)} classes; all in the "
                     "per-class results)")
    return "\n".join(lines)


def confusion_table(report: dict, rows: int = TABLE_ROWS) -> str | None:
    """The confusion matrix as text (rows: true class, columns: predicted), or None when it
    has more than ``rows`` classes (it is in the JSON)."""
    names, matrix = report["classes"], report["confusion"]
    if len(names) > rows:
        return None
    corner = "true/predicted"
    label = max(len(corner), *(len(n) for n in names))
    width = max(*(len(n) for n in names), *(len(str(v)) for row in matrix for v in row))
    lines = [f"{corner:<{label}}  " + " ".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, matrix, strict=True):
        lines.append(f"{name:<{label}}  " + " ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def _sort_key(value: float | None) -> float:
    return math.inf if value is None else value


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
