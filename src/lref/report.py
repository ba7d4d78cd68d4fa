"""`lref report RUN_DIR`: one self-contained HTML page (figures embedded as base64 PNG) plus the PNG files.

It reads `results.json` of a run directory (`lref.pipeline`) and draws, with matplotlib's Agg backend:
the selection funnel, the results table (accuracy, macro-F1, weighted-F1 with 95% bootstrap intervals, RMSE,
over-estimate share, pairs/s), the agreement table (Cohen's κ, quadratic-weighted κ, Spearman's ρ, NDCG@5/10,
Krippendorff's α, κ on agreed and disagreed pairs), per-class precision and recall before and after DPO, one
confusion matrix per system, the over-estimate share per system and the scoring speed per system.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

REPORT_DIR = "report"
REPORT_NAME = "report.html"


def load_results(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no results.json: run `lref run CONFIG.yaml` first")
    return json.loads(path.read_text(encoding="utf-8"))


def _evaluated(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in results["systems"] if "metrics" in s]


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _figure(width: float = 7.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def funnel_figure(selection: dict[str, Any]) -> bytes:
    steps = selection["funnel"]
    figure, axis = _figure(7, 0.6 + 0.5 * len(steps))
    names = [step["step"] for step in steps][::-1]
    values = [step["remaining"] for step in steps][::-1]
    axis.barh(names, values, color="#4c72b0")
    for y, value in enumerate(values):
        axis.text(value, y, f" {value}", va="center")
    axis.set_xlabel("pairs remaining")
    axis.set_title(f"Selection funnel: {selection['selected']} of {selection['pool_size']} pairs kept")
    return _png(figure)


def metric_bars(systems: list[dict[str, Any]], key: str, title: str, xlabel: str, log: bool = False) -> bytes:
    """Horizontal bars of `key` per system; `log` for values spanning orders of magnitude (speeds), where a linear
    axis would hide the small bars."""
    figure, axis = _figure(7, 0.6 + 0.4 * len(systems))
    if log:  # systems without a figure get no bar rather than a made-up one
        systems = [s for s in systems if (s["metrics"].get(key) or 0) > 0]
        axis.set_xscale("log")
    names = [s["title"] for s in systems][::-1]
    values = [s["metrics"].get(key) or 0.0 for s in systems][::-1]
    axis.barh(names, values, color="#dd8452")
    for y, value in enumerate(values):
        axis.text(value, y, f" {value:.3g}", va="center")
    axis.set_xlabel(xlabel)
    axis.set_title(title)
    return _png(figure)


def per_class_figure(before: dict[str, Any], after: dict[str, Any], labels: list[str]) -> bytes:
    import numpy as np

    figure, axes = _figure(9, 3.4)
    figure.clf()
    axes = figure.subplots(1, 2, sharey=True)
    x = np.arange(len(labels))
    for axis, measure in zip(axes, ("precision", "recall")):
        for offset, system, colour in ((-0.2, before, "#8c8c8c"), (0.2, after, "#55a868")):
            values = [system["metrics"]["per_class"][label][measure] for label in labels]
            axis.bar(x + offset, values, width=0.4, label=system["title"], color=colour)
        axis.set_xticks(x, labels)
        axis.set_ylim(0, 1)
        axis.set_title(measure)
    axes[0].legend(loc="upper right", fontsize="small")
    figure.suptitle("Per-class precision and recall before and after DPO")
    return _png(figure)


def confusion_figure(system: dict[str, Any]) -> bytes:
    import numpy as np

    metrics = system["metrics"]
    matrix = np.array(metrics["confusion"])
    labels = metrics["labels"]
    figure, axis = _figure(3.6, 3.2)
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    for (i, j), value in np.ndenumerate(matrix):
        axis.text(j, i, str(value), ha="center", va="center",
                  color="white" if value > matrix.max() / 2 else "black")
    axis.set_xlabel("predicted")
    axis.set_ylabel("gold")
    axis.set_title(system["title"])
    return _png(figure)


def _cell(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "–"
    interval = (metrics.get("ci95") or {}).get(key)
    text = f"{value:.3f}"
    return text + (f" <small>[{interval[0]:.3f}, {interval[1]:.3f}]</small>" if interval else "")


def results_table(results: dict[str, Any]) -> str:
    """The results table as HTML: one row per system (skipped stages say why)."""
    head = ("system", "train pairs", "accuracy", "macro-F1", "weighted-F1", "RMSE", "over-estimates", "pairs/s")
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for system in results["systems"]:
        name = html.escape(system["title"])
        if "metrics" not in system:
            rows.append(f'<tr class="skipped"><td>{name}</td><td colspan="{len(head) - 1}">skipped: '
                        f"{html.escape(str(system.get('skipped')))}</td></tr>")
            continue
        m = system["metrics"]
        speed = f"{m['pairs_per_s']:.1f}" if m.get("pairs_per_s") else "–"
        weighted = _cell(m, "weighted_f1")
        if m.get("calibration"):  # the figures are calibrated; show what the raw scores gave
            weighted += f"<br><small>uncalibrated {m['calibration']['uncalibrated']['weighted_f1']:.3f}</small>"
        check = m.get("collapse") or {}
        if check.get("collapsed"):  # lref.collapse: the judge answers (nearly) one grade
            name += ('<br><strong class="collapsed">COLLAPSED</strong> <small>'
                     + html.escape("; ".join(check["reasons"])) + "</small>")
        elif check.get("silent_labels"):
            name += f"<br><small>never answers {html.escape(', '.join(check['silent_labels']))}</small>"
        cells = [name, str(system.get("n_train") or "–"), _cell(m, "accuracy"), _cell(m, "macro_f1"),
                 weighted, _cell(m, "rmse"), f"{m['over_estimate_share']:.3f}", speed]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return '<table id="results">' + "".join(rows) + "</table>"


def agreement_table(results: dict[str, Any]) -> str:
    """Agreement with the gold labels as HTML, one row per evaluated system: Cohen's κ, quadratic-weighted κ and
    Spearman's ρ with 95% intervals, NDCG@5/10, Krippendorff's α with the judge (where the data has per-rater labels)
    and κ on the pairs the raters agreed and disagreed on (where the data says which)."""
    head = ("system", "Cohen's κ", "quadratic-weighted κ", "Spearman ρ", "NDCG@5", "NDCG@10", "α raters + judge",
            "κ agreed / disagreed")
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for system in _evaluated(results):
        m = system["metrics"]
        split = m.get("by_rater_agreement") or {}
        kappas = [(split.get(subset) or {}).get("cohen_kappa") for subset in ("agreed", "disagreed")]
        cells = [html.escape(system["title"]), _cell(m, "cohen_kappa"), _cell(m, "quadratic_weighted_kappa"),
                 _cell(m, "spearman"), _cell(m, "ndcg@5"), _cell(m, "ndcg@10"),
                 _cell(m, "krippendorff_alpha_with_judge"),
                 " / ".join("–" if k is None else f"{k:.3f}" for k in kappas) if split else "–"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return '<table id="agreement">' + "".join(rows) + "</table>"


def build_figures(results: dict[str, Any]) -> dict[str, tuple[str, bytes]]:
    """name -> (caption, PNG bytes), in page order."""
    systems = _evaluated(results)
    figures: dict[str, tuple[str, bytes]] = {}
    if results.get("selection"):
        figures["selection_funnel"] = ("Selection funnel", funnel_figure(results["selection"]))
    if not systems:
        return figures
    by_name = {s["name"]: s for s in systems}
    if "dpo" in by_name:
        chain = [n for n in ("cot-dr", "cot-ra", "cot-ee", "sft", "llm-base") if n in by_name]
        if chain:
            figures["per_class_dpo"] = ("Per-class precision and recall before and after DPO",
                                        per_class_figure(by_name[chain[0]], by_name["dpo"],
                                                         systems[0]["metrics"]["labels"]))
    figures["over_estimates"] = ("Over-estimate share (predicted more relevant than gold)",
                                 metric_bars(systems, "over_estimate_share", "Over-estimate share per model",
                                             "share of pairs"))
    figures["speed"] = ("Scoring speed", metric_bars(systems, "pairs_per_s", "Scoring speed per model",
                                                     "pairs/s (log scale)", log=True))
    for system in systems:
        figures[f"confusion_{system['name']}"] = (f"Confusion matrix: {system['title']}", confusion_figure(system))
    return figures


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.skipped td { color: #888; }
.collapsed { color: #b00; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: 100%; }
"""


