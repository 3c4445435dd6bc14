"""Bad files through the command line: `automl search FILE` and `automl train FILE` exit 2 with
one line, ``Error: FILE:LINE: KEY: message``, no traceback, and write nothing at all.

tests/test_space.py checks most mistakes at the library level (BAD_INPUTS) and a few through
`automl search`; these are the rest, through both commands, and the bugs found writing them.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from automl.cli import cli

RECIPE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 64}
epochs: 1
techniques:
  optimizer: {name: sgd, lr: 0.05}
  lr_schedule: {schedule: cosine, warmup: 0.0, warmup_shape: linear, cycles: 3}
"""
MARKER = "MARKER"  # what the tags below would create if the loader constructed objects
HUGE = "9" * 5000  # more digits than Python parses into an int


def _in_recipe(old: str, new: str) -> str:
    assert old in RECIPE
    return RECIPE.replace(old, new, 1)


# name: (file text or bytes, line, key or None, part of the message)
CASES = {
    # malformed YAML
    "tab-indentation": ("model: automl_resnet8\ntechniques:\n\tmixup: {}\n", 3, None,
                        "invalid YAML: found character '\\t'"),
    "bad-indentation": ("techniques:\n  mixup:\n    alpha: 0.2\n   cutmix: {}\n", 4, None,
                        "invalid YAML: expected <block end>"),
    "unclosed-quote": ('model: "automl_resnet8\nepochs: 1\n', 1, None, "invalid YAML"),
    "not-utf8": (b"model: automl_resnet8\nepochs: \xff\xfe\n", 2, None, "not UTF-8 text"),
    "control-character": ("model: automl_resnet8\nepochs: 1\x00\n", 2, None, "#x0000"),
    # duplicate keys below a technique
    "duplicate-parameter": (RECIPE + "  mixup:\n    alpha: 0.2\n    alpha: 0.3\n", 9,
                            "techniques.mixup.alpha", "duplicate key"),
    # YAML 1.1 reads 1e-3 as a string; quoted, it is one: an error naming the key
    "quoted-number": (_in_recipe("lr: 0.05", 'lr: "1e-3"'), 5, "techniques.optimizer.lr",
                      "expected a number, got '1e-3'"),
    # tags that would run code
    "python-apply-value": (RECIPE + f"  mixup:\n    alpha: !!python/object/apply:os.system "
                           f'["touch {MARKER}"]\n', 8, "techniques.mixup.alpha",
                           "unsupported YAML tag"),
    "python-apply-document": (f'!!python/object/apply:os.system ["touch {MARKER}"]\n', 1, None,
                              "unsupported YAML tag"),
    "python-apply-key": (RECIPE + f'? !!python/object/apply:os.system ["touch {MARKER}"]\n'
                         ": 1\n", 7, None, "unsupported YAML tag"),
    "python-name": (RECIPE + "seed: !!python/name:os.system ''\n", 7, "seed",
                    "unsupported YAML tag"),
    # unknown names
    "unknown-parameter": (RECIPE + "  mixup: {alpah: 0.2}\n", 7, "techniques.mixup.alpah",
                          "unknown key (did you mean 'alpha'?)"),
    "unknown-top-level-key": (RECIPE + "epoch: 2\n", 7, "epoch", "did you mean 'epochs'?"),
    "unknown-model": (_in_recipe("automl_resnet8", "resnet_nope"), 1, "model",
                      "unknown model 'resnet_nope'"),
    "unknown-dataset": (_in_recipe("dataset: digits", "dataset: cifar11"), 2, "data.dataset",
                        "unknown dataset 'cifar11'"),
    # wrong types
    "list-for-number": (_in_recipe("lr: 0.05", "lr: [0.1, 0.2]"), 5, "techniques.optimizer.lr",
                        "expected a number, got [0.1, 0.2]"),
    "negative-epochs": (_in_recipe("epochs: 1", "epochs: -3"), 3, "epochs",
                        "expected an integer >= 1, got -3"),
    "bool-for-epochs": (_in_recipe("epochs: 1", "epochs: true"), 3, "epochs", "got True"),
    "bool-for-int-parameter": (_in_recipe("cycles: 3", "cycles: true"), 6,
                               "techniques.lr_schedule.cycles", "expected a number, got True"),
    "bool-for-batch-size": (_in_recipe("batch_size: 64", "batch_size: yes"), 2,
                            "data.batch_size", "got True"),
    # found writing these tests: each crashed with a traceback, or was accepted
    "nan": (_in_recipe("lr: 0.05", "lr: .nan"), 5, "techniques.optimizer.lr",
            "expected a finite number, got nan"),
    "infinite-range": (RECIPE + "  grad_clip: {max_norm: {type: float, low: 0.1, high: .inf}}\n",
                       7, "techniques.grad_clip.max_norm.high", "expected a finite number"),
    "huge-integer": (_in_recipe("cycles: 3", f"cycles: {HUGE}"), 6,
                     "techniques.lr_schedule.cycles", "cannot read 999999999999999999999999..."),
    "yaml-1.1-float-without-digits": (_in_recipe("lr: 0.05", "lr: ._"), 5,
                                      "techniques.optimizer.lr", "expected a number, got '._'"),
    "int-beyond-64-bits": (_in_recipe("cycles: 3", f"cycles: {2**70}"), 6,
                           "techniques.lr_schedule.cycles", "integer too large"),
    "fractional-int-step": (RECIPE + "  random_crop: {padding: {type: int, low: 1, high: 4, "
                            "step: 0.5}}\n", 7, "techniques.random_crop.padding.step",
                            "expected an integer >= 1, got 0.5"),
    "infinite-float-step": (RECIPE + "  mixup: {alpha: {type: float, low: 0.1, high: 0.2, "
                            "step: .inf}}\n", 7, "techniques.mixup.alpha.step",
                            "expected a number > 0, got inf"),
    "choice-listed-twice": (RECIPE + "  random_crop: {padding: {type: categorical, "
                            "choices: [2, 2.0]}}\n", 7, "techniques.random_crop.padding.choices.1",
                            "2 is listed twice"),
    "seed-beyond-torch": (RECIPE + f"seed: {2**63}\n", 7, "seed", "expected an integer in [0, "),
    "split-seed-beyond-torch": (_in_recipe("batch_size: 64", f"batch_size: 64, split_seed: "
                                           f"{2**63}"), 2, "data.split_seed", "in [0, "),
    "negative-sampler-seed": (RECIPE + "study: {seed: -1}\n", 7, "study.seed",
                              f"expected an integer in [0, {2**32 - 1}], got -1"),
    "workers-negative": (_in_recipe("batch_size: 64", "batch_size: 64, workers: -1"), 2,
                         "data.workers", "expected an integer >= 0, got -1"),
    "in-memory-not-a-bool": (_in_recipe("batch_size: 64", "batch_size: 64, in_memory: 'yes'"),
                             2, "data.in_memory", "expected true, false or auto, got 'yes'"),
    "image-size-zero": (_in_recipe("batch_size: 64", "batch_size: 64, image_size: 0"), 2,
                        "data.image_size", "expected an integer >= 1, got 0"),
}


@pytest.mark.parametrize("command", ["search", "train"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_file_is_one_located_line_and_writes_nothing(tmp_path, monkeypatch, case,
                                                           command):
    text, line, key, message = CASES[case]
    path = tmp_path / "bad.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(cli, [command, "bad.yaml", "--device", "cpu"])

    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    where = f"Error: bad.yaml:{line}: " + (f"{key}: " if key else "")
    assert lines[0].startswith(where), lines[0]
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]  # no run dir, no MARKER

