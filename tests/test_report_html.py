"""``automl report``: a small real search, then its HTML page and PNGs, read as a file and as
a person sees it (a real headless browser, network off); the numbers against a hand
computation from the trials."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from scipy.stats import ttest_ind

from automl.cli import cli
from automl.study_summary import (
    MIN_IMPORTANCE_TRIALS,
    failure_groups,
    param_importances,
    summarize,
    technique_effects,
)

pytest.importorskip("plotly")
pytest.importorskip("matplotlib")

TECHNIQUES = ("optimizer", "lr_schedule", "label_smoothing", "mixup", "random_crop")
SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128, val_fraction: 0.2}
epochs: 2
techniques:
  optimizer: {}
  lr_schedule: {}
  label_smoothing: {}
  mixup: {}
  random_crop: {}
study: {sampler: random, pruner: median, n_trials: 10, startup_trials: 5, min_resource: 1,
        rung_trust: -1, warm_start: false, confirm_top: 1, confirm_seeds: 1}
"""
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A small real search (10 trials, 2 epochs, some pruned, the best confirmed), then
    ``automl report --out RUN``: (the study, the report folder, the page's text)."""
    root = tmp_path_factory.mktemp("report")
    (root / "rep.yaml").write_text(SPACE)
    run = root / "RUN"
    searched = invoke("search", str(root / "rep.yaml"), "--out", str(run), "--device", "cpu")
    assert searched.exit_code == 0, searched.output
    result = invoke("report", "--out", str(run))
    assert result.exit_code == 0, result.output
    page = run / "report" / "report.html"
    assert f"wrote {page}" in result.output
    study = optuna.load_study(study_name="rep", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run / "study.journal"))))
    return study, page.parent, page.read_text(encoding="utf-8")


def _cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


# --- the page as a file ----------------------------------------------------------------------


def test_the_report_is_one_file_with_plotly_inline_once(reported):
    from plotly.offline import get_plotlyjs

    _, folder, page = reported
    assert {p.suffix for p in folder.iterdir()} == {".html", ".png"}
    assert len(list(folder.glob("*.html"))) == 1
    plotlyjs = get_plotlyjs()
    assert page.count(plotlyjs) == 1
    ours = page.replace(plotlyjs, "")  # our own markup: nothing loaded from anywhere
    assert not re.search(r"\b(src|href)\s*=", ours, re.I)
    assert "cdn." not in ours
    expected = int(re.search(r'data-plots-expected="(\d+)"', ours)[1])
    divs = re.findall(r'<div id="plot-([a-z_]+)"', ours)
    assert len(divs) == expected == ours.count("Plotly.newPlot(")
    assert {"by_trial", "by_time", "curves", "contenders"} <= set(divs)


def test_the_report_names_every_trial_and_technique(reported):
    study, _, page = reported
    header = re.search(r"<table id='trials'[^>]*><thead><tr>(.*?)</tr>", page, re.S)[1]
    columns = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<th[^>]*>(.*?)</th>", header)]
    for t in study.trials:
        row = re.search(rf"<tr id='trial-{t.number}' class='(\w+)'>(.*?)</tr>", page, re.S)
        assert row, f"trial {t.number} is not in the table"
        assert row[1] == t.state.name.lower()
        cells = _cells(row[2])
        assert cells[0] == str(t.number)
        # named parameters: each on technique's cell lists its values by name
        for name in TECHNIQUES:
            i = columns.index(name)
            used = t.user_attrs["recipe"]["techniques"].get(name)
            if used is None:
                assert cells[i] == "off"
            else:
                for param in (p for p in used if p != "enabled"):
                    assert f"{param}=" in cells[i]
    for name in TECHNIQUES:
        assert f"<th>{name}</th>" in page and f"data-technique='{name}'" in page


def test_effect_table_agrees_with_a_hand_computation(reported):
    study, _, page = reported
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) >= 3
    contrasted = intervals = 0
    for name in TECHNIQUES:
        on = [t.value for t in done if name in t.user_attrs["recipe"]["techniques"]]
        off = [t.value for t in done if name not in t.user_attrs["recipe"]["techniques"]]
        row = re.search(rf"<tr data-technique='{name}'>(.*?)</tr>", page, re.S)[1]
        _, n_on, n_off, mean_on, mean_off, diff, interval, verdict = _cells(row)
        assert (int(n_on), int(n_off)) == (len(on), len(off))
        if not on or not off:
            assert verdict.startswith("no contrast") and diff == interval == ""
            continue
        contrasted += 1
        assert float(mean_on) == pytest.approx(statistics.fmean(on), abs=6e-5)
        assert float(mean_off) == pytest.approx(statistics.fmean(off), abs=6e-5)
        assert float(diff) == pytest.approx(statistics.fmean(on) - statistics.fmean(off),
                                            abs=6e-5)
        if len(on) >= 2 and len(off) >= 2:
            low, high = ttest_ind(on, off, equal_var=False).confidence_interval(0.95)
            shown = [float(x) for x in re.findall(r"[-+][\d.]+", interval)]
            assert shown == pytest.approx([low, high], abs=6e-5)
            intervals += 1
        else:
            assert interval == "" and "too few" in verdict
    # optimizer and lr_schedule are required: on in every trial
    assert "no contrast (on in all" in page
    assert contrasted >= 1, "no technique was both on and off in the finished trials"
    assert intervals >= 1, "no technique was on and off in two finished trials each"