def render_html(results: dict[str, Any], figures: dict[str, tuple[str, bytes]]) -> str:
    evaluation = results.get("eval") or {}
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>lref report</title>',
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>lref report: {html.escape(str(results.get('run_dir', '')))}</h1>",
    ]
    if evaluation:
        parts.append(f"<p>{evaluation.get('pairs')} held-out pairs ({html.escape(str(evaluation.get('scheme')))}), "
                     f"{evaluation.get('train_pairs')} training pairs. Intervals: 95% bootstrap over queries.</p>")
    raters = next((s["metrics"].get("krippendorff_alpha_raters") for s in _evaluated(results)
                   if s["metrics"].get("krippendorff_alpha_raters") is not None), None)
    among = f" Krippendorff's α among the raters alone: {raters:.3f}." if raters is not None else ""
    parts += ["<h2>Results</h2>", results_table(results), "<h2>Agreement with the gold labels</h2>",
              "<p>Spearman ρ: expected rating against the gold rating; NDCG: each query's pairs ranked by expected "
              "rating; agreed pairs (raters in agreement) are the ceiling to compare a judge with "
              f"(docs/metrics.md).{among}</p>", agreement_table(results), "<h2>Figures</h2>"]
    for name, (caption, png) in figures.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure id="{name}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report (default `RUN_DIR/report/report.html`) and its PNGs beside it; return the HTML path."""
    from lref.io import atomic_write

    results = load_results(run_dir)
    out = Path(out) if out else Path(run_dir) / REPORT_DIR / REPORT_NAME
    figures = build_figures(results)
    for name, (_, png) in figures.items():
        with atomic_write(out.parent / f"{name}.png", "wb") as handle:
            handle.write(png)
    with atomic_write(out) as handle:
        handle.write(render_html(results, figures))
    return out


__all__ = ["agreement_table", "build_figures", "load_results", "render_html", "results_table", "write_report"]
