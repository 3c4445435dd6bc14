"""`automl predict` and `automl evaluate` on a model `automl train` kept, and `automl train`'s
refusal to overwrite an earlier run.

One real training run (``automl_resnet8``, digits, two epochs, CPU) writes the model; the
digits test images are written as PNG files, one folder per class, as a user's labelled
folder would be. `automl predict` runs in a fresh process that has never trained.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image
from test_third_party_plugin import builtins_only

from automl.cli import cli
from automl.data import load_data
from automl.model_file import load_model

DATA = {"dataset": "digits", "batch_size": 64}
RECIPE = {"model": "automl_resnet8", "data": DATA, "epochs": 2, "seed": 0,
          "techniques": {"optimizer": {"name": "sgd", "lr": 0.1}}}


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The folder of `automl train r.yaml --out T` (two epochs)."""
    root = tmp_path_factory.mktemp("kept")
    (root / "r.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    result = invoke("train", str(root / "r.yaml"), "--out", str(root / "T"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    return root / "T"


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> Path:
    """Every digits test image as ``pngs/<class>/<index>.png`` (8-bit grayscale, 16×16)."""
    root = tmp_path_factory.mktemp("pngs")
    test = load_data(DATA).test
    for i, (image, label) in enumerate(zip(test.images, test.labels.tolist(), strict=True)):
        (root / str(label)).mkdir(exist_ok=True)
        Image.fromarray(image[0].numpy(), "L").save(root / str(label) / f"{i:04d}.png")
    return root


@torch.no_grad()
def _by_hand(run: Path, files: list[Path]) -> list[str]:
    """Predicted class names, through load_model, of the files opened with PIL here."""
    model, preprocess, info = load_model(run)
    images = [Image.open(f) for f in files]
    return [info.class_names[i] for i in model(preprocess(images)).argmax(1).tolist()]


# --- predict -------------------------------------------------------------------------------


def test_predict_works_in_a_fresh_process_that_never_imported_training_code(run, pngs, tmp_path):
    folder = pngs / "3"
    out = tmp_path / "p.json"
    script = ("import sys\nfrom automl.cli import cli\n"
              f"cli(['predict', {str(run)!r}, {str(folder)!r}, '-o', {str(out)!r}, '--top', '2'],"
              " standalone_mode=False)\n"
              "print(sorted(m for m in sys.modules if m in ('automl.trainer', 'automl.replay',"
              " 'automl.search', 'optuna')))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=builtins_only())  # installed plugins: theirs
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"  # no training module was needed
    rows = json.loads(out.read_text())
    files = sorted(folder.glob("*.png"))
    assert [r["path"] for r in rows] == [str(f) for f in files]
    assert [r["predicted"] for r in rows] == _by_hand(run, files)
    for row in rows:
        assert len(row["top"]) == 2 and row["top"][0]["class"] == row["predicted"]
        assert row["probability"] == row["top"][0]["probability"] >= row["top"][1]["probability"]


def test_predict_prints_one_line_per_image_and_writes_csv(run, pngs, tmp_path):
    files = sorted((pngs / "7").glob("*.png"))[:3]
    result = invoke("predict", str(run / "model.pt"), *map(str, files), "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines] == [
        [str(f), name] for f, name in zip(files, _by_hand(run, files), strict=True)]

    result = invoke("predict", str(run), *map(str, files), "-o", str(tmp_path / "p.csv"))
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == ("path,predicted,probability,class_1,probability_1,class_2,probability_2,"
                       "class_3,probability_3")
    assert [row.split(",")[1] for row in rows[1:]] == _by_hand(run, files)


def test_predict_converts_an_rgb_image_of_another_size(run, pngs, tmp_path):
    source = sorted((pngs / "0").glob("*.png"))[0]
    big = Image.open(source).convert("RGB").resize((48, 48), Image.Resampling.BILINEAR)
    big.save(tmp_path / "big.png")
    result = invoke("predict", str(run), str(tmp_path / "big.png"))
    assert result.exit_code == 0, result.output
    assert result.output.split()[1] == _by_hand(run, [tmp_path / "big.png"])[0]


@pytest.mark.parametrize(("args", "message"), [
    (["nothing-here"], "nothing-here: no such file or folder"),
    (["PNGS", "-o", "p.txt"], "write a .csv or .json file"),
])
def test_predict_mistakes_are_one_line(run, pngs, args, message):
    result = invoke("predict", str(run), *[str(pngs) if a == "PNGS" else a for a in args])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_predict_refuses_a_file_that_is_not_a_model(tmp_path, pngs):
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "bare.pt")
    result = invoke("predict", str(tmp_path / "bare.pt"), str(pngs / "1"))
    assert result.exit_code == 2 and "not a model file of `automl train`" in result.output


# --- evaluate ------------------------------------------------------------------------------


def test_evaluate_a_labelled_folder_agrees_with_a_count_by_hand(run, pngs, tmp_path):
    result = invoke("evaluate", str(run), "--data", str(pngs), "-o", str(tmp_path / "e.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e.json").read_text())
    files = sorted(pngs.rglob("*.png"))
    truth = [f.parent.name for f in files]
    guessed = _by_hand(run, files)
    hits = sum(t == g for t, g in zip(truth, guessed, strict=True))
    assert report["accuracy"] == pytest.approx(hits / len(files))
    assert f"accuracy {hits / len(files):.4f}" in result.output.splitlines()[0]
    for name in report["classes"]:
        said = [t for t, g in zip(truth, guessed, strict=True) if g == name]
        assert report["recall"][name] == pytest.approx(
            sum(g == name for t, g in zip(truth, guessed, strict=True) if t == name)
            / truth.count(name))
        assert report["precision"][name] == (pytest.approx(said.count(name) / len(said))
                                             if said else None)
    # the PNGs are the test split: the same numbers the training run recorded
    recorded = json.loads((run / "metrics.json").read_text())
    assert report["confusion"] == recorded["per_class"]["test"]["confusion"]
    assert "true/predicted" in result.output


def test_evaluate_a_dataset_split_gives_the_recorded_test_results(run):
    result = invoke("evaluate", str(run), "--data", "digits")
    assert result.exit_code == 0, result.output
    acc = json.loads((run / "metrics.json").read_text())["metrics"]["test/acc1"]
    assert result.output.startswith(f"dataset digits, test split: 359 images  accuracy {acc:.4f}")


def test_evaluate_refuses_folders_of_unknown_classes(run, tmp_path, pngs):
    (tmp_path / "cat").mkdir()
    Image.open(sorted((pngs / "1").glob("*.png"))[0]).save(tmp_path / "cat" / "a.png")
    result = invoke("evaluate", str(run), "--data", str(tmp_path))
    assert result.exit_code == 2
    assert "class folders cat are not classes of the model" in result.output
    result = invoke("evaluate", str(run), "--data", "no-such-thing")
    assert result.exit_code == 2 and "not a folder, nor a dataset" in result.output


# --- a run folder is never silently overwritten ---------------------------------------------


def test_train_refuses_a_folder_with_an_earlier_run_before_training(run):
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    result = invoke("train", str(run.parent / "r.yaml"), "--out", str(run), "--device", "cpu")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: {run} already holds a training run (model.pt, metrics.json, recipe.yaml); "
        "pass another --out, or --overwrite to replace it"]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_overwrite_replaces_the_earlier_run(tmp_path):
    recipe = {**RECIPE, "epochs": 1}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    (tmp_path / "T").mkdir()
    (tmp_path / "T" / "metrics.json").write_text("{}")
    args = ["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "T"), "--device", "cpu"]
    assert invoke(*args).exit_code == 2
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "T" / "metrics.json").read_text())["test_evaluations"] == 1


