"""Fetching a public dataset's files: torchvision is used as a downloader only, and the files
are then read by the project's own readers, so results do not depend on its dataset classes."""

from __future__ import annotations

from pathlib import Path

from automl.errors import UserError, exception_line

__all__ = ["DOWNLOAD_HINT", "torchvision_download"]

DOWNLOAD_HINT = "set `download: true` in the data config or pass --data-dir pointing at the files"


def torchvision_download(class_name: str, data_dir: Path, dataset: str) -> None:
    """Download torchvision's ``class_name`` dataset (training part) into ``data_dir``."""
    try:
        import torchvision.datasets as tv_datasets

        data_dir.mkdir(parents=True, exist_ok=True)
        getattr(tv_datasets, class_name)(root=str(data_dir), train=True, download=True)
    except Exception as exc:  # network, disk and checksum failures come in many types
        raise UserError(f"{dataset}: download to {data_dir} failed: {exception_line(exc)}"
                        ) from exc
