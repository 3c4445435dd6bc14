from __future__ import annotations

from optuna.distributions import CategoricalDistribution, IntDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique, When

#: views -> (mirror, shift) switches.
VIEWS = {"flip": (True, False), "shift": (False, True), "flip_shift": (True, True)}


class TestTimeAugmentation(Technique):
    """Test-time augmentation: evaluation averages the logits over mirrored and shifted views.

    Helps: a few tenths of a point to a point of accuracy for free at training time, paid at
    inference (one forward pass per view: 2 with flip, 5 with shift, 10 with both); flips
    suit classes that are mirror-symmetric (natural images, clothing), shifts suit anything,
    digits and text included, where a flip changes the class. The evaluated model (EMA
    weights, FixRes' recalibrated copy: this wrapper is the outermost) is wrapped in a module
    averaging its logits over the views of each batch after eval_batch hooks changed it
    (inference_resize's size); shifted views repeat the edge pixels into the gap. The model
    `automl train` saves records the wrapper: ``automl.load_model`` and ``automl predict``
    average the same views, so they reproduce the recorded test accuracy. Quantization
    quantizes the network inside it and keeps the views.
    Suggested: views flip on mirror-symmetric data, shift elsewhere; shift 1–2 px at 28–32 px.
    Source: Krizhevsky et al., "ImageNet Classification with Deep CNNs" (2012, averaging over
    crops and their reflections); Simonyan & Zisserman, "Very Deep Convolutional Networks"
    (2015).
    """

    __test__ = False  # a class named Test*: not a pytest test class where a test imports it

    name = "test_time_augmentation"
    space = {"views": CategoricalDistribution(list(VIEWS)), "shift": IntDistribution(1, 3)}
    conditions = {"shift": When("views", {"shift": IntDistribution(1, 3),
                                          "flip_shift": IntDistribution(1, 3)})}
    defaults = {"views": "flip", "shift": 1}
    limits = {"shift": (1, 64)}

    @hookimpl(wrapper=True, tryfirst=True)  # outermost: around EMA's weights, FixRes' copy
    def eval_model(self, state):
        from .test_time_augmentation_layer import ViewAverage

        model = yield
        flip, shift = VIEWS[self.params["views"]]
        return ViewAverage(model, flip=flip, shift=self.params["shift"] if shift else 0)
