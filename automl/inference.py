"""Using a kept model: predict classes of image files, evaluate on labelled images.

What ``automl predict`` and ``automl evaluate`` call. Only the model file's own preprocessing
and the model are used (:mod:`automl.model_file`); no training code is imported, except the
trainer's device check when a device is named.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from automl.class_metrics import add_predictions, class_report, new_confusion
from automl.data import IMAGE_SUFFIXES
from automl.errors import UserError, exception_line
from automl.model_file import LoadedModel

__all__ = ["Prediction", "evaluate_dataset", "evaluate_folder", "image_files",
           "inference_device", "predict_files", "prediction_format", "prediction_lines",
           "write_predictions"]

BATCH = 512  # images per forward pass (the trainer evaluates in chunks of the same size)


def inference_device(name: str | None) -> torch.device:
    """A named device, checked as training checks it; else CUDA when present, else CPU."""
    if name:
        from automl.trainer import resolve_device  # its check: a usable device, or exit 2

        return resolve_device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Prediction:
    """One image's predicted class, its probability, and the ``top`` most likely classes."""

    path: str
    label: str
    probability: float
    top: list[tuple[str, float]]


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named, and those inside named folders (recursively, sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{item}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"{item}: no such file or folder")
    if not files:
        raise UserError("no images given")
    return files


@torch.no_grad()
def predict_files(loaded: LoadedModel, files: Sequence[Path], top: int = 3) -> list[Prediction]:
    """Class probabilities of each image file (softmax of the model's logits)."""
    names = loaded.info.class_names
    top = max(1, min(top, len(names)))
    predictions = []
    for start in range(0, len(files), BATCH):
        chunk = files[start:start + BATCH]
        batch = torch.cat([_read(loaded, path) for path in chunk])
        probs = loaded.model(loaded.preprocess(batch)).float().softmax(1).cpu()
        values, indices = probs.topk(top, dim=1)
        for path, vals, idx in zip(chunk, values.tolist(), indices.tolist(), strict=True):
            ranked = [(names[i], v) for i, v in zip(idx, vals, strict=True)]
            predictions.append(Prediction(str(path), ranked[0][0], ranked[0][1], ranked))
    return predictions


def _read(loaded: LoadedModel, path: Path) -> torch.Tensor:
    """One image file as the model's uint8 input (converted as the preprocessing says)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return loaded.preprocess.to_uint8(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: cannot read image: {exception_line(exc)}") from None


def prediction_lines(predictions: Sequence[Prediction]) -> list[str]:
    """``path  class  probability  (class p, class p, ...)``, one line per image."""
    width = max(len(p.path) for p in predictions)
    label = max(len(p.label) for p in predictions)
    return [f"{p.path:<{width}}  {p.label:<{label}}  {p.probability:.4f}  ("
            + ", ".join(f"{name} {prob:.4f}" for name, prob in p.top) + ")"
            for p in predictions]


def prediction_format(path: Path) -> str:
    """``csv`` or ``json``, from the suffix of ``path``; anything else is a UserError."""
    kind = path.suffix.lower().lstrip(".")
    if kind not in ("csv", "json"):
        raise UserError(f"-o {path}: write a .csv or .json file (the suffix picks the format)")
    return kind


def write_predictions(path: Path, predictions: Sequence[Prediction]) -> None:
    """Predictions as CSV (path, predicted, probability, then class_k / probability_k for
    the top classes) or JSON (a list of objects), chosen by the file's suffix."""
    import csv
    import io
    import json

    from automl.yamlio import write_atomic

    prediction_format(path)
    if path.suffix.lower() == ".json":
        rows = [{"path": p.path, "predicted": p.label, "probability": p.probability,
                 "top": [{"class": c, "probability": v} for c, v in p.top]}
                for p in predictions]
        write_atomic(path, json.dumps(rows, indent=2) + "\n")
        return
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    top = len(predictions[0].top)
    writer.writerow(["path", "predicted", "probability",
                     *(f"{kind}_{k}" for k in range(1, top + 1)
                       for kind in ("class", "probability"))])
    for p in predictions:
        writer.writerow([p.path, p.label, p.probability, *(v for pair in p.top for v in pair)])
    write_atomic(path, text.getvalue())


def evaluate_folder(loaded: LoadedModel, folder: Path) -> dict:
    """Per-class results on a labelled folder: ``folder/<class name>/<image>``. Every
    sub-folder must name one of the model's classes (a subset is fine)."""
    from automl.data import _scan_classes  # the folder dataset's own class scan

    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder (expected {folder}/<class>/<image>.png)")
    by_class = _scan_classes(folder)
    names = loaded.info.class_names
    unknown = sorted(set(by_class) - set(names))
    if unknown:
        raise UserError(f"{folder}: class folders {', '.join(unknown)} are not classes of the "
                        f"model (its classes: {', '.join(names)})")
    files = [(path, names.index(name)) for name, paths in by_class.items() for path in paths]

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(files), BATCH):
            chunk = files[start:start + BATCH]
            yield (torch.cat([_read(loaded, path) for path, _ in chunk]),
                   torch.tensor([label for _, label in chunk]))

    return _report(loaded, batches())


def evaluate_dataset(loaded: LoadedModel, dataset: str, split: str = "test",
                     data_dir: str | None = None) -> dict:
    """Per-class results on a split of a registered dataset (``digits``, ``cifar10``, ...).
    The model's own dataset is read with the training run's data settings (the same val and
    test images); another dataset must have the same class names."""
    from automl.data import load_data

    recipe_data = loaded.info.recipe.get("data", {})
    config = dict(recipe_data) if recipe_data.get("dataset") == dataset else {"dataset": dataset}
    if data_dir:
        config["data_dir"] = data_dir
    data = load_data(config)
    if data.class_names != loaded.info.class_names:
        raise UserError(f"dataset {dataset}: its classes ({', '.join(data.class_names)}) are not "
                        f"the model's ({', '.join(loaded.info.class_names)})")
    part = getattr(data, split)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in torch.arange(len(part)).split(BATCH):
            yield part.images[idx], part.labels[idx]

    return _report(loaded, batches())


@torch.no_grad()
def _report(loaded: LoadedModel, batches) -> dict:
    """Count a class report over (uint8 images, labels) batches."""
    n = loaded.info.num_classes
    device = loaded.preprocess.device
    confusion = new_confusion(n, device)
    for images, labels in batches:
        predicted = loaded.model(loaded.preprocess(images)).argmax(1)
        add_predictions(confusion, labels.to(device), predicted, n)
    return class_report(confusion, loaded.info.class_names)
