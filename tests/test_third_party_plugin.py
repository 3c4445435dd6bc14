"""Third-party plugins as real installed distributions, seen by the real ``automl`` command.

Each test builds a folder with plugin modules and ``*.dist-info`` metadata (exactly what
``pip install`` leaves in site-packages), puts it on ``PYTHONPATH`` and runs the installed
console script in a subprocess, so discovery goes through ``importlib.metadata`` entry points
and nothing in this process's registries is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from automl.cli import cli
from automl.discovery import ALLOW_ENV, ENTRY_POINT_GROUP, technique_catalog

SCRIPT = Path(sys.executable).parent / "automl"
AUTOML = str(SCRIPT) if SCRIPT.exists() else shutil.which("automl")
LOG_ENV = "AUTOML_TEST_PLUGIN_LOG"  # where the plugins below log their hook calls

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_GUIDE = (ROOT / "docs" / "plugins.md").read_text()


def _guide_block(language: str, first_line: str) -> str:
    """The code block of docs/plugins.md in ``language`` whose first line is ``first_line``."""
    for block in re.findall(rf"^```{language}\n(.*?)^```$", PLUGIN_GUIDE, re.S | re.M):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"docs/plugins.md has no {language} block starting {first_line!r}")


# The plugin guide's own example, as the guide prints it: the technique and its pyproject.toml.
GUIDE_TECHNIQUE = _guide_block("python", "# my_technique.py")
GUIDE_PYPROJECT = tomllib.loads(_guide_block("toml", "[build-system]"))

# Appended to the guide's module here: each epoch logs the batches its hook saw and its
# parameter, so the test can see that the hook ran inside each trial, with that trial's values.
EPOCH_LOG = '''

import json as _json
import os as _os

_guide_on_batch = InputNoise.on_batch


@hookimpl
def _counted_on_batch(self, state):
    _guide_on_batch(self, state)
    state.extras["input_noise_batches"] = state.extras.get("input_noise_batches", 0) + 1


@hookimpl
def _logged_on_epoch_end(self, state):
    with open(_os.environ["AUTOML_TEST_PLUGIN_LOG"], "a") as log:
        log.write(_json.dumps({"technique": self.name, "std": self.params["std"],
                               "batches": state.extras.get("input_noise_batches", 0)}) + "\\n")


InputNoise.on_batch = _counted_on_batch
InputNoise.on_epoch_end = _logged_on_epoch_end
'''

# A package-style plugin: the entry point names a module implementing register_techniques.
GRAD_NOISE = '''
import json
import os

import torch
from optuna.distributions import FloatDistribution

from automl import Technique, hookimpl


class GradNoise(Technique):
    """Gradient noise: add Gaussian noise to every gradient before the optimizer step.

    Helps: very deep or hard-to-optimise networks.
    Source: Neelakantan et al., "Adding Gradient Noise Improves Learning" (2015).
    """

    name = "grad_noise"
    space = {"scale": FloatDistribution(1e-4, 1e-2, log=True)}
    defaults = {"scale": 1e-3}

    @hookimpl
    def after_backward(self, state):
        for p in state.model.parameters():
            if p.grad is not None:
                p.grad.add_(torch.randn_like(p.grad), alpha=self.params["scale"])
        state.extras["grad_noise_steps"] = state.extras.get("grad_noise_steps", 0) + 1

    @hookimpl
    def on_epoch_end(self, state):
        with open(os.environ["AUTOML_TEST_PLUGIN_LOG"], "a") as log:
            log.write(json.dumps({"technique": self.name, "scale": self.params["scale"],
                                  "batches": state.extras.get("grad_noise_steps", 0)}) + "\\n")


@hookimpl
def register_techniques(register):
    register(GradNoise)
'''

# A plugin that adds a CLI command.
HELLO_COMMAND = '''
import click

from automl import hookimpl


@hookimpl
def register_commands(cli):
    @cli.command(name="count-techniques")
    @click.option("--prefix", default="", help="Only names starting with this.")
    def count_techniques(prefix):
        """Count the installed techniques whose name starts with PREFIX."""
        from automl.discovery import technique_catalog

        names = sorted(n for n in technique_catalog() if n.startswith(prefix))
        click.echo(f"{len(names)} technique(s): {', '.join(names)}")
'''

SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: 2
techniques:
  optimizer: {}
  input_noise: {enabled: true}
  grad_noise: {enabled: true}
study: {n_trials: 2, pruner: none}
"""


# --- helpers ---------------------------------------------------------------------------------


