"""Checkpoints: weights from `automl train` load into a fresh model through transfer_learning,
and a file carrying a pickle payload is refused without the payload running.

Real files only: a one-epoch `automl train` replay of ``automl_resnet8`` on the embedded digits
dataset writes the checkpoint the other tests load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from automl.plugins.transfer_learning import kept_init
from click.testing import CliRunner

import automl.models  # noqa: F401  (registers automl_resnet8 in timm)
from automl.checkpoints import load_matching, load_weights
from automl.cli import cli
from automl.data import load_data
from automl.discovery import training_manager
from automl.errors import ConfigError, UserError
from automl.hookspecs import hookimpl
from automl.recipe import Recipe
from automl.replay import replay
from automl.space import load_recipe
from automl.trainer import fit, prepare

CPU = torch.device("cpu")
DATA = {"dataset": "digits", "batch_size": 128}


def _recipe(techniques: dict, epochs: int = 1, seed: int = 0) -> Recipe:
    return Recipe(model="automl_resnet8", data=dict(DATA), epochs=epochs, seed=seed,
                  techniques={"optimizer": {}, **techniques})


def _prepared(techniques: dict, *, epochs: int = 1, seed: int = 1):
    recipe = _recipe(techniques, epochs, seed)
    pm = training_manager(recipe)
    return prepare(recipe, load_data(recipe.data), pm, CPU), pm


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """``model.pt`` from `automl train`'s own code path: one epoch, then the saved weights."""
    out = tmp_path_factory.mktemp("trained")
    replay(_recipe({}), out, device="cpu")
    return out / "model.pt"


class Payload:
    """Unpickling this writes ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


# --- loading trained weights ------------------------------------------------------------------


def test_transfer_learning_starts_from_the_trained_weights(trained):
    saved = load_weights(trained)
    state, _ = _prepared({"transfer_learning": {"checkpoint": str(trained)}})
    loaded = state.model.state_dict()
    assert set(saved) == set(loaded)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name
    assert state.extras["transfer_learning"].loaded == list(loaded)

    fresh, _ = _prepared({})
    assert not torch.equal(fresh.model.state_dict()["head.weight"], saved["head.weight"])


def test_a_classifier_for_other_classes_keeps_its_init_and_is_named(tmp_path):
    other = timm.create_model("automl_resnet8", num_classes=5, in_chans=1)
    torch.save(other.state_dict(), tmp_path / "five_classes.pt")
    state, _ = _prepared({"transfer_learning": {"checkpoint": str(tmp_path / "five_classes.pt")}})
    fresh, _ = _prepared({})  # same seed, no checkpoint: the init the head must keep

    report = state.extras["transfer_learning"]
    assert report.mismatched == {"head.weight": ((10, 64), (5, 64)), "head.bias": ((10,), (5,))}
    assert report.missing == [] and report.unused == []
    model = state.model.state_dict()
    for name, tensor in other.state_dict().items():
        expected = fresh.model.state_dict()[name] if name.startswith("head.") else tensor
        assert torch.equal(model[name], expected), name
    assert kept_init(report) == ("head.weight (10, 64) vs (5, 64) in the file, "
                                 "head.bias (10,) vs (5,) in the file")


def test_load_matching_reports_what_the_file_lacks_and_what_it_adds():
    model = timm.create_model("automl_resnet8", num_classes=10, in_chans=1)
    weights = {k: v.clone() for k, v in model.state_dict().items() if k != "stem.0.weight"}
    weights["extra.weight"] = torch.zeros(3)
    report = load_matching(model, weights)
    assert report.missing == ["stem.0.weight"]
    assert report.unused == ["extra.weight"]
    assert len(report.loaded) == len(model.state_dict()) - 1


def test_a_checkpoint_that_matches_nothing_is_an_error(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"other\.pt: no tensor matches model automl_resnet8"):
        _prepared({"transfer_learning": {"checkpoint": str(tmp_path / "other.pt")}})


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_weights_nested_under_a_common_key_are_found(trained, tmp_path, wrapper):
    saved = load_weights(trained)
    torch.save({wrapper: saved, "epoch": torch.tensor(3)}, tmp_path / "wrapped.pt")
    loaded = load_weights(tmp_path / "wrapped.pt")
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


class EpochSnapshots:
    """A real plugin keeping the parameters as each epoch ends."""

    def __init__(self):
        self.after_epoch: list[dict[str, torch.Tensor]] = []

    @hookimpl
    def on_epoch_end(self, state):
        self.after_epoch.append({k: v.detach().clone()
                                 for k, v in state.model.named_parameters()})


def test_freeze_epochs_train_only_the_classifier_first(trained):
    saved = load_weights(trained)
    recipe = _recipe({"transfer_learning": {"checkpoint": str(trained), "freeze_epochs": 1}},
                     epochs=2)
    snapshots = EpochSnapshots()
    pm = training_manager(recipe, extra_plugins=[snapshots])
    state = prepare(recipe, load_data(recipe.data), pm, CPU)
    fit(state, pm)

    first, second = snapshots.after_epoch
    backbone = [k for k in first if not k.startswith("head.")]
    assert all(torch.equal(first[k], saved[k]) for k in backbone)
    assert not torch.equal(first["head.weight"], saved["head.weight"])
    assert all(not torch.equal(second[k], first[k]) for k in backbone)


def test_an_empty_checkpoint_fails_the_training_with_a_clear_error():
    with pytest.raises(UserError, match="no checkpoint given; set "
                                        "techniques.transfer_learning.checkpoint"):
        _prepared({"transfer_learning": {"checkpoint": ""}})


# --- the checkpoint in a space or recipe file -------------------------------------------------


RECIPE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: 1
techniques:
  optimizer: {enabled: true, name: sgd, lr: 0.05}
  transfer_learning: {enabled: true, checkpoint: %s, freeze_epochs: 0}
"""