def test_baseline_best_and_confirmed_winner_are_compared(reported):
    study, _, page = reported
    baseline = next(t for t in study.trials if t.user_attrs.get("baseline"))
    winner = study.user_attrs["confirmed_best"]
    section = page.split("<h2>Baseline against the best</h2>")[1].split("<h2>")[0]
    assert f"<td>{baseline.number}</td><td>baseline" in section
    assert re.search(rf"<td>{winner}</td><td>[^<]*confirmed winner", section)


def _figure_data(page: str, name: str) -> list[dict]:
    """The traces of one inline figure, as the page hands them to Plotly.newPlot."""
    start = re.search(rf'Plotly\.newPlot\(\s*"plot-{name}",\s*', page).end()
    return json.JSONDecoder().raw_decode(page[start:])[0]


def test_every_trial_has_a_learning_curve_with_the_prune_points_marked(reported):
    study, _, page = reported
    traces = _figure_data(page, "curves")
    curves = {t["name"]: list(zip(t["x"], t["y"], strict=True)) for t in traces
              if t["name"] != "pruned here"}  # JSON keeps every digit of a float
    reported_any = [t for t in study.trials if t.intermediate_values]
    assert len(curves) == len(reported_any) == len(study.trials)
    for t in reported_any:
        assert curves[f"trial {t.number} ({t.state.name.lower()})"] == \
            sorted(t.intermediate_values.items())
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "the search pruned no trial: nothing to mark"
    marks, = [t for t in traces if t["name"] == "pruned here"]
    last = [max(t.intermediate_values.items()) for t in pruned]
    assert list(zip(marks["x"], marks["y"], strict=True)) == last
    assert marks["text"] == [f"trial {t.number}" for t in pruned]


def test_the_pngs_are_written(reported):
    from PIL import Image

    _, folder, _ = reported
    names = {p.stem for p in folder.glob("*.png")}
    assert {"best_so_far", "learning_curves", "baseline_vs_best"} <= names
    for path in folder.glob("*.png"):
        with Image.open(path) as image:
            assert image.size[0] > 300 and len(image.convert("L").getcolors(256)) > 10


def test_output_option_writes_the_page_where_asked(reported, tmp_path):
    study, folder, _ = reported
    target = tmp_path / "elsewhere" / "r.html"
    result = invoke("report", "--out", str(folder.parent), "--study-name", "rep",
                    "-o", str(target))
    assert result.exit_code == 0, result.output
    assert target.exists() and (target.parent / "learning_curves.png").exists()


# --- the page in a real browser --------------------------------------------------------------


def _chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless chromium with the network off (every request goes to a closed port)."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
         f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args, page.as_uri()],
        capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (.ci/run installs it with apt-get)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM


def test_every_plot_renders_in_a_browser_without_network(browser, reported, tmp_path):
    _, folder, page = reported
    dom = _chromium(folder / "report.html", tmp_path / "profile", "--dump-dom")
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stderr[-2000:]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body[1]))
    assert attrs.get("data-errors") == "[]", attrs
    assert attrs["data-plots"] == attrs["data-plots-drawn"] == attrs["data-plots-expected"]
    assert int(attrs["data-plots-expected"]) >= 4
    shot = tmp_path / "shot.png"
    _chromium(folder / "report.html", tmp_path / "profile", "--window-size=1280,3000",
              f"--screenshot={shot}")
    from PIL import Image

    with Image.open(shot) as image:  # drawn, not a blank page
        assert len(image.convert("L").getcolors(256)) > 50


