"""The docs tell the truth: every hook documented, the README's commands are the ones CI runs."""

import dataclasses
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from automl.plugins import BUILTIN_TECHNIQUES

from automl import hookspecs
from automl.discovery import hook_names, training_manager
from automl.recipe import Recipe
from automl.state import TrainState
from automl.technique import markdown_table
from automl.trainer import train

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DOC = (ROOT / "docs" / "plugins.md").read_text()
README = (ROOT / "README.md").read_text()
ALL_HOOKS = hook_names(hookspecs.DiscoverySpecs) + hook_names(hookspecs.TrainingSpecs)
# `#### name(arg, arg) -> result  (first result wins)`: one hook's section in docs/plugins.md
HOOK_HEADING = re.compile(r"^#### (\w+)\(([^)]*)\)(.*)$", re.M)
SCRIPT = Path(sys.executable).parent / "automl"
AUTOML = str(SCRIPT) if SCRIPT.exists() else shutil.which("automl")


def _spec(hook: str):
    return getattr(hookspecs.DiscoverySpecs, hook, None) or getattr(hookspecs.TrainingSpecs, hook)


@pytest.mark.parametrize("hook", ALL_HOOKS)
def test_every_hookspec_has_a_docstring_and_a_doc_section(hook):
    spec = getattr(hookspecs.DiscoverySpecs, hook, None) or getattr(hookspecs.TrainingSpecs, hook)
    assert (spec.__doc__ or "").strip(), f"hookspec {hook} has no docstring"
    assert re.search(rf"^#### {hook}\(", PLUGIN_DOC, re.M), f"docs/plugins.md lacks {hook}"


def test_doc_sections_name_only_real_hooks_in_the_order_of_the_specs():
    documented = [name for name, _, _ in HOOK_HEADING.findall(PLUGIN_DOC)]
    assert documented == ALL_HOOKS


@pytest.mark.parametrize(("hook", "arguments", "rest"), HOOK_HEADING.findall(PLUGIN_DOC))
def test_each_documented_signature_is_the_hookspec_signature(hook, arguments, rest):
    spec = _spec(hook)
    assert [a.strip() for a in arguments.split(",") if a.strip()] == \
        [p for p in inspect.signature(spec).parameters if p != "self"]
    firstresult = getattr(spec, f"{hookspecs.PROJECT}_spec")["firstresult"]
    assert ("(first result wins)" in rest) == firstresult, rest


def test_the_specs_list_the_training_hooks_in_the_order_the_trainer_calls_them(data):
    """Each hook's first call during one real training (one step, one validation)."""
    calls = []

    def recording(name):
        @hookspecs.hookimpl
        def hook(self, state):
            calls.append(name)
        return hook

    hooks = hook_names(hookspecs.TrainingSpecs)
    recorder = type("Recorder", (), {name: recording(name) for name in hooks})()
    recipe = Recipe(model="automl_resnet8", epochs=1, techniques={"optimizer": {}},
                    data={"dataset": "digits", "batch_size": 32})
    pm = training_manager(recipe, extra_plugins=[recorder])
    train(recipe, data, pm, device=torch.device("cpu"), max_steps=1)
    assert list(dict.fromkeys(calls)) == hooks


def test_the_documented_state_fields_are_the_train_state_fields():
    intro = PLUGIN_DOC.split("## The hooks", 1)[1].split("### Discovery hooks", 1)[0]
    documented = set(re.findall(r"`(\w+)", intro))
    public = {f.name for f in dataclasses.fields(TrainState)} | \
        {name for name in vars(TrainState) if not name.startswith("_")}
    assert sorted(public - documented) == [], "docs/plugins.md's state list lacks these"


def test_readme_technique_table_is_generated_from_the_catalog():
    table = re.search(r"<!-- techniques-table -->\n(.*?)\n<!-- /techniques-table -->", README,
                      re.S).group(1)
    builtins = {cls.name: cls for cls in BUILTIN_TECHNIQUES}  # not the plugins installed here
    assert table == markdown_table(builtins), \
        "README's table is stale: paste the output of `automl --plugins '' techniques --markdown`"


@pytest.mark.parametrize("cls", BUILTIN_TECHNIQUES, ids=lambda cls: cls.name)
def test_builtin_method_cards_say_when_it_helps_the_range_and_the_source(cls):
    for label in ("Helps", "Suggested", "Source"):
        assert cls.card_section(label), f"{cls.name}: method card lacks '{label}:'"


def test_ci_runs_the_readme_test_command():
    command = re.search(r"<!-- test-command -->\n```bash\n(.+)\n```", README).group(1)
    assert "pytest" in command and "pip install" in command
    extracted = subprocess.run(
        ["awk", "/<!-- test-command -->/{getline; getline; print; exit}", "README.md"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert extracted == command
    assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text()


def test_readme_search_command_runs_the_default_search(tmp_path):
    """The README's search command, its install steps left out and the budget cut to two
    trials: the default space searches and leaves its best recipe."""
    command = re.search(r"<!-- search-command -->\n```bash\n(.+)\n```", README).group(1)
    *install, search = [part.strip() for part in command.split("&&")]
    assert any("pip install" in part for part in install)
    program, *arguments = search.split()
    assert program == ".venv/bin/automl" and arguments[0] == "search", search
    assert AUTOML, "the automl console script is not installed"
    proc = subprocess.run([AUTOML, *arguments, "--n-trials", "2", "--out", "RUN"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "study 'default'" in proc.stdout + proc.stderr
    assert len(re.findall(r"^trial\s+\d+\s+(?:done|pruned)\s", proc.stdout, re.M)) == 2
    best = yaml.safe_load((tmp_path / "RUN" / "best_recipe.yaml").read_text())
    assert best["model"] == "automl_resnet8" and best["data"]["dataset"] == "digits"


def test_readme_counts_the_lines_of_the_guides_pyproject():
    block = re.search(r"^```toml\n(.*?)^```$", PLUGIN_DOC, re.S | re.M).group(1)
    count = re.search(r"packaging in a (\d+)-line\s+`pyproject.toml`", README)
    assert count and int(count.group(1)) == len(block.splitlines())


def test_readme_layout_names_every_core_module():
    layout = re.search(r"^## Layout\n\n```\n(automl/.*?)^plugins/", README, re.S | re.M).group(1)
    named = set(re.findall(r"\w+", layout))
    modules = {path.stem for path in (ROOT / "automl").glob("*.py") if path.stem != "__init__"}
    packages = {path.parent.name for path in (ROOT / "automl").glob("*/__init__.py")}
    assert sorted((modules | packages) - named) == [], "README's Layout lacks these modules"
