"""``automl report``: one self-contained HTML page for a study, plus the same plots as PNGs.

The page opens from disk with no server and no network: plotly.js is embedded once, each
figure is inline data drawn by it, and the trials table sorts with a few lines of inline
JavaScript. The numbers come from :mod:`automl.study_summary`; the PNGs from
:mod:`automl.report_images`. Both plotting libraries are the ``report`` extra.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from pathlib import Path

import optuna

from automl.errors import UserError
from automl.objectives import CHOSEN_RULE, format_metric
from automl.study_summary import CONFIDENCE, StudySummary, summarize, values_text
from automl.yamlio import write_atomic

__all__ = ["require_report_extra", "report_path", "write_report", "render_html", "REPORT_FOLDER",
           "REPORT_HTML", "INSTALL_HINT"]

REPORT_FOLDER = "report"  # inside the run folder
REPORT_HTML = "report.html"
INSTALL_HINT = ("pip install -e '.[report]' (in a checkout) or "
                "pip install 'automl-recipes[report]'")
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def require_report_extra() -> None:
    """A one-line UserError saying what to install when plotly or matplotlib is missing."""
    missing = []
    for module in ("plotly", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(f"automl report needs {' and '.join(missing)} (the report extra): "
                        f"{INSTALL_HINT}")


def report_path(study_name: str, out: Path | None, storage: str | None) -> Path:
    """Where the page goes by default: the run folder's ``report/report.html`` (the run
    folder is ``--out``, else the journal file's folder, else ``runs/STUDY_NAME``)."""
    from automl.paths import RUNS
    from automl.storage import is_rdb_url

    if out is not None:
        run_dir = out
    elif storage and not is_rdb_url(storage):
        run_dir = Path(storage).parent
    else:
        run_dir = RUNS / study_name
    return run_dir / REPORT_FOLDER / REPORT_HTML


def write_report(study: optuna.Study, html_path: Path) -> list[Path]:
    """Write the page to ``html_path`` and the PNGs next to it; the files written, the page
    first."""
    from automl.report_images import write_images

    require_report_extra()
    summary = summarize(study)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(html_path, render_html(summary))
    return [html_path, *write_images(summary, html_path.parent)]


def render_html(summary: StudySummary) -> str:
    """The whole page as one string."""
    from plotly.offline import get_plotlyjs

    figures = _figures(summary)
    plots = {name: _plot_div(name, fig) for name, fig in figures.items()}
    sections = [
        _section("Pareto front", _front_html(summary)) if summary.front else "",
        _section("Baseline against the best", _contenders_html(summary),
                 plots.get("contenders")),
        _section("Best so far", "<p>Each finished trial's score (dots) and the best up to it "
                 "(line), against the trial number and against the time since the search "
                 "started.</p>", plots.get("by_trial"), plots.get("by_time")),
        _section("Learning curves", "<p>The score each trial reported after every epoch; "
                 "<b>×</b> marks where a pruned trial was stopped.</p>", plots.get("curves")),
        _section("Each technique's effect", _effects_html(summary), plots.get("effects")),
        _section("Parameter importance", f"<p>{_esc(summary.importance_note)}.</p>",
                 plots.get("importance")),
        _section("Trials", _trials_html(summary)),
        _section("Failures", _failures_html(summary)),
    ]
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary.counts.items()))
    direction = "higher is better" if summary.maximize else "lower is better"
    metric = summary.metric if len(summary.metrics) < 2 else \
        f"{summary.metric} (the first of {', '.join(summary.metrics)})"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return _PAGE.format(
        title=_esc(f"automl report: {summary.name}"), style=_STYLE, catch=_CATCH_ERRORS,
        plotlyjs=get_plotlyjs(), expected=len(plots), name=_esc(summary.name),
        metric=_esc(metric), direction=direction, counts=_esc(counts or "no trials"),
        generated=generated, body="\n".join(s for s in sections if s), check=_RENDER_CHECK,
        sort=_SORT_TABLE)


# --- figures ------------------------------------------------------------------------------