def install(site: Path, dist: str, version: str, module: str, source: str,
            entry_points: dict[str, str]) -> None:
    """Write ``module.py`` and its ``.dist-info`` the way an installer would."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[automl]\n{lines}")
    (info / "RECORD").write_text("")


def install_guide_example(site: Path, source: str) -> None:
    """Install ``source`` as the guide's pyproject.toml packages its module: the same
    distribution name, version, module and entry points."""
    project = GUIDE_PYPROJECT["project"]
    (module,) = GUIDE_PYPROJECT["tool"]["setuptools"]["py-modules"]
    install(site, project["name"], project["version"], module, source,
            project["entry-points"]["automl"])


def environment(site: Path, log: Path | None = None) -> dict[str, str]:
    """This process's environment with ``site`` installed too: plugins installed outside the
    tests stay visible, as they would beside a real install."""
    env = dict(os.environ, PYTHONPATH=with_site(site))
    if log is not None:
        env[LOG_ENV] = str(log)
    return env


def with_site(site: Path) -> str:
    """``PYTHONPATH`` with ``site`` first."""
    return os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)


def builtins_only(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which no installed plugin loads (an empty allow-list): for checks of
    the project's own behaviour, such as what a command imports, that a plugin installed
    beside it may change."""
    return {**(os.environ if env is None else env), ALLOW_ENV: ""}


def installed_elsewhere() -> tuple[set[str], set[str]]:
    """The plugins (entry-point names) and techniques installed outside the tests, as this
    process finds them now."""
    from automl.plugins import BUILTIN_TECHNIQUES

    plugins = set(entry_points(group=ENTRY_POINT_GROUP).names)
    techniques = set(technique_catalog()) - {cls.name for cls in BUILTIN_TECHNIQUES}
    return plugins, techniques


def skip_if_taken(plugins: set[str], techniques: set[str]) -> None:
    """Skip a test whose own plugins use a name a plugin installed outside the tests already
    has: two distributions cannot register one name, and that install is not wrong."""
    outside_plugins, outside_techniques = installed_elsewhere()
    taken = sorted((plugins & outside_plugins) | (techniques & outside_techniques))
    if taken:
        pytest.skip(f"an installed plugin already uses the name(s) {', '.join(taken)}, "
                    "which this test's own plugins need")