def _write_recipe(folder: Path, checkpoint: str) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(RECIPE % checkpoint)
    return path


def test_a_recipe_fixes_the_checkpoint_path(trained, tmp_path):
    from automl.discovery import technique_catalog

    recipe = load_recipe(_write_recipe(tmp_path, str(trained)), technique_catalog())
    assert recipe.techniques["transfer_learning"] == {"checkpoint": str(trained),
                                                      "freeze_epochs": 0}


def test_a_missing_checkpoint_is_named_at_its_line(tmp_path):
    from automl.discovery import technique_catalog

    path = _write_recipe(tmp_path, "nowhere/model.pt")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path, technique_catalog())
    assert str(caught.value) == (f"{path}:6: techniques.transfer_learning.checkpoint: "
                                 "nowhere/model.pt: no such file")


# --- files that are not plain weights ---------------------------------------------------------


def test_a_pickle_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"head.weight": torch.zeros(2), "extra": Payload(marker)}, evil)

    with pytest.raises(ConfigError) as caught:
        load_weights(evil)
    message = str(caught.value)
    assert message.startswith(f"{evil}: not a plain weights file (weights_only refused it: ")
    assert "exec" in message and "\n" not in message
    assert not marker.exists()

    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_automl_train_refuses_a_payload_checkpoint_in_one_line(tmp_path):
    marker = tmp_path / "payload_ran"
    torch.save({"head.weight": torch.zeros(2), "extra": Payload(marker)}, tmp_path / "evil.pt")
    recipe = _write_recipe(tmp_path, str(tmp_path / "evil.pt"))

    result = CliRunner().invoke(cli, ["train", str(recipe), "--out", str(tmp_path / "out"),
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "evil.pt: not a plain weights file (weights_only refused it:" in lines[0]
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("make", "problem"), [
    (lambda path: None, "no such file"),
    (lambda path: path.mkdir(), "is a folder, not a weights file"),
    (lambda path: path.write_text("hello"), "not a PyTorch weights file ("),
    (lambda path: path.write_bytes(b""), "not a PyTorch weights file (EOFError"),
    (lambda path: torch.save(torch.zeros(3), path), "holds a Tensor, not a dict of tensors"),
    (lambda path: torch.save({"lr": 0.1}, path), "not a dict of tensors: 'lr' holds a float"),
    (lambda path: torch.save({}, path), "holds no tensors"),
], ids=["missing", "folder", "text", "empty", "tensor", "no-tensors", "empty-dict"])
def test_a_file_that_is_not_weights_is_named_in_one_line(tmp_path, make, problem):
    path = tmp_path / "weights.pt"
    make(path)
    with pytest.raises(ConfigError) as caught:
        load_weights(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {problem}"), message
    assert "\n" not in message


def test_the_checkpoint_must_be_a_path_and_freeze_epochs_not_negative():
    from automl.discovery import technique_catalog

    cls = technique_catalog()["transfer_learning"]
    assert cls.check_value("checkpoint", "") == "expected the path of a weights file, got ''"
    assert cls.check_value("checkpoint", 3) == "expected the path of a weights file, got 3"
    assert cls.check_value("freeze_epochs", -1) == "-1 is outside the valid range [0, None]"


def test_a_space_must_name_the_checkpoint_unless_transfer_learning_is_off(tmp_path):
    from automl.discovery import technique_catalog
    from automl.errors import ConfigError
    from automl.space import load_space

    path = tmp_path / "space.yaml"
    text = ("model: automl_resnet8\ndata: {dataset: digits}\nepochs: 1\ntechniques:\n"
            "  optimizer: {}\n  transfer_learning: %s\n")
    path.write_text(text % "{}")
    with pytest.raises(ConfigError, match=r"space.yaml:6: techniques.transfer_learning."
                                          r"checkpoint: must be set here"):
        load_space(path, technique_catalog())
    path.write_text(text % "false")
    assert load_space(path, technique_catalog()).techniques["transfer_learning"].enabled is False
