"""Keeping a trained model: `automl train` writes a self-contained model.pt, `automl.load_model`
rebuilds it with its preprocessing, and metrics.json carries per-class results.

Real runs only: `automl train` (in-process) and `replay` train ``automl_resnet8`` on the
embedded digits dataset for one or two epochs on the CPU; every check compares against what
the training run itself recorded, or against a count by hand.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import automl
from automl.checkpoints import load_weights
from automl.cli import cli
from automl.data import load_data
from automl.discovery import training_manager
from automl.errors import UserError
from automl.model_file import FORMAT, load_model, save_model
from automl.recipe import Recipe
from automl.replay import replay
from automl.trainer import evaluate_with_confusion, fit, prepare

CPU = torch.device("cpu")
DATA = {"dataset": "digits", "batch_size": 64}
RECIPE = {"model": "automl_resnet8", "data": DATA, "epochs": 2, "seed": 0,
          "techniques": {"optimizer": {"name": "sgd", "lr": 0.1}}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """`automl train r.yaml --out T`: two epochs of the default recipe; the run folder."""
    root = tmp_path_factory.mktemp("keep")
    (root / "r.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    result = CliRunner().invoke(cli, ["train", str(root / "r.yaml"), "--out", str(root / "T"),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return root / "T"


def _record(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@torch.no_grad()
def _predict(path: Path, images: torch.Tensor) -> torch.Tensor:
    model, preprocess, _ = load_model(path)
    return model(preprocess(images)).argmax(1)


def _confusion_by_hand(labels: list[int], predicted: list[int], n: int) -> list[list[int]]:
    matrix = [[0] * n for _ in range(n)]
    for true, guess in zip(labels, predicted, strict=True):
        matrix[true][guess] += 1
    return matrix


# --- the acceptance chain: train -> load_model -> the recorded test results -----------------


def test_loaded_model_reproduces_the_recorded_test_accuracy_and_confusion(run):
    test = load_data(DATA).test
    predicted = _predict(run / "model.pt", test.images)
    record = _record(run)
    hits = int((predicted == test.labels).sum())
    assert hits / len(test.labels) == pytest.approx(record["metrics"]["test/acc1"], abs=1e-7)
    assert record["per_class"]["test"]["confusion"] == _confusion_by_hand(
        test.labels.tolist(), predicted.tolist(), 10)
    assert 0.3 < record["metrics"]["test/acc1"] < 1  # trained, and not every image right


def test_per_class_recall_and_precision_agree_with_a_count_by_hand(run):
    test = load_data(DATA).test
    labels, predicted = test.labels.tolist(), _predict(run, test.images).tolist()
    report = _record(run)["per_class"]["test"]
    assert report["classes"] == [str(d) for d in range(10)]
    for c, name in enumerate(report["classes"]):
        true_c = [p for t, p in zip(labels, predicted, strict=True) if t == c]
        said_c = [t for t, p in zip(labels, predicted, strict=True) if p == c]
        assert report["support"][name] == len(true_c)
        assert report["recall"][name] == pytest.approx(true_c.count(c) / len(true_c))
        if said_c:
            assert report["precision"][name] == pytest.approx(said_c.count(c) / len(said_c))
        else:
            assert report["precision"][name] is None
    assert report["balanced_accuracy"] == pytest.approx(
        _record(run)["metrics"]["test/balanced_acc"], abs=1e-6)
    val = _record(run)["per_class"]["val"]
    assert sum(val["support"].values()) == len(load_data(DATA).val.labels)


def test_train_prints_a_per_class_table(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**RECIPE, "epochs": 1}, sort_keys=False))
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "r.yaml"), "--out",
                                      str(tmp_path / "T"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = lines.index("class  recall  precision  support")
    report = _record(tmp_path / "T")["per_class"]["test"]
    for name, line in zip(report["classes"], lines[header + 1:header + 11], strict=True):
        assert line.split()[0] == name and int(line.split()[-1]) == report["support"][name]


# --- what the file holds -------------------------------------------------------------------


def test_model_file_is_plain_data_with_what_rebuilding_needs(run):
    record = torch.load(run / "model.pt", weights_only=True)  # no code can run on loading
    assert record["format"] == FORMAT
    assert record["architecture"] == "automl_resnet8"
    assert record["model_kwargs"] == {"num_classes": 10, "in_chans": 1}
    assert record["class_names"] == [str(d) for d in range(10)]
    assert (record["in_chans"], record["image_size"], record["eval_image_size"]) == (1, 16, None)
    data = load_data(DATA)
    assert record["mean"].tolist() == pytest.approx(data.mean)
    assert record["std"].tolist() == pytest.approx(data.std)
    assert Recipe.from_dict(record["recipe"]).techniques == {  # required ones: their defaults
        **RECIPE["techniques"],
        "lr_schedule": {"schedule": "cosine", "warmup": 0.0, "warmup_shape": "linear"}}
    assert set(record["versions"]) >= {"automl-recipes", "torch", "timm", "plugins"}
    assert record["rebuild"] == []
    assert record["metrics"]["test/acc1"] == _record(run)["metrics"]["test/acc1"]
    # transfer_learning and load_weights still read the weights out of it
    assert set(load_weights(run / "model.pt")) == set(record["state_dict"])


def test_load_model_is_a_lazy_attribute_of_automl_and_accepts_the_run_folder(run):
    model, preprocess, info = automl.load_model(run)
    assert not model.training and info.architecture == "automl_resnet8"
    assert preprocess(load_data(DATA).test.images[:3]).shape == (3, 1, 16, 16)


@pytest.mark.parametrize("write", [
    lambda path: torch.save({"head.weight": torch.zeros(2)}, path),
    lambda path: torch.save({"format": FORMAT, "format_version": 99}, path),
])
def test_other_files_are_refused_in_one_line(tmp_path, write):
    write(tmp_path / "model.pt")
    with pytest.raises(UserError) as caught:
        load_model(tmp_path / "model.pt")
    assert str(caught.value).startswith(f"{tmp_path / 'model.pt'}: ")
    assert "\n" not in str(caught.value)


def test_preprocessing_converts_other_sizes_and_channels_like_the_folder_reader(run):
    from PIL import Image

    _, preprocess, _ = load_model(run)
    image = load_data(DATA).test.images[7]
    gray = Image.fromarray(image[0].numpy(), "L")
    assert torch.equal(preprocess(gray), preprocess(image))  # a PNG of the stored image: same
    big_rgb = gray.convert("RGB").resize((40, 40), Image.Resampling.BILINEAR)
    by_hand = big_rgb.convert("L").resize((16, 16), Image.Resampling.BILINEAR)
    expected = preprocess(torch.frombuffer(bytearray(by_hand.tobytes()), dtype=torch.uint8)
                          .view(1, 16, 16))
    assert torch.equal(preprocess(big_rgb), expected)
    as_tensor = torch.from_numpy(np.array(big_rgb)).permute(2, 0, 1).contiguous()  # 3×40×40
    assert torch.equal(preprocess(as_tensor), expected)
    with pytest.raises(TypeError):
        preprocess(image.float())


# --- techniques that change the model or the evaluation inputs -------------------------------


@pytest.mark.parametrize(("techniques", "rebuild", "eval_size"), [
    ({"norm_layer": {"kind": "group", "groups": 4}, "inference_resize": {"scale": 1.25},
      "input_norm": {"stats": "pixel"}, "dropout": {"rate": 0.2},
      "stochastic_depth": {"rate": 0.1}, "weight_init": {"scheme": "orthogonal"}},
     ["norm_layer"], 20),
    ({"ghost_batch_norm": {"virtual_batch": 16}, "ema": {"decay": 0.9},
      "fixres": {"train_scale": 0.75, "calibration_batches": 2}}, ["ghost_batch_norm"], None),
], ids=["group-norm-resize-pixel-norm", "ghost-bn-ema-fixres"])
def test_model_changing_techniques_are_rebuilt_and_predict_as_evaluated(
        tmp_path, techniques, rebuild, eval_size):
    recipe = Recipe(model="automl_resnet8", data=dict(DATA), epochs=1, seed=0,
                    techniques={**RECIPE["techniques"], **techniques})
    metrics = replay(recipe, tmp_path, device="cpu")
    model, _, info = load_model(tmp_path / "model.pt")
    assert info.rebuild == rebuild and info.eval_image_size == eval_size
    if "dropout" in techniques:
        assert info.model_kwargs == {"num_classes": 10, "in_chans": 1, "drop_rate": 0.2,
                                     "drop_path_rate": 0.1}
        assert any(type(m).__name__ == "GroupNorm" for m in model.modules())
    test = load_data(DATA).test
    predicted = _predict(tmp_path / "model.pt", test.images)
    assert int((predicted == test.labels).sum()) / len(test.labels) == pytest.approx(
        metrics["test/acc1"], abs=1e-7)
    assert _record(tmp_path)["per_class"]["test"]["confusion"] == _confusion_by_hand(
        test.labels.tolist(), predicted.tolist(), 10)


class WrapHead:
    """A plugin, not a technique of the recipe: wraps the classifier in a Sequential, which
    nothing in the model file records."""

    @automl.hookimpl
    def modify_model(self, state):
        state.model.head = torch.nn.Sequential(state.model.head)


def test_a_model_the_file_cannot_rebuild_is_named_at_save_and_refused_at_load(tmp_path, caplog):
    recipe = Recipe(model="automl_resnet8", data=dict(DATA), epochs=1, seed=0,
                    techniques=dict(RECIPE["techniques"]))
    data = load_data(DATA)
    pm = training_manager(recipe, extra_plugins=[WrapHead()])
    state = prepare(recipe, data, pm, CPU)
    fit(state, pm, max_steps=1)
    metrics = evaluate_with_confusion(state, pm, data.test, "test")[0]
    with caplog.at_level(logging.WARNING, logger="automl"):
        save_model(tmp_path / "model.pt", state, pm, state.model, metrics)
    assert "automl.load_model cannot load it" in caplog.text and "'head'" in caplog.text
    with pytest.raises(UserError, match=r"module 'head' is Linear, but it was trained as "
                                        r"Sequential"):
        load_model(tmp_path / "model.pt")
