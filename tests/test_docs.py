"""The docs tell the truth: every hook documented, the README's commands are the ones CI runs."""

import re
import subprocess
from pathlib import Path

import pytest
from automl.plugins import BUILTIN_TECHNIQUES

from automl import hookspecs
from automl.discovery import hook_names, technique_catalog
from automl.technique import markdown_table

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DOC = (ROOT / "docs" / "plugins.md").read_text()
README = (ROOT / "README.md").read_text()
ALL_HOOKS = hook_names(hookspecs.DiscoverySpecs) + hook_names(hookspecs.TrainingSpecs)


@pytest.mark.parametrize("hook", ALL_HOOKS)
def test_every_hookspec_has_a_docstring_and_a_doc_section(hook):
    spec = getattr(hookspecs.DiscoverySpecs, hook, None) or getattr(hookspecs.TrainingSpecs, hook)
    assert (spec.__doc__ or "").strip(), f"hookspec {hook} has no docstring"
    assert re.search(rf"^#### {hook}\(", PLUGIN_DOC, re.M), f"docs/plugins.md lacks {hook}"


def test_doc_sections_name_only_real_hooks():
    documented = re.findall(r"^#### (\w+)\(", PLUGIN_DOC, re.M)
    assert sorted(documented) == sorted(ALL_HOOKS)


def test_readme_technique_table_is_generated_from_the_catalog():
    table = re.search(r"<!-- techniques-table -->\n(.*?)\n<!-- /techniques-table -->", README,
                      re.S).group(1)
    assert table == markdown_table(technique_catalog()), \
        "README's table is stale: paste the output of `automl techniques --markdown`"


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


def test_readme_search_command_runs_the_default_search():
    command = re.search(r"<!-- search-command -->\n```bash\n(.+)\n```", README).group(1)
    assert command.endswith("automl search") and "pip install" in command