def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    assert AUTOML, "the automl console script is not installed"
    return subprocess.Popen([AUTOML, *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return finish(start(args, cwd, env))


# --- a site with three well-behaved plugin distributions --------------------------------------


@pytest.fixture(scope="module")
def good_site(tmp_path_factory):
    """Install three plugins, then run five commands through the console script at once.

    The commands are independent (only `search` writes, into its own --out), so they run
    concurrently to keep the file fast on a small machine.
    """
    skip_if_taken({"input_noise", "extras", "hello"}, {"input_noise", "grad_noise"})
    root = tmp_path_factory.mktemp("third_party")
    site = root / "site"
    install_guide_example(site, GUIDE_TECHNIQUE + EPOCH_LOG)
    install(site, "automl-extras", "0.2", "automl_extras", GRAD_NOISE,
            {"extras": "automl_extras"})
    install(site, "automl-hello", "0.3", "automl_hello", HELLO_COMMAND,
            {"hello": "automl_hello"})
    (root / "space.yaml").write_text(SPACE)
    log = root / "hooks.jsonl"
    env = environment(site, log)
    commands = {
        "techniques": ["techniques"],
        "card": ["techniques", "input_noise"],
        "plugins": ["plugins"],
        "help": ["--help"],
        "count": ["count-techniques", "--prefix", "input_noi"],
        "search": ["search", "space.yaml", "--out", "RUN", "--device", "cpu"],
    }
    running = {key: start(args, root, env) for key, args in commands.items()}
    results = {key: finish(proc) for key, proc in running.items()}
    return root, results


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_techniques_lists_the_installed_techniques(good_site):
    _, results = good_site
    out = _ok(results["techniques"])
    assert re.search(r"^input_noise \(optional\): Input noise: add Gaussian noise", out, re.M)
    assert re.search(r"^\s+std\s+\[0\.0, 0\.2\]\s+default 0\.05$", out, re.M), out
    assert re.search(r"^grad_noise \(optional\): Gradient noise:", out, re.M)
    assert re.search(r"^\s+scale\s+\[0\.0001, 0\.01\] log\s+default 0\.001$", out, re.M), out
    assert re.search(r"^mixup \(optional\)", out, re.M)  # the built-ins are still there
    card = _ok(results["card"])
    assert "Source: Bishop" in card and "Suggested: std 0.05–0.1." in card
    assert "grad_noise" not in card


def test_plugins_lists_each_plugin_and_the_hooks_of_its_technique(good_site):
    _, results = good_site
    out = _ok(results["plugins"])
    assert re.search(r"^builtins \(", out, re.M)
    for plugin, hooks in (("input_noise", "register_techniques"),
                          ("extras", "register_techniques"),
                          ("hello", "register_commands")):
        assert re.search(rf"^{plugin} \(.*\): discovery hooks {hooks}$", out, re.M), out
    assert re.search(r"^\s+input_noise\s+on_batch, on_epoch_end$", out, re.M), out
    assert re.search(r"^\s+grad_noise\s+after_backward, on_epoch_end$", out, re.M), out
    # each technique is listed under the plugin that registered it
    groups: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith(" "):
            groups[plugin].append(line.split()[0])
        else:
            plugin = line.split()[0].rstrip(":")
            groups[plugin] = []
    assert groups["input_noise"] == ["input_noise"], out
    assert groups["extras"] == ["grad_noise"], out
    assert groups["hello"] == [] and groups["builtin_datasets"] == [], out
    assert {"optimizer", "mixup"} <= set(groups["builtins"]), out


def test_plugins_names_the_distribution_of_each_plugin(good_site):
    _, results = good_site
    out = _ok(results["plugins"])
    assert re.search(r"^input_noise \(automl-input-noise 0\.1\.0\)", out, re.M), out
    assert re.search(r"^extras \(automl-extras 0\.2\)", out, re.M), out
    assert re.search(r"^hello \(automl-hello 0\.3\)", out, re.M), out


def test_plugin_command_appears_in_help_and_runs(good_site):
    _, results = good_site
    helptext = _ok(results["help"])
    assert re.search(r"^\s+count-techniques\s+Count the installed techniques", helptext, re.M)
    for builtin in ("search", "train", "plugins"):
        assert re.search(rf"^\s+{builtin}\s", helptext, re.M)
    assert _ok(results["count"]).strip() == "1 technique(s): input_noise"


def test_search_uses_both_third_party_techniques_in_every_trial(good_site):
    root, results = good_site
    out = _ok(results["search"])
    assert len(re.findall(r"^trial\s+\d+\s+done\s", out, re.M)) == 2
    best = yaml.safe_load((root / "RUN" / "best_recipe.yaml").read_text())
    assert best["techniques"]["input_noise"]["enabled"] is True
    assert 0.0 <= best["techniques"]["input_noise"]["std"] <= 0.2

    runner = CliRunner()
    recipes = []
    for number in (0, 1):
        result = runner.invoke(cli, ["export", "--out", str(root / "RUN"), "--study-name",
                                     "space", "--trial", str(number)])
        assert result.exit_code == 0, result.output
        recipes.append(yaml.safe_load(result.stdout))
    assert best in recipes
    for recipe in recipes:
        # lr_schedule: a required technique, there with its defaults though the space omits it
        assert set(recipe["techniques"]) == {"optimizer", "lr_schedule", "input_noise",
                                             "grad_noise"}
        assert 0.0 <= recipe["techniques"]["input_noise"]["std"] <= 0.2
        assert 1e-4 <= recipe["techniques"]["grad_noise"]["scale"] <= 1e-2
    assert recipes[0]["techniques"]["input_noise"]["std"] == 0.05  # the baseline: defaults
    assert recipes[0]["techniques"]["grad_noise"]["scale"] == 1e-3

    # each technique's hooks ran inside training, every epoch, with its trial's parameters
    log = [json.loads(line) for line in (root / "hooks.jsonl").read_text().splitlines()]
    for name, param in (("input_noise", "std"), ("grad_noise", "scale")):
        entries = [e for e in log if e["technique"] == name]
        assert len(entries) == 2 * 2  # two trials of two epochs
        assert [e[param] for e in entries[::2]] == \
            [r["techniques"][name][param] for r in recipes]
        assert all(e["batches"] > 0 for e in entries)


# --- broken plugins ---------------------------------------------------------------------------


def test_misspelled_hook_stops_search_before_anything_is_written(tmp_path):
    skip_if_taken({"input_noise"}, {"input_noise"})
    site = tmp_path / "site"
    misspelled = GUIDE_TECHNIQUE.replace("def on_batch(", "def on_btach(")
    assert "on_btach" in misspelled
    install_guide_example(site, misspelled)
    (tmp_path / "space.yaml").write_text(SPACE.replace("  grad_noise: {enabled: true}\n", ""))
    result = run(["search", "space.yaml", "--out", "RUN"], tmp_path,
                 environment(site, tmp_path / "hooks.jsonl"))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("Error: ")
    assert "input_noise" in lines[0] and "on_btach" in lines[0]
    assert not (tmp_path / "RUN").exists() and not (tmp_path / "runs").exists()
    assert not (tmp_path / "hooks.jsonl").exists()