def test_clicking_a_header_sorts_the_trials_table(browser, reported, tmp_path):
    study, folder, page = reported
    score_column = 4  # trial, state, kind, the metric
    click = ("<script>window.addEventListener('load', function () {"
             f"document.querySelector('#trials th:nth-child({score_column})').click();"
             "document.body.setAttribute('data-order', Array.from("
             "document.querySelectorAll('#trials tbody tr')).map(function (r) {"
             "return r.id; }).join(' ')); });</script></body>")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", click), encoding="utf-8")
    dom = _chromium(probe, tmp_path / "profile", "--dump-dom")
    order = re.search(r'data-order="([^"]*)"', dom.stdout)[1].split()
    rows = summarize(study).rows
    scores = {f"trial-{r.number}": r.score for r in rows}
    shown = [scores[i] for i in order]
    known = [s for s in shown if s is not None]
    assert known == sorted(known) and shown[:len(shown) - len(known)] == \
        [None] * (len(shown) - len(known))
    assert sorted(order) == sorted(scores)


# --- small and odd studies, without a search -------------------------------------------------

SWITCH = CategoricalDistribution([False, True])


def _trial(value, on: list[str], state=TrialState.COMPLETE, reason=None, **attrs):
    recipe = {"model": "m", "data": {}, "epochs": 1,
              "techniques": {n: {"enabled": True} for n in on}}
    user_attrs = {"recipe": recipe, **attrs}
    if reason:
        user_attrs["fail_reason"] = reason
    return create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                        params={"mixup.enabled": "mixup" in on},
                        distributions={"mixup.enabled": SWITCH}, user_attrs=user_attrs)


def _study(*trials) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("metric", "val/acc1")
    study.set_user_attr("space_definition", {"mixup.enabled": "searched",
                                             "optimizer.enabled": "True"})
    for t in trials:
        study.add_trial(t)
    return study


def test_the_interval_is_welchs_t():
    on, off = [0.8, 0.85, 0.9, 0.82], [0.7, 0.75, 0.6]
    study = _study(*[_trial(v, ["optimizer", "mixup"]) for v in on],
                   *[_trial(v, ["optimizer"]) for v in off])
    mixup, optimizer = sorted(technique_effects(study), key=lambda e: e.technique)
    low, high = ttest_ind(on, off, equal_var=False).confidence_interval(0.95)
    assert (mixup.low, mixup.high) == pytest.approx((low, high))
    assert mixup.difference == pytest.approx(statistics.fmean(on) - statistics.fmean(off))
    assert mixup.verdict(maximize=True) == "helps" and mixup.verdict(maximize=False) == "hurts"
    assert optimizer.note == "no contrast (on in all 7)"


def test_a_tiny_study_reports_without_importance_and_groups_failures(tmp_path):
    from automl.html_report import write_report

    study = _study(_trial(0.5, ["optimizer"], baseline=True),
                   _trial(None, ["optimizer"], TrialState.FAIL, "oom"),
                   _trial(None, ["optimizer", "mixup"], TrialState.FAIL, "oom"),
                   _trial(None, ["optimizer"], TrialState.FAIL,
                          "plugin mixup, hook on_batch: ValueError: bad"),
                   _trial(None, ["optimizer"], TrialState.PRUNED,
                          "same parameters as trial 0, not trained again"))
    importances, note = param_importances(study)
    assert importances == {} and f"at least {MIN_IMPORTANCE_TRIALS}" in note
    groups = [(g.state, g.reason, g.trials) for g in failure_groups(study)]
    assert groups == [("fail", "oom", [1, 2]),
                      ("fail", "plugin mixup, hook on_batch: ValueError: bad", [3]),
                      ("pruned", "same parameters as trial 0, not trained again", [4])]
    page, *_ = write_report(study, tmp_path / "report.html")
    text = page.read_text(encoding="utf-8")
    assert "not computed: 1 finished trial(s)" in text
    assert "<td>fail</td><td>2</td><td>1, 2</td><td>oom</td>" in text
    assert "The baseline is the best trial." in text


def test_without_the_extra_the_command_says_what_to_install(tmp_path):
    blocked = ("import sys; sys.modules['plotly'] = None; sys.argv = ['automl', 'report']; "
               "from automl.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", blocked], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "Error: automl report needs plotly (the report extra): pip install -e '.[report]' "
        "(in a checkout) or pip install 'automl-recipes[report]'")


def test_a_failed_confirmation_run_is_counted_not_averaged():
    from automl.study_summary import contenders

    study = _study(_trial(0.5, ["optimizer"], baseline=True), _trial(0.7, ["optimizer"]))
    study.set_user_attr("confirmations", {"1": [{"value": None}, {"value": 0.6}],
                                          "0": [{"value": 0.4}]})
    study.set_user_attr("confirmed_best", 1)
    found = {c.role: c for c in contenders(study)}
    assert set(found) == {"baseline", "best single score", "confirmed winner"}
    winner = found["confirmed winner"]
    assert winner.runs == [0.7, 0.6] and winner.failed_runs == 1
    assert winner.runs_text() == "0.6500 ± 0.0707 (n=2, 1 failed)"
    assert found["baseline"].mean == pytest.approx(0.45)
