"""The project's own tests pass with a third-party technique plugin installed beside it.

Tests that assumed only the built-ins exist (the README's table, what a command imports, the
installed plugins a listing names) once failed when a user had installed a plugin. This runs a
representative few of them in a fresh pytest process that has one installed through the
``automl`` entry-point group: the plugin guide's example under its own name, importing torch at
module level as many plugins do. The parametrised ids of that technique exist only when
discovery finds it, so the run also proves the plugin was loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_third_party_plugin import GUIDE_TECHNIQUE, environment, install

ROOT = Path(__file__).resolve().parent.parent
NAME = "outside_noise"

TESTS = [
    "tests/test_docs.py::test_readme_technique_table_is_generated_from_the_catalog",
    "tests/test_startup.py::test_command_imports_neither_torch_nor_timm"
    "[techniques-label_smoothing (optional)]",
    "tests/test_dataset_plugin.py::"
    "test_listing_and_checking_datasets_imports_neither_torch_nor_numpy",
    "tests/test_plugin_filter.py::test_disabled_plugins_are_never_imported",
    "tests/test_plugin_filter.py::test_an_empty_allow_list_loads_only_the_builtins",
    "tests/test_cli.py::test_techniques_lists_every_technique_with_its_parameters",
    f"tests/test_techniques.py::test_technique_trains_two_steps[{NAME}-high]",
    f"tests/test_techniques.py::test_technique_round_trips_through_a_recipe[{NAME}-low]",
]


def test_the_suite_passes_with_a_technique_plugin_installed(tmp_path):
    source = GUIDE_TECHNIQUE.replace('name = "input_noise"', f'name = "{NAME}"')
    assert f'name = "{NAME}"' in source and "\nimport torch\n" in source
    install(tmp_path / "site", "automl-outside-noise", "0.1", NAME, source,
            {NAME: f"{NAME}:InputNoise"})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=ROOT,
        env=environment(tmp_path / "site"), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert f"{len(TESTS)} passed" in result.stdout, result.stdout[-2000:]