def _figures(summary: StudySummary) -> dict:
    """The plotly figures the page shows, by name; a figure with nothing to draw is left
    out (its section says why)."""
    import plotly.graph_objects as go

    figures = {}
    metric = summary.metric
    if summary.contenders:
        merged = _merged_contenders(summary)
        labels = [f"trial {c.number}<br>{role}<br>{c.runs_text() or f'{c.value:.4f}'}"
                  for role, c in merged]
        fig = go.Figure([
            go.Bar(x=labels, y=[c.mean for _, c in merged], width=0.5, name="mean",
                   error_y={"type": "data", "array": [c.std for _, c in merged]},
                   marker_color=[PALETTE[0] if "baseline" in role else PALETTE[2]
                                 for role, _ in merged]),
            go.Scatter(x=[label for label, (_, c) in zip(labels, merged, strict=True)
                          for _ in (c.runs or [c.value])],
                       y=[v for _, c in merged for v in (c.runs or [c.value])],
                       mode="markers", name="runs", marker={"color": "black", "size": 7})])
        figures["contenders"] = _layout(fig, "", metric, height=360, legend=False)
    for name, points, axis in (("by_trial", summary.by_trial, "trial number"),
                               ("by_time", summary.by_time, "seconds since the start")):
        if not points:
            continue
        xs = [p.number if name == "by_trial" else p.elapsed for p in points]
        fig = go.Figure([
            go.Scatter(x=xs, y=[p.value for p in points], mode="markers", name="trial",
                       text=[f"trial {p.number}" for p in points], marker_color=PALETTE[0]),
            go.Scatter(x=xs, y=[p.best for p in points], mode="lines", name="best so far",
                       line_shape="hv", line_color=PALETTE[3])])
        if name == "by_trial":  # whole trial numbers only
            fig.update_xaxes(dtick=max(1, math.ceil(max(xs) / 12)))
        figures[name] = _layout(fig, f"against the {axis}", metric, axis, height=320)
    curves = [r for r in summary.rows if r.curve]
    if curves:
        traces = []
        for i, row in enumerate(curves):
            style = {"color": PALETTE[i % len(PALETTE)], "width": 1.5}
            if row.label == "baseline":
                style.update(color="black", dash="dash", width=2.5)
            elif row.state != "complete":
                style.update(dash="dot", width=1)
            traces.append(go.Scatter(
                x=[e for e, _ in row.curve], y=[v for _, v in row.curve], mode="lines+markers",
                name=f"trial {row.number} ({row.state})", line=style, marker_size=4,
                legendgroup=str(row.number)))
        pruned = [r for r in curves if r.pruned_at is not None]
        if pruned:
            traces.append(go.Scatter(
                x=[r.curve[-1][0] for r in pruned], y=[r.curve[-1][1] for r in pruned],
                mode="markers", name="pruned here", text=[f"trial {r.number}" for r in pruned],
                marker={"symbol": "x", "size": 11, "color": "#d62728"}))
        fig = go.Figure(traces)
        fig.update_xaxes(dtick=max(1, math.ceil(max(r.curve[-1][0] for r in curves) / 12)))
        figures["curves"] = _layout(fig, "", metric, "epoch", height=460)
    contrasted = [e for e in summary.effects if e.difference is not None]
    if contrasted:
        fig = go.Figure(go.Scatter(
            x=[e.difference for e in contrasted], y=[e.technique for e in contrasted],
            mode="markers", marker={"size": 10, "color": PALETTE[0]},
            error_x={"type": "data", "symmetric": False, "visible": True,
                     "array": [(e.high - e.difference) if e.high is not None else 0
                               for e in contrasted],
                     "arrayminus": [(e.difference - e.low) if e.low is not None else 0
                                    for e in contrasted]}))
        fig.add_vline(x=0, line_dash="dash", line_color="grey")
        fig.update_yaxes(autorange="reversed")  # the table's order
        figures["effects"] = _layout(fig, "", "", f"{metric}: mean on − mean off",
                                     height=120 + 40 * len(contrasted), legend=False)
    if summary.importances:
        names = list(summary.importances)[::-1]
        figures["importance"] = _layout(go.Figure(go.Bar(
            x=[summary.importances[n] for n in names], y=names, orientation="h",
            marker_color=PALETTE[4])), "", "", "importance (share of the variance)",
            height=120 + 28 * len(names), legend=False)
    return figures


def _layout(fig, title: str, ytitle: str, xtitle: str = "", height: int = 360,
            legend: bool = True):
    fig.update_layout(title=title or None, height=height, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 40 if title else 20, "b": 50},
                      showlegend=legend, xaxis_title=xtitle, yaxis_title=ytitle)
    return fig


def _plot_div(name: str, fig) -> str:
    import plotly.io as pio

    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"plot-{name}",
                       config=PLOT_CONFIG, default_height=f"{fig.layout.height}px")


def _merged_contenders(summary: StudySummary) -> list:
    """One entry per trial (the best single score is often the confirmed winner too)."""
    merged: dict[int, list] = {}
    for c in summary.contenders:
        if c.number in merged:
            merged[c.number][0] += f", {c.role}"
        else:
            merged[c.number] = [c.role, c]
    return [tuple(v) for v in merged.values()]