def test_a_model_trained_on_an_image_folder_evaluates_its_files_as_training_read_them(tmp_path):
    """RGB PNGs of 24 px, trained at image_size 16: the preprocessing converts the files as the
    folder dataset did, so evaluating test/ gives the run's recorded confusion matrix."""
    digits = load_data(DATA)
    for part, split, per_class in (("train", digits.train, 100), ("test", digits.test, 12)):
        for label in range(3):
            folder = tmp_path / "images" / part / f"digit{label}"
            folder.mkdir(parents=True)
            for i, index in enumerate((split.labels == label).nonzero()[:per_class, 0].tolist()):
                gray = Image.fromarray(split.images[index, 0].numpy(), "L")
                gray.convert("RGB").resize((24, 24), Image.Resampling.BILINEAR).save(
                    folder / f"{i}.png")
    recipe = {**RECIPE, "epochs": 3, "data": {"dataset": "folder", "path": str(tmp_path /
              "images"), "image_size": 16, "batch_size": 16},
              "techniques": {"optimizer": {"name": "sgd", "lr": 0.02}}}  # small batches
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = invoke("train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "T"),
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", str(tmp_path / "T"), "--data", str(tmp_path / "images" / "test"),
                    "-o", str(tmp_path / "e.json"))
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "T" / "metrics.json").read_text())["per_class"]["test"]
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["classes"] == recorded["classes"] == ["digit0", "digit1", "digit2"]
    assert report["confusion"] == recorded["confusion"]
    assert sum(row[i] for i, row in enumerate(report["confusion"])) > 24  # learnt something

    _, preprocess, _ = load_model(tmp_path / "T")  # file by file, as the folder reader read them
    read = load_data({**recipe["data"]}).test.images
    files = [f for name in report["classes"]
             for f in sorted((tmp_path / "images" / "test" / name).iterdir())]
    assert torch.equal(torch.cat([preprocess.to_uint8(Image.open(f)) for f in files]), read)
