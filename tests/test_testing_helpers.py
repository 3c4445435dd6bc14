"""automl.testing, the checks plugin authors call: a sound technique passes each one, and each
kind of broken technique makes the check that should catch it fail, saying what is wrong.

The techniques here are defined in this file and never installed: the helpers take the class.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from test_third_party_plugin import GUIDE_TECHNIQUE, _guide_block

from automl.hookspecs import hookimpl
from automl.technique import Technique
from automl.testing import (
    check_round_trip,
    check_technique_class,
    edge_params,
    train_a_few_batches,
)


class InputNoise(Technique):
    """Input noise: add Gaussian noise to each normalised training batch.

    Helps: small datasets where the model memorises pixel-exact inputs.
    Suggested: std 0.05–0.1.
    Source: Bishop, "Training with noise is equivalent to Tikhonov regularization" (1995).
    """

    name = "input_noise_test"
    space = {"std": FloatDistribution(0.0, 0.2), "copies": IntDistribution(1, 3),
             "kind": CategoricalDistribution(["gauss", "uniform", "salt"])}
    defaults = {"std": 0.05, "copies": 1, "kind": "gauss"}
    limits = {"std": (0.0, None), "copies": (1, 8)}

    @hookimpl
    def on_batch(self, state):
        shape, std = state.images.shape, self.params["std"]
        noise = (torch.randn(shape, device=state.device, generator=state.generator)
                 if self.params["kind"] == "gauss"
                 else torch.rand(shape, device=state.device, generator=state.generator) - 0.5)
        state.images = state.images + std * noise


def _variant(base: type[Technique] = InputNoise, **attributes) -> type[Technique]:
    """A subclass of ``base`` with some class attributes (or hooks) replaced."""
    return type("Variant", (base,), {"__doc__": base.__doc__, **attributes})


# --- a sound technique passes ----------------------------------------------------------------


def test_a_sound_technique_passes_every_check():
    check_technique_class(InputNoise)
    for params in edge_params(InputNoise).values():
        check_round_trip(InputNoise, params)
    state = train_a_few_batches(InputNoise, {"std": 0.2}, steps=3)
    assert state.step == 3 and len(state.history) == 1


def test_edge_params_are_the_bounds_and_each_choice_of_a_wide_choice():
    cases = edge_params(InputNoise)
    assert cases == {
        "low": {"std": 0.0, "copies": 1, "kind": "gauss"},
        "high": {"std": 0.2, "copies": 3, "kind": "salt"},
        "kind=gauss": {"std": 0.05, "copies": 1, "kind": "gauss"},
        "kind=uniform": {"std": 0.05, "copies": 1, "kind": "uniform"},
        "kind=salt": {"std": 0.05, "copies": 1, "kind": "salt"},
    }


# A technique with a value only its user can give, as transfer_learning's checkpoint path.
class NeedsFile(Technique):
    """Needs a file: reads nothing, but only a user can name the file.

    Helps: testing.
    Suggested: never.
    Source: this test.
    """

    name = "needs_file_test"
    space = {"path": CategoricalDistribution([""]), "mode": CategoricalDistribution(["a", "b"])}
    defaults = {"path": "", "mode": "a"}

    @classmethod
    def check_value(cls, param, value):
        if param == "path":
            return None if isinstance(value, str) and value.endswith(".txt") else "not a .txt"
        return super().check_value(param, value)


def test_edge_params_need_the_values_only_a_user_can_give():
    with pytest.raises(ValueError, match=r"needs_file_test.*user_values for path"):
        edge_params(NeedsFile)
    with pytest.raises(ValueError, match="unknown parameter.*colour"):
        edge_params(NeedsFile, {"path": "a.txt", "colour": "red"})
    cases = edge_params(NeedsFile, {"path": "a.txt"})
    assert cases == {"low": {"path": "a.txt", "mode": "a"},
                     "high": {"path": "a.txt", "mode": "b"}}
    check_technique_class(NeedsFile)  # its placeholder default is not held against it
    check_round_trip(NeedsFile, {"path": "a.txt"})


def test_the_plugin_guides_test_file_passes_on_the_guides_technique(tmp_path, monkeypatch):
    """docs/plugins.md's "Testing your plugin" example, run on its own example technique."""
    (tmp_path / "my_technique.py").write_text(GUIDE_TECHNIQUE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_technique", raising=False)
    namespace: dict = {}
    exec(compile(_guide_block("python", "# test_my_technique.py"), "test_my_technique.py",
                 "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()
    sys.modules.pop("my_technique", None)


def test_the_module_imports_without_pytest():
    code = "import sys; sys.modules['pytest'] = None; import automl.testing"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- each broken technique is caught ---------------------------------------------------------


@pytest.mark.parametrize(("attributes", "needle"), [
    ({"defaults": {"std": 0.5, "copies": 1, "kind": "gauss"}}, "default 0.5 of 'std' is outside"),
    ({"__doc__": "Input noise.\n\nHelps: tests.\nSource: none."}, "lacks a 'Suggested:'"),
    ({"limits": {"kind": (0, 1)}}, "limits['kind'] names no numeric parameter"),
    ({"limits": {"std": (0.0, 0.1)}}, "leaves limits"),
    ({"limits": {"std": 0.0}}, "must be a (low, high) tuple"),
    ({"check_value": classmethod(lambda cls, p, v: "never" if p == "copies" else None)},
     "refuses default copies: never"),
    ({"max_epoch_factor": classmethod(lambda cls, params: float("inf"))}, "max_epoch_factor"),
    ({"on_btach": hookimpl(lambda self, state: None)}, "unknown hook 'on_btach'"),
    ({"on_batch": hookimpl(lambda self, state, index: None)}, "index"),
], ids=["default-outside-space", "card-section", "limits-on-a-choice", "space-leaves-limits",
        "limits-not-a-pair", "default-refused", "epoch-factor", "misspelled-hook",
        "unknown-hook-argument"])
def test_check_technique_class_catches(attributes, needle):
    with pytest.raises(AssertionError) as info:
        check_technique_class(_variant(**attributes))
    assert needle in str(info.value)


def test_a_hook_that_raises_fails_training():
    def on_batch(self, state):
        raise RuntimeError("broken hook")

    with pytest.raises(RuntimeError, match="broken hook"):
        train_a_few_batches(_variant(on_batch=hookimpl(on_batch)))


def test_a_technique_that_stops_learning_fails_training():
    def after_backward(self, state):
        state.optimizer.zero_grad(set_to_none=True)  # SGD then skips every weight

    with pytest.raises(AssertionError, match="no weight changed in 2 optimizer steps"):
        train_a_few_batches(_variant(after_backward=hookimpl(after_backward)))


def test_a_technique_that_steps_the_optimizer_itself_fails_training():
    def after_backward(self, state):
        state.optimizer.step()

    with pytest.raises(AssertionError, match="4 taken by the optimizer"):
        train_a_few_batches(_variant(after_backward=hookimpl(after_backward)))


def test_a_technique_whose_check_refuses_its_own_space_fails_the_round_trip():
    refuses_high = classmethod(lambda cls, p, v: "too big" if p == "copies" and v == 3 else None)
    broken = _variant(check_value=refuses_high)
    check_round_trip(broken, edge_params(broken)["low"])
    with pytest.raises(AssertionError, match="the space refuses.*copies.*too big"):
        check_round_trip(broken, edge_params(broken)["high"])