# --- tables -------------------------------------------------------------------------------


def _contenders_html(summary: StudySummary) -> str:
    merged = _merged_contenders(summary)
    if not merged:
        return "<p>No trial has finished yet.</p>"
    rows = []
    for role, c in merged:
        runs = c.runs_text()
        techniques = "; ".join(f"{k}({values_text(values)})" if values else k
                               for k, values in c.techniques.items())
        rows.append(f"<tr><td>{c.number}</td><td>{_esc(role)}</td><td>{c.value:.4f}</td>"
                    f"<td>{runs}</td><td class='recipe'>{_esc(techniques)}</td></tr>")
    baseline = next((c for role, c in merged if "baseline" in role), None)
    best = next((c for c in summary.contenders if c.role == "confirmed winner"), None) or \
        next((c for c in summary.contenders if c.role == "best single score"), None)
    margin = ""
    if baseline and best and best.number != baseline.number:
        both = bool(best.runs and baseline.runs)
        diff = best.mean - baseline.mean if both else best.value - baseline.value
        margin = (f"<p class='margin'>The {best.role} (trial {best.number}) against the "
                  f"baseline (trial {baseline.number}): <b>{diff:+.4f}</b> "
                  f"{_esc(summary.metric)} "
                  f"({'means over their runs' if both else 'single scores'}).</p>")
    elif baseline and best:
        margin = "<p class='margin'>The baseline is the best trial.</p>"
    return (margin + "<table><thead><tr><th>trial</th><th>role</th>"
            f"<th>{_esc(summary.metric)}</th><th>confirmed: mean ± std (runs)</th>"
            "<th>techniques</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _effects_html(summary: StudySummary) -> str:
    level = round(CONFIDENCE * 100)
    better = "higher" if summary.maximize else "lower"
    rows = []
    for e in summary.effects:
        interval = (f"[{e.low:+.4f}, {e.high:+.4f}]" if e.low is not None else "")
        rows.append(
            f"<tr data-technique='{_esc(e.technique)}'><td>{_esc(e.technique)}</td>"
            f"<td>{len(e.on)}</td><td>{len(e.off)}</td><td>{_num(e.mean_on)}</td>"
            f"<td>{_num(e.mean_off)}</td><td>{_num(e.difference, sign=True)}</td>"
            f"<td>{interval}</td><td>{_esc(e.verdict(summary.maximize))}</td></tr>")
    return (f"<p>For each technique of the space: the mean {_esc(summary.metric)} of the "
            f"finished (complete) trials with it on against those with it off ({better} is "
            f"better), and a {level}% interval of the difference by Welch's t (unequal "
            "variances). Trials differ in more than one technique, so read these as "
            "associations over this search, not as controlled comparisons.</p>"
            "<table id='effects'><thead><tr><th>technique</th><th>trials on</th>"
            "<th>trials off</th><th>mean on</th><th>mean off</th><th>difference</th>"
            f"<th>{level}% interval</th><th>verdict</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _front_html(summary: StudySummary) -> str:
    """A multi-objective study's Pareto front: each trial's value of every metric."""
    head = "".join(f"<th>{_esc(m)}</th>" for m in summary.metrics)
    rows = "".join(
        f"<tr><td>{number}{' (exported)' if i == 0 else ''}</td>"
        + "".join(f"<td>{format_metric(v)}</td>" for v in values)
        + "</tr>" for i, (number, values) in enumerate(summary.front))
    return (f"<p>The study optimises {len(summary.metrics)} metrics; these trials are not "
            "beaten by any other on every metric. best_recipe.yaml holds "
            f"{_esc(CHOSEN_RULE)} ({_esc(summary.metric)}); export another with "
            "<code>automl export --trial N</code>. Elsewhere on this page a trial's score is "
            f"its {_esc(summary.metric)}; pruning was off (Optuna cannot prune several "
            "objectives).</p><table id='pareto'><thead><tr><th>trial</th>"
            f"{head}</tr></thead><tbody>{rows}</tbody></table>")


def _trials_html(summary: StudySummary) -> str:
    head = ["trial", "state", "kind", summary.metric, "epochs", "seconds",
            *summary.techniques, "reason"]
    numeric = {0, 3, 4, 5}
    cells = "".join(f"<th{' data-type=num' if i in numeric else ''}>{_esc(h)}</th>"
                    for i, h in enumerate(head))
    rows = []
    for r in summary.rows:
        values = [(str(r.number), r.number), (r.state, None), (r.label, None),
                  (_num(r.score), r.score), (str(r.epochs), r.epochs),
                  (_num(r.seconds, digits=1), r.seconds),
                  *[(r.technique_text(t), None) for t in summary.techniques],
                  (r.reason or "", None)]
        tds = "".join(f"<td{_sort_key(key)}>{_esc(text)}</td>" for text, key in values)
        rows.append(f"<tr id='trial-{r.number}' class='{r.state}'>{tds}</tr>")
    return ("<p>Click a column to sort. A technique's cell holds its values, or "
            "<i>off</i>.</p><div class='scroll'><table id='trials' class='sortable'><thead>"
            f"<tr>{cells}</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def _failures_html(summary: StudySummary) -> str:
    if not summary.failures:
        return "<p>No trial failed or ended early with a reason.</p>"
    rows = "".join(f"<tr><td>{g.state}</td><td>{len(g.trials)}</td>"
                   f"<td>{', '.join(map(str, g.trials))}</td><td>{_esc(g.reason)}</td></tr>"
                   for g in summary.failures)
    return ("<table id='failures'><thead><tr><th>state</th><th>count</th><th>trials</th>"
            f"<th>reason</th></tr></thead><tbody>{rows}</tbody></table>")


def _sort_key(key) -> str:
    return "" if key is None else f' data-sort="{key}"'


def _section(title: str, text: str, *plots: str | None) -> str:
    figures = "".join(f"<div class='plot'>{p}</div>" for p in plots if p)
    return f"<section><h2>{_esc(title)}</h2>{text}{figures}</section>"


def _num(value: float | None, digits: int = 4, sign: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


# --- the page -----------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em 2em;
       color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em;
                                 margin-top: 1.6em; }
.meta { color: #555; }
table { border-collapse: collapse; font-size: .9em; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th[data-order=asc]::after { content: " ▲"; }
table.sortable th[data-order=desc]::after { content: " ▼"; }
tr.pruned td { color: #666; } tr.fail td { color: #a00; }
td.recipe { font-size: .85em; max-width: 40em; }
.scroll { overflow-x: auto; }
.plot { margin: .5em 0; }
.margin { font-size: 1.1em; }
"""

#: First in <head>: records any script error on the page, for the render check.
_CATCH_ERRORS = """window.reportErrors = [];
window.addEventListener("error", function (e) {
  window.reportErrors.push(String(e.message || e.type));
});"""

#: After load: how many plots drew content (traces with paths), written to <body data-*>, so a
#: headless browser's DOM dump shows whether the page rendered.
_RENDER_CHECK = """window.addEventListener("load", function () {
  setTimeout(function () {
    var plots = document.querySelectorAll(".plot .js-plotly-plot");
    var drawn = 0;
    plots.forEach(function (p) {
      var paths = p.querySelectorAll(".main-svg g.trace path");
      if (Array.prototype.some.call(paths, function (q) {
        return (q.getAttribute("d") || "").length > 2; })) { drawn += 1; }
    });
    document.body.setAttribute("data-plots", String(plots.length));
    document.body.setAttribute("data-plots-drawn", String(drawn));
    document.body.setAttribute("data-errors", JSON.stringify(window.reportErrors));
  }, 100);
});"""

#: Click a header to sort its table (numbers by data-sort, the rest as text).
_SORT_TABLE = """document.querySelectorAll("table.sortable th").forEach(function (th, i) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var asc = th.getAttribute("data-order") !== "asc";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-order"); });
    th.setAttribute("data-order", asc ? "asc" : "desc");
    var num = th.getAttribute("data-type") === "num";
    function key(row) {
      var cell = row.cells[i], v = cell.getAttribute("data-sort");
      if (num) { v = parseFloat(v); return isNaN(v) ? -Infinity : v; }
      return cell.textContent;
    }
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      var r = num ? (x < y ? -1 : x > y ? 1 : 0) : String(x).localeCompare(String(y));
      return asc ? r : -r;
    }).forEach(function (row) { body.appendChild(row); });
  });
});"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<script>{catch}</script>
<style>{style}</style>
<script>{plotlyjs}</script>
</head>
<body data-plots-expected="{expected}">
<h1>Study <code>{name}</code></h1>
<p class="meta">Metric <b>{metric}</b> ({direction}) &middot; trials: {counts} &middot;
generated {generated} by <code>automl report</code></p>
{body}
<script>{sort}</script>
<script>{check}</script>
</body>
</html>
"""
