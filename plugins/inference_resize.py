from __future__ import annotations

from optuna.distributions import FloatDistribution

from automl.functional import resize
from automl.hookspecs import hookimpl
from automl.technique import Technique


class InferenceResize(Technique):
    """Inference resize: evaluate at a different resolution than the one trained on.

    Helps: random-crop training makes objects look larger than at test time; evaluating at
    a slightly higher resolution corrects that "train-test resolution discrepancy".
    Suggested: scale 1.1–1.3.
    Source: Touvron et al., "Fixing the train-test resolution discrepancy" (FixRes, 2019).
    """

    name = "inference_resize"
    space = {"scale": FloatDistribution(0.75, 1.5)}
    defaults = {"scale": 1.25}
    limits = {"scale": (0.1, 8.0)}

    @hookimpl
    def on_train_start(self, state):
        state.eval_image_size = max(1, round(state.image_size * self.params["scale"]))

    @hookimpl
    def eval_batch(self, state):
        state.images = resize(state.images, state.eval_image_size)
