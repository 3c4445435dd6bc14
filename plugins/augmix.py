from __future__ import annotations

from optuna.distributions import IntDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique


class AugMix(Technique):
    """AugMix: blend a few random augmentation chains of each image with the image itself.

    Helps: robustness to corruptions and calibration, with less distortion of the image
    than a single strong op; each sample draws its own chains and mixing weights.
    Suggested: severity 3, mixture width 3 (the paper's settings).
    Source: Hendrycks et al., "AugMix: A Simple Data Processing Method to Improve Robustness
    and Uncertainty" (2020).
    """

    name = "augmix"
    space = {
        "severity": IntDistribution(1, 10),
        "mixture_width": IntDistribution(1, 4),
    }
    defaults = {"severity": 3, "mixture_width": 3}
    limits = {"severity": (1, 10), "mixture_width": (1, 16)}

    @hookimpl
    def augment_batch(self, state):
        from automl.augment import augmix

        state.images = augmix(
state.images, self.params["severity"],
                              self.params["mixture_width"], state.generator)
