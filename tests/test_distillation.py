"""Knowledge distillation: the soft-target term by hand, the composed loss in a real training
(with mixup and label smoothing), a checkpoint teacher, and a stage teacher trained once per
study, reported apart, and reused by `automl train` of the exported recipe.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml
from automl.plugins.distillation import TEACHER_STAGE, Distillation, Teacher, distillation_loss

from automl.discovery import technique_catalog, training_manager
from automl.errors import UserError
from automl.hookspecs import hookimpl
from automl.model_file import load_model
from automl.recipe import Recipe
from automl.replay import replay
from automl.report import SilentReporter, trial_details
from automl.search import SearchSettings, run_search
from automl.space import definition_difference, load_recipe, load_space
from automl.stages import ARTIFACT, StageDirectory
from automl.trainer import train

CPU = torch.device("cpu")
DATA_CONFIG = {"dataset": "digits", "batch_size": 32}


def _recipe(techniques: dict, epochs: int = 1) -> Recipe:
    return Recipe(model="automl_resnet8", data=dict(DATA_CONFIG), epochs=epochs,
                  techniques={"optimizer": {}, **techniques})


def test_the_soft_target_term_is_hintons_by_hand():
    student = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
    teacher = [[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]]
    t = 2.0

    def softmax(row):
        exps = [math.exp(v / t) for v in row]
        return [e / sum(exps) for e in exps]

    kl = [sum(p * math.log(p / q) for p, q in zip(softmax(tr), softmax(sr), strict=True))
          for sr, tr in zip(student, teacher, strict=True)]
    expected = t * t * sum(kl) / len(kl)
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), t)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(torch.tensor(teacher), torch.tensor(teacher), t).item() == \
        pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """An `automl train` model.pt: the kind of file a user gives as a teacher."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    replay(_recipe({"lr_schedule": {}}, epochs=2), out, device="cpu")
    return out / "model.pt"


class LossCheck:
    """Recomputes the composed loss by hand after every after_loss term (trylast)."""

    def __init__(self, teacher_file: Path, alpha: float, temperature: float):
        self.teacher = load_model(teacher_file).model
        self.alpha, self.temperature = alpha, temperature
        self.checked = 0
        self.soft_targets = 0

    @hookimpl(trylast=True)
    def after_loss(self, state):
        with torch.no_grad():
            hard = state.loss_fn(state.logits, state.targets)
            soft = distillation_loss(state.logits, self.teacher(state.images), self.temperature)
            expected = (1 - self.alpha) * hard + self.alpha * soft
        assert state.loss.item() == pytest.approx(expected.item(), rel=1e-5)
        self.checked += 1
        self.soft_targets += state.targets.dim() == 2  # mixup's soft labels reached the loss


def test_a_checkpoint_teacher_adds_its_term_to_the_composed_loss(data, teacher_file):
    params = {"alpha": 0.7, "temperature": 3.0, "checkpoint": str(teacher_file)}
    recipe = _recipe({"distillation": params, "mixup": {}, "label_smoothing": {}})
    check = LossCheck(teacher_file, 0.7, 3.0)
    pm = training_manager(recipe, extra_plugins=[check])
    state = train(recipe, data, pm, device=CPU, max_steps=3)
    assert check.checked == 3 and check.soft_targets == 3
    assert math.isfinite(state.history[0]["val/loss"])
    assert Distillation(**params).stages(recipe) == []  # no stage: the user's teacher


def test_the_teacher_sees_the_batch_normalised_its_own_way(data, teacher_file):
    recipe = _recipe({"distillation": {"checkpoint": str(teacher_file)}})
    state = train(recipe, data, training_manager(recipe), device=CPU, max_steps=1)
    loaded = load_model(teacher_file)
    state.input_mean, state.input_std = (0.2,), (0.5,)  # a student normalised otherwise
    teacher = Teacher(loaded.model, loaded.preprocess, state)
    images = data.train.images[:8]
    student_batch = (images.float() - 0.2 * 255) / (0.5 * 255)
    scale, shift = teacher._affine_for(student_batch)
    assert torch.allclose(student_batch * scale + shift, loaded.preprocess(images), atol=1e-4)


def test_a_teacher_of_other_classes_is_refused(data, teacher_file):
    fewer = dataclasses.replace(data, class_names=[f"c{i}" for i in range(10)])
    recipe = _recipe({"distillation": {"checkpoint": str(teacher_file)}})
    with pytest.raises(UserError, match="distillation: teacher .* classes"):
        train(recipe, fewer, training_manager(recipe), device=CPU, max_steps=1)


