"""Commands that do not train start without torch or timm, and ``import automl`` stays cheap
while still making the project's models known to ``timm.create_model``.

Each check runs in a fresh interpreter (this test process has long imported torch) and reads
``sys.modules`` there after the command has run; times are measured by bench/startup.py, never
asserted here. Plugins installed beside the project are left out (an empty allow-list): what
they import is theirs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from test_third_party_plugin import HELLO_COMMAND, builtins_only, install, skip_if_taken, with_site

from automl.discovery import ALLOW_ENV

HEAVY = ("torch", "timm")

# Runs the CLI's main in this interpreter, then reports its output and the heavy modules loaded.
RUN_COMMAND = """
import contextlib, io, json, sys
from automl.cli import cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = cli.main(sys.argv[1:], prog_name="automl", standalone_mode=False)
loaded = [name for name in ("torch", "timm", "optuna") if name in sys.modules]
print(json.dumps({"code": code, "out": out.getvalue(), "loaded": loaded}))
"""


def python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=300,
                          env=builtins_only() if env is None else env)


def run_command(*args: str, env: dict | None = None) -> dict:
    result = python(RUN_COMMAND, *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize(("args", "shows"), [
    (["--help"], "Commands:"),
    (["--version"], "version"),
    (["techniques"], "label_smoothing (optional)"),
    (["techniques", "label_smoothing"], "Source: Szegedy"),
    (["plugins"], "builtins (automl-recipes (built-in))"),
    (["search", "--help"], "--n-trials"),
    (["train", "--help"], "RECIPE"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_command_imports_neither_torch_nor_timm(args, shows):
    result = run_command(*args)
    assert shows in result["out"]  # the command really ran
    assert not set(HEAVY) & set(result["loaded"]), result["loaded"]


def test_help_imports_no_optuna():
    """Listing commands needs no technique and so no search space."""
    for args in (["--help"], ["search", "--help"], ["--version"]):
        assert "optuna" not in run_command(*args)["loaded"], args


def test_every_command_help_imports_neither_torch_nor_timm():
    """Commands other helpers add must keep their heavy imports inside the command too."""
    listed = python("""
        from automl.cli import cli
        print(" ".join(cli.list_commands(None)))
    """)
    assert listed.returncode == 0, listed.stderr
    commands = listed.stdout.split()
    assert {"search", "train", "techniques", "plugins"} <= set(commands)
    for command in commands:
        result = run_command(command, "--help")
        assert f"Usage: automl {command}" in result["out"]
        assert not set(HEAVY) & set(result["loaded"]), (command, result["loaded"])


def test_discovering_an_installed_plugin_imports_no_torch(tmp_path):
    """Reading entry points and loading a plugin that itself needs no torch stays light."""
    skip_if_taken({"hello"}, set())
    install(tmp_path, "startup-hello", "0.1", "startup_hello", HELLO_COMMAND,
            {"hello": "startup_hello"})
    env = dict(os.environ, PYTHONPATH=with_site(tmp_path), **{ALLOW_ENV: "hello"})
    result = run_command("--help", env=env)
    assert "count-techniques" in result["out"]
    assert not set(HEAVY) & set(result["loaded"]), result["loaded"]


def test_import_automl_imports_no_torch_timm_or_optuna():
    result = python("""
        import sys
        import automl
        from automl import hookimpl
        print([m for m in ("torch", "timm", "optuna") if m in sys.modules])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_public_names_still_import():
    result = python("""
        import automl
        from automl import Recipe, Technique, hookimpl
        assert automl.Recipe is Recipe and automl.Technique is Technique
        assert {"Recipe", "Technique", "hookimpl"} <= set(dir(automl))
        try:
            automl.no_such_name
        except AttributeError as exc:
            print(exc)
    """)
    assert result.returncode == 0, result.stderr
    assert "no attribute 'no_such_name'" in result.stdout


@pytest.mark.parametrize("order", ["automl first", "timm first"])
def test_import_automl_registers_models_with_timm(order):
    """``import automl`` and ``import timm``, either way round, then timm knows our models."""
    imports = "import automl; import timm" if order == "automl first" else \
        "import timm; import automl"
    result = python(f"""
        {imports}
        import sys
        model = timm.create_model("automl_resnet8", num_classes=3)
        print(type(model).__name__, model.num_classes, "automl.models" in sys.modules)
        # timm's module keeps its own loader, and the one-shot finder is gone
        print(type(timm.__spec__.loader).__name__,
              any(getattr(f, "_automl_timm_hook", False) for f in sys.meta_path))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SmallResNet", "3", "True", "SourceFileLoader", "False"]


def test_registering_twice_installs_one_finder():
    result = python("""
        import sys
        import automl
        from automl.timm_hook import register_models_with_timm
        register_models_with_timm()
        register_models_with_timm()
        print(sum(getattr(f, "_automl_timm_hook", False) for f in sys.meta_path))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_a_timm_without_our_registry_still_imports(tmp_path):
    """If our models cannot register (here a stand-in ``timm`` package without timm's
    registry), importing timm still succeeds and a warning says why the models are missing."""
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "__init__.py").write_text("VALUE = 42\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = python("""
        import warnings
        warnings.simplefilter("always")
        import automl
        import timm
        print(timm.VALUE)
    """, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"
    assert "could not register automl_* models with timm" in result.stderr
