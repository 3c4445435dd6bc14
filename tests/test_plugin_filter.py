"""Allow- and block-lists of third-party plugins: AUTOML_PLUGINS, AUTOML_DISABLE_PLUGINS and the
``automl --plugins`` / ``--disable-plugins`` options that set them.

Plugins are real distributions (module plus ``.dist-info``, as an installer leaves them, see
tests/test_third_party_plugin.py). One of them raises on import, so a plugin that is left out
but still imported fails the test. Discovery is checked in this process (the folder on
``sys.path``, discovery's caches cleared around each test); the command-line options through
the console script in subprocesses, since they set the environment of the whole process.
"""

from __future__ import annotations

import os
import re
import sys
from importlib.metadata import entry_points

import pytest
from test_third_party_plugin import (
    GRAD_NOISE,
    GUIDE_TECHNIQUE,
    HELLO_COMMAND,
    finish,
    install,
    skip_if_taken,
    start,
    with_site,
)

from automl.discovery import (
    ALLOW_ENV,
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    discovery_manager,
    skipped_plugins,
    technique_catalog,
)
from automl.errors import UserError

BROKEN = 'raise RuntimeError("automl_broken was imported")\n'

# A plugin command that reports what a child process of the command sees in its environment.
CHILD_ENV = '''
import subprocess
import sys

import click

from automl import hookimpl


@hookimpl
def register_commands(cli):
    @cli.command(name="child-env")
    def child_env():
        """Print the plugin lists a child process inherits."""
        code = ("import os; print(os.environ.get('AUTOML_PLUGINS'), "
                "os.environ.get('AUTOML_DISABLE_PLUGINS'))")
        click.echo(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                  text=True, check=True).stdout.strip())
'''

MODULES = ("filter_noise", "filter_extras", "filter_hello", "filter_child_env", "automl_broken")
OWN_PLUGINS = {"broken", "child_env", "extras", "hello", "input_noise"}
OWN_TECHNIQUES = {"input_noise", "grad_noise"}
# Plugins installed outside the tests load too, as beside any install.
OUTSIDE = sorted(entry_points(group=ENTRY_POINT_GROUP).names)
INSTALLED = ", ".join(sorted(OWN_PLUGINS | set(OUTSIDE)))


def install_plugins(site):
    install(site, "filter-noise", "0.1", "filter_noise", GUIDE_TECHNIQUE,
            {"input_noise": "filter_noise:InputNoise"})
    install(site, "filter-extras", "0.2", "filter_extras", GRAD_NOISE,
            {"extras": "filter_extras"})
    install(site, "filter-hello", "0.3", "filter_hello", HELLO_COMMAND,
            {"hello": "filter_hello"})
    install(site, "filter-child-env", "0.4", "filter_child_env", CHILD_ENV,
            {"child_env": "filter_child_env"})
    install(site, "automl-broken", "0.5", "automl_broken", BROKEN, {"broken": "automl_broken"})


def _forget_discovery():
    discovery_manager.cache_clear()
    technique_catalog.cache_clear()
    for module in MODULES:
        sys.modules.pop(module, None)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """The plugins installed on this process's ``sys.path``, no list set, discovery fresh."""
    skip_if_taken(OWN_PLUGINS, OWN_TECHNIQUES)
    install_plugins(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    _forget_discovery()
    yield tmp_path / "site"
    _forget_discovery()


def _loaded() -> list[str]:
    return sorted(name for name, _ in discovery_manager().list_name_plugin())


# --- discovery --------------------------------------------------------------------------------


def test_without_a_list_every_installed_plugin_is_imported(site):
    with pytest.raises(UserError, match=r"^plugin 'broken' \(automl_broken\) failed to load: "
                                        r"automl_broken was imported$"):
        discovery_manager()


def test_disabled_plugins_are_never_imported(site, monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, " broken, extras ")
    assert _loaded() == sorted(["builtin_datasets", "builtins", "child_env", "hello",
                                "input_noise", *OUTSIDE])
    assert "automl_broken" not in sys.modules and "filter_extras" not in sys.modules
    assert "input_noise" in technique_catalog() and "grad_noise" not in technique_catalog()
    assert skipped_plugins() == {"broken": f"in {DISABLE_ENV}", "extras": f"in {DISABLE_ENV}"}


def test_the_allow_list_loads_only_the_listed_plugins_and_the_builtins(site, monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "extras")
    assert _loaded() == ["builtin_datasets", "builtins", "extras"]
    assert "automl_broken" not in sys.modules and "filter_noise" not in sys.modules
    catalog = technique_catalog()
    assert "grad_noise" in catalog and "input_noise" not in catalog and "mixup" in catalog
    assert skipped_plugins()["input_noise"] == f"not in {ALLOW_ENV}"


def test_an_empty_allow_list_loads_only_the_builtins(site, monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "")
    assert _loaded() == ["builtin_datasets", "builtins"]
    assert set(skipped_plugins()) == set(INSTALLED.split(", "))


@pytest.mark.parametrize(("variable", "value", "unknown"), [
    (ALLOW_ENV, "input_noise,inptu_noise", "'inptu_noise'"),
    (DISABLE_ENV, "brokn,hello", "'brokn'"),
    (DISABLE_ENV, "builtins", "'builtins'"),
])
def test_a_name_that_is_not_installed_is_an_error_listing_the_installed(site, monkeypatch,
                                                                        variable, value, unknown):
    monkeypatch.setenv(variable, value)
    with pytest.raises(UserError) as caught:
        discovery_manager()
    assert str(caught.value) == (f"{variable}: no installed plugin named {unknown} (installed: "
                                 f"{INSTALLED}; built-ins always load)")
    assert "automl_broken" not in sys.modules and "filter_noise" not in sys.modules


# --- the command-line options -----------------------------------------------------------------


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """Three `automl` runs with the group options, started at once (each imports torch)."""
    skip_if_taken(OWN_PLUGINS, OWN_TECHNIQUES)
    root = tmp_path_factory.mktemp("plugin_filter")
    install_plugins(root / "site")
    env = {k: v for k, v in os.environ.items() if k not in (ALLOW_ENV, DISABLE_ENV)}
    env["PYTHONPATH"] = with_site(root / "site")
    runs = {
        "disable": ["--disable-plugins", "broken", "plugins"],
        "allow": ["--plugins", "child_env,hello", "child-env"],
        "typo": ["--disable-plugins", "brokn", "--help"],
    }
    started = {key: start(args, root, env) for key, args in runs.items()}
    return {key: finish(proc) for key, proc in started.items()}


def test_disable_plugins_option_leaves_the_plugin_out_of_the_listing(commands):
    result = commands["disable"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for plugin in ("builtins", "input_noise", "extras", "hello", "child_env"):
        assert re.search(rf"^{plugin} \(.*\): discovery hooks ", out, re.M), out
    assert not re.search(r"^broken \(", out, re.M)
    assert re.search(rf"^broken: not loaded \(in {DISABLE_ENV}\)$", out, re.M), out


def test_plugins_option_reaches_child_processes_and_loads_only_the_listed(commands):
    result = commands["allow"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "child_env,hello None"


def test_a_wrong_name_on_the_command_line_is_one_error_line(commands):
    result = commands["typo"]
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (f"Error: {DISABLE_ENV}: no installed plugin named 'brokn' "
                                     f"(installed: {INSTALLED}; built-ins always load)")
