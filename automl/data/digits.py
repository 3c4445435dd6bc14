"""The embedded default dataset: scikit-learn's 1797 handwritten digits, so a search runs
anywhere without a download."""

from __future__ import annotations

import torch

from automl.data.splits import Split, fixed_test_cut

__all__ = ["load"]


def load(config: dict) -> tuple[Split, Split, list[str]]:
    """sklearn's 8x8 digits upsampled to 16x16 so small CNNs have room for a few poolings;
    a fixed 20% test cut (the set ships without one)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().unsqueeze(1)  # (N, 1, 8, 8), values 0..16
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    images = (x * (255.0 / 16.0)).round_().clamp_(0, 255).to(torch.uint8).contiguous()
    full = Split(images, torch.from_numpy(bunch.target).to(torch.int64))
    train, test = fixed_test_cut(full)
    return train, test, [str(c) for c in bunch.target_names]