def test_a_teacher_model_is_any_registered_model_and_the_factor_a_whole_number():
    assert Distillation.check_value("teacher_model", "automl_resnet14") is None
    assert "unknown model" in Distillation.check_value("teacher_model", "resnet_typo")
    assert Distillation.check_value("teacher_epochs_factor", 3) is None
    assert Distillation.check_value("teacher_epochs_factor", 0) is not None
    assert Distillation.check_value("checkpoint", "") is None
    assert "no such file" in Distillation.check_value("checkpoint", "missing.pt")
    assert Distillation.user_set_params() == []


def test_the_stage_teacher_follows_the_parameters(data):
    recipe = _recipe({"distillation": {}}, epochs=3)
    (stage,) = Distillation(teacher_model="automl_resnet14", teacher_epochs_factor=4
                            ).stages(recipe)
    assert stage.name == TEACHER_STAGE
    assert (stage.recipe.model, stage.recipe.epochs, stage.recipe.seed) == \
        ("automl_resnet14", 12, recipe.seed)
    assert "distillation" not in stage.recipe.techniques
    (same,) = Distillation().stages(recipe)
    assert (same.recipe.model, same.recipe.epochs) == ("automl_resnet8", 6)


SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 64}
epochs: 1
techniques:
  optimizer: {}
  lr_schedule: {}
  distillation: {enabled: true, teacher_epochs_factor: 1}
study: {n_trials: 2, warm_start: false, confirm_top: 0}
"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A two-trial search whose trials distil from a stage teacher."""
    root = tmp_path_factory.mktemp("distil")
    (root / "space.yaml").write_text(SPACE)
    space = load_space(root / "space.yaml", technique_catalog())
    settings = SearchSettings.from_space(space, study_name="kd", run_dir=root / "run",
                                         device="cpu")
    return root, space, run_search(space, settings, SilentReporter())


def test_a_stage_teacher_is_trained_once_per_study_and_timed_apart(searched):
    root, _, study = searched
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    (folder,) = (root / "run" / "stages").iterdir()  # one teacher for both trials
    assert folder.name.startswith(f"{TEACHER_STAGE}-") and (folder / ARTIFACT).is_file()
    built = yaml.safe_load((folder / "stage.json").read_text())["seconds"]
    first, second = (t.user_attrs["stage_seconds"] for t in trials)
    assert first >= built > second  # the first trial trained it, the second read it
    assert "stage seconds" in trial_details(study, trials[0].number)
    teacher = load_model(folder / ARTIFACT)
    assert teacher.info.architecture == "automl_resnet8"
    assert teacher.info.recipe["epochs"] == 1 and "val/acc1" not in teacher.info.metrics


def test_automl_train_of_the_exported_recipe_reuses_the_studys_teacher(searched, tmp_path):
    root, _, _ = searched
    best = root / "run" / "best_recipe.yaml"
    recipe = load_recipe(best, technique_catalog())
    assert recipe.techniques["distillation"]["teacher_epochs_factor"] == 1
    replay(recipe, tmp_path / "out", device="cpu", train_fraction=None,
           reuse_stages=[best.parent / "stages"])
    assert not (tmp_path / "out" / "stages").exists()  # found, not trained again
    replay(recipe, tmp_path / "alone", device="cpu", train_fraction=None)
    assert len(list((tmp_path / "alone" / "stages").iterdir())) == 1  # rebuilt there


def test_the_teachers_own_techniques_are_part_of_the_studys_definition(searched, monkeypatch):
    _, space, study = searched
    assert "distillation.stage.teacher_techniques" in study.user_attrs["space_definition"]
    monkeypatch.setattr(Distillation, "stage_settings",
                        {"teacher_techniques": {"optimizer": {}}})
    difference = definition_difference(study.user_attrs["space_definition"], space.definition())
    assert difference.startswith("distillation.stage.teacher_techniques was")


def test_a_student_trains_alike_whether_its_teacher_was_built_or_found(data, tmp_path):
    """Building the teacher in the middle of the student's setup leaves the student's random
    state as it was (dropout draws from it)."""
    recipe = _recipe({"distillation": {"teacher_epochs_factor": 1}, "dropout": {}})

    def student():
        pm = training_manager(recipe, extra_plugins=[StageDirectory(tmp_path / "stages")])
        return train(recipe, data, pm, device=CPU, max_steps=3)

    built, found = student(), student()
    assert len(list((tmp_path / "stages").iterdir())) == 1
    for (name, a), b in zip(built.model.state_dict().items(), found.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
