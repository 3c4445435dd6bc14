"""The report's plots as PNG files (matplotlib), for slides, papers and viewers without a
browser; the same numbers as the HTML page (:mod:`automl.study_summary`).

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (no pyplot), so no GUI
backend is touched and nothing is left open.
"""

from __future__ import annotations

from pathlib import Path

from automl.study_summary import StudySummary

__all__ = ["write_images"]

DPI = 110


def write_images(summary: StudySummary, folder: Path) -> list[Path]:
    """Write each plot that has something to draw into ``folder``; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("best_so_far", _best_so_far), ("learning_curves", _curves),
                       ("technique_effects", _effects), ("param_importance", _importance),
                       ("baseline_vs_best", _contenders)):
        fig = draw(summary)
        if fig is None:
            continue
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        written.append(path)
    return written


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _best_so_far(s: StudySummary):
    if not s.by_trial:
        return None
    fig, (by_trial, by_time) = _figure(10, 3.6, 2)
    for ax, points, xlabel in ((by_trial, s.by_trial, "trial number"),
                               (by_time, s.by_time, "seconds since the start")):
        xs = [p.number if ax is by_trial else p.elapsed for p in points]
        ax.plot(xs, [p.value for p in points], "o", color="C0", label="trial")
        ax.step(xs, [p.best for p in points], where="post", color="C3", label="best so far")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(s.metric)
        ax.grid(alpha=.3)
    _whole_numbers(by_trial.xaxis)
    by_trial.legend()
    fig.suptitle(f"{s.name}: best so far")
    return fig


def _curves(s: StudySummary):
    rows = [r for r in s.rows if r.curve]
    if not rows:
        return None
    fig, (ax,) = _figure(8, 4.8)
    for i, r in enumerate(rows):
        style = {"color": f"C{i % 10}", "linewidth": 1.2}
        if r.label == "baseline":
            style.update(color="black", linestyle="--", linewidth=2)
        elif r.state != "complete":
            style.update(linestyle=":", linewidth=1)
        ax.plot([e for e, _ in r.curve], [v for _, v in r.curve], marker=".",
                label=f"trial {r.number} ({r.state})", **style)
        if r.pruned_at is not None:
            ax.plot(*r.curve[-1], "x", color="#d62728", markersize=9, markeredgewidth=2)
    ax.set_xlabel("epoch")
    _whole_numbers(ax.xaxis)
    ax.set_ylabel(s.metric)
    ax.grid(alpha=.3)
    ax.set_title(f"{s.name}: learning curves (x = pruned there)")
    if len(rows) <= 20:
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1, .5))
    return fig


def _effects(s: StudySummary):
    shown = [e for e in s.effects if e.difference is not None]
    if not shown:
        return None
    fig, (ax,) = _figure(7, 1 + .45 * len(shown))
    ys = range(len(shown))
    low = [e.difference - e.low if e.low is not None else 0 for e in shown]
    high = [e.high - e.difference if e.high is not None else 0 for e in shown]
    ax.errorbar([e.difference for e in shown], ys, xerr=[low, high], fmt="o", capsize=4)
    ax.axvline(0, color="grey", linestyle="--")
    ax.set_yticks(list(ys), [e.technique for e in shown])
    ax.invert_yaxis()
    ax.set_xlabel(f"{s.metric}: mean on − mean off (95% Welch interval)")
    ax.set_title(f"{s.name}: each technique's effect")
    ax.grid(alpha=.3, axis="x")
    return fig


def _importance(s: StudySummary):
    if not s.importances:
        return None
    names = list(s.importances)[::-1]
    fig, (ax,) = _figure(7, 1 + .35 * len(names))
    ax.barh(names, [s.importances[n] for n in names], color="C4")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"{s.name}: parameter importance")
    return fig


def _contenders(s: StudySummary):
    if not s.contenders:
        return None
    merged: dict[int, list] = {}
    for c in s.contenders:
        merged.setdefault(c.number, [[], c])[0].append(c.role)
    fig, (ax,) = _figure(6, 3.6)
    entries = list(merged.values())
    labels = [f"trial {c.number}\n{', '.join(roles)}\n{c.runs_text() or f'{c.value:.4f}'}"
              for roles, c in entries]
    xs = range(len(entries))
    ax.bar(xs, [c.mean for _, c in entries], width=.5, yerr=[c.std for _, c in entries],
           capsize=5, color=["C0" if "baseline" in roles else "C2" for roles, _ in entries])
    for x, (_, c) in zip(xs, entries, strict=True):
        runs = c.runs or [c.value]
        ax.plot([x] * len(runs), runs, "o", color="black", markersize=4)
    ax.set_xticks(list(xs), labels, fontsize="small")
    ax.set_ylabel(s.metric)
    ax.set_title(f"{s.name}: baseline against the best")
    return fig


def _whole_numbers(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))
