from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.distributions import CategoricalDistribution, FloatDistribution

from automl.errors import UserError
from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch

    from automl.recipe import Recipe
    from automl.stages import StageContext

log = logging.getLogger("automl")

TEACHER_STAGE = "distillation.teacher"
#: What a stage-trained teacher trains with besides its model and epochs: a plain, solid
#: recipe at the techniques' defaults (a study's definition records it: stage_settings).
TEACHER_TECHNIQUES: dict[str, dict[str, Any]] = {
    "optimizer": {}, "lr_schedule": {}, "weight_decay": {}, "random_crop": {}}
MAX_TEACHER_EPOCHS_FACTOR = 20


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch: Hinton's
    soft-target term (T² keeps its gradients' scale independent of T)."""
    import torch.nn.functional as F

    t = float(temperature)
    return F.kl_div(F.log_softmax(student_logits.float() / t, dim=1),
                    F.log_softmax(teacher_logits.float() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def train_teacher(context: StageContext) -> dict[str, Any]:
    """The teacher stage: train the stage's recipe on the training split, keep it as an
    ``automl train`` model file (so ``automl.load_model`` reads it, as it reads a checkpoint
    teacher)."""
    from automl.checkpoints import read_checkpoint
    from automl.model_file import save_model

    trained = context.train()
    state, pm = trained.state, trained.pm
    model = pm.hook.eval_model(state=state)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        save_model(path, state, pm, model, dict(state.history[-1]))
        return read_checkpoint(path)


class Distillation(Technique):
    """Knowledge distillation: also match a teacher's softened predictions, not only the labels.

    The loss becomes (1 − alpha) · the usual loss (whatever the loss techniques composed:
    label smoothing, class weights, mixup's and cutmix's soft targets) + alpha · T² ·
    KL(teacher ‖ student) at temperature T, the teacher (in eval mode, without gradients)
    seeing the same augmented, mixed batch as the student, so the soft targets compose with
    every augmentation. Extra loss terms of other techniques are added after it, unscaled.
    The teacher is `checkpoint`, an `automl train` model.pt (any architecture with the data's
    classes and channels), or, when `checkpoint` is empty, trained in a stage before the
    first trial that needs it: `teacher_model` (`same`: the student's architecture; any timm
    or automl model name, such as automl_resnet14) for `teacher_epochs_factor` × the recipe's
    epochs with optimizer, lr_schedule, weight_decay and random_crop at their defaults. The
    stage runs once per study (cached in the run folder, reused by every trial and by
    `automl train` of the exported recipe) and its time is reported apart (`stage_seconds`).

    Helps: a small or short-trained student, when a better teacher is affordable (a larger
    model, or the same one trained longer); soft targets carry class similarities the labels
    lack, and act as a strong regulariser on small datasets.
    Suggested: alpha 0.5–0.9, temperature 2–4; a teacher clearly better than the student.
    Source: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (2015);
    Beyer et al., "Knowledge distillation: A good teacher is patient and consistent" (2022).
    """

    name = "distillation"
    space = {"alpha": FloatDistribution(0.1, 0.9),
             "temperature": FloatDistribution(1.0, 8.0, log=True),
             "teacher_model": CategoricalDistribution(["same"]),
             "teacher_epochs_factor": CategoricalDistribution([2]),
             "checkpoint": CategoricalDistribution([""])}
    defaults = {"alpha": 0.5, "temperature": 4.0, "teacher_model": "same",
                "teacher_epochs_factor": 2, "checkpoint": ""}
    limits = {"alpha": (0.0, 1.0), "temperature": (0.1, 100.0)}
    stage_settings = {"teacher_techniques": TEACHER_TECHNIQUES}

    @classmethod
    def check_value(cls, param, value):
        """A teacher model is any registered model name, a factor any whole number from 1 to
        20, a checkpoint empty (train a teacher) or an existing file."""
        if param == "teacher_model":
            return None if value == "same" else _model_problem(value)
        if param == "teacher_epochs_factor":
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not 1 <= value <= MAX_TEACHER_EPOCHS_FACTOR:
                return f"expected a whole number from 1 to {MAX_TEACHER_EPOCHS_FACTOR}, " \
                       f"got {value!r}"
            return None
        if param == "checkpoint":
            if not isinstance(value, str):
                return f"expected the path of an automl train model.pt, got {value!r}"
            return None if not value or Path(value).is_file() else f"{value}: no such file"
        return super().check_value(param, value)

    def stages(self, recipe: Recipe) -> list:
        from automl.recipe import Recipe
        from automl.stages import Stage

        if self.params["checkpoint"]:
            return []
        model = self.params["teacher_model"]
        teacher = Recipe(model=recipe.model if model == "same" else model,
                         data=dict(recipe.data), seed=recipe.seed,
                         epochs=recipe.epochs * int(self.params["teacher_epochs_factor"]),
                         techniques={k: dict(v) for k, v in TEACHER_TECHNIQUES.items()})
        return [Stage(TEACHER_STAGE, teacher, train_teacher)]

    @hookimpl
    def on_train_start(self, state):
        from automl.model_file import load_model

        path = self.params["checkpoint"] or self.stage_artifact_path(state, TEACHER_STAGE)
        teacher, preprocess, info = load_model(path, device=state.device)
        if (info.in_chans, info.class_names) != (state.in_chans, list(state.data.class_names)):
            raise UserError(f"distillation: teacher {path} was trained on {info.in_chans}-"
                            f"channel images of classes {info.class_names}; this data has "
                            f"{state.in_chans} channels and classes "
                            f"{list(state.data.class_names)}")
        teacher.requires_grad_(False)
        state.extras["distillation"] = Teacher(teacher.eval(), preprocess, state)

    @hookimpl(tryfirst=True)  # before other terms are added: only the composed loss is scaled
    def after_loss(self, state):
        teacher_logits = state.extras["distillation"].logits(state, state.images)
        alpha = self.params["alpha"]
        state.loss = (1 - alpha) * state.loss + alpha * distillation_loss(
            state.logits, teacher_logits, self.params["temperature"])


class Teacher:
    """The teacher, fed the student's batch brought to its own normalisation and size."""

    def __init__(self, model, preprocess, state):
        self.model, self.preprocess = model, preprocess
        self.eval_image_size = preprocess.eval_image_size
        self._affine: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._student = _stats(state.input_mean, state), _stats(state.input_std, state)

    def logits(self, state, images: torch.Tensor) -> torch.Tensor:
        """The teacher's float32 logits for the normalised student batch ``images``."""
        import torch

        from automl.functional import resize
        from automl.trainer import autocast

        scale, shift = self._affine_for(images)
        with torch.no_grad(), autocast(state):
            inputs = images.float() * scale + shift
            if self.eval_image_size:
                inputs = resize(inputs, self.eval_image_size)
            return self.model(inputs).float()

    def _affine_for(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_teacher = x_student · scale + shift: the student's normalisation undone, the
        teacher's applied (per channel, or per pixel at this batch's size). Linear, so it
        commutes with mixup, cutmix and resizing."""
        key = tuple(images.shape[1:])
        if key not in self._affine:
            from automl.functional import resize

            (s_mean, s_std), p = self._student, self.preprocess
            scale, shift = s_std / p.std, (s_mean - p.mean) / p.std
            if scale.dim() == 4 and scale.shape[-1] > 1 and scale.shape[-2:] != key[-2:]:
                scale, shift = resize(scale, key[-1]), resize(shift, key[-1])
            self._affine[key] = scale.to(images.device), shift.to(images.device)
        return self._affine[key]


def _stats(values, state) -> torch.Tensor:
    """Normalisation statistics as the trainer applies them (0–255, broadcast over a batch)."""
    import torch

    tensor = torch.as_tensor(values, dtype=torch.float32, device=state.device)
    return (tensor.view(1, -1, 1, 1) if tensor.dim() == 1 else tensor.unsqueeze(0)) * 255


def _model_problem(value: Any) -> str | None:
    """Why ``value`` is not a model timm can build (None when it is)."""
    if not isinstance(value, str) or not value:
        return f"expected 'same' or a timm model name, got {value!r}"
    import timm

    import automl.models  # noqa: F401  (registers the project's small networks in timm)

    return None if timm.is_model(value) else f"unknown model {value!r} (see timm.list_models())"
