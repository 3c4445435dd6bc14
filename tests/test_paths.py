"""Study names become folders: a name that would leave ``runs/`` or is not plain is refused in
one line by every command that takes one, before anything is created."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from automl.cli import cli
from automl.errors import UserError
from automl.paths import MAX_NAME_LENGTH, check_study_name

TINY = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: 1
techniques:
  optimizer: {}
study: {n_trials: 1, pruner: none}
"""


@pytest.mark.parametrize("name", ["default", "fashion_mnist", "run-2.1", "_x", "7",
                                  "ünïcödé", "x" * MAX_NAME_LENGTH])
def test_plain_names_are_kept(name):
    assert check_study_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../escape", "a/b", "/abs", "a\\b", ".hidden",
                                  "-rf", "tab\there", "new\nline", "bell\x07", "a b", "a:b",
                                  "x" * (MAX_NAME_LENGTH + 1)])
def test_names_that_are_not_plain_are_refused_in_one_line(name):
    with pytest.raises(UserError) as caught:
        check_study_name(name)
    message = str(caught.value)
    assert "\n" not in message and "\t" not in message
    assert message.startswith("study name '") and "is not allowed" in message
    assert f"at most {MAX_NAME_LENGTH} letters, digits, '_', '-' and '.'" in message


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder with one space file, inside a parent that must stay untouched too."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.yaml").write_text(TINY)
    (work / "bad name.yaml").write_text(TINY)
    monkeypatch.chdir(work)
    return tmp_path


@pytest.mark.parametrize("args", [
    ["search", "tiny.yaml", "--study-name", "../escape", "--device", "cpu"],
    ["search", "tiny.yaml", "--study-name", "a/b", "--device", "cpu"],
    ["search", "bad name.yaml", "--device", "cpu"],  # the default name: the file's stem
    ["show", "--study-name", "../escape"],
    ["show", "--study-name", "a/b"],
    ["export", "--study-name", "../escape"],
    ["export", "--study-name", "a/b", "-o", "recipe.yaml"],
], ids=["search-up", "search-slash", "search-stem", "show-up", "show-slash", "export-up",
        "export-slash"])
def test_cli_refuses_the_name_and_creates_nothing(workdir, args):
    before = _tree(workdir)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: study name '"), result.output
    name = args[args.index("--study-name") + 1] if "--study-name" in args else "bad name"
    assert f"'{name}' is not allowed" in lines[0]
    assert _tree(workdir) == before
