"""The embedded default job: the whole LREF chain and every baseline on the synthetic catalog, with real weights.

`lref demo` (and `make demo`) runs the pipeline config shipped beside this module (`demo.yaml`): the synthetic
home-and-garden catalog split by query; the lexical, zero-shot, BERT (MiniLM) and LLM-base baselines; then
selection, SFT on the selected pairs, Multi-CoT (EE, RA, DR), DPO and the distilled MiniLM student, each evaluated on
the same held-out pairs. It prints the results table and what it does and does not show, writes the HTML report and
`demo.json` (the machine, its CPU flags, the precision and every stage's time). Sized to finish within 15 minutes on
2 CPU cores; re-running resumes: finished stages are kept.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DEMO_RECORD = "demo.json"
"""The demo's own record in its run dir: machine, precision, stage times, total."""
SHORT_TITLES = {
    "lexical": "lexical", "zero-shot": "zero-shot LLM", "bert": "BERT", "mpnet-base": "MPNet",
    "llm-base": "LLM SFT, all", "sft": "+ selection", "cot-ee": "+ EE", "cot-ra": "+ RA", "cot-dr": "+ DR",
    "dpo": "+ DPO", "distill": "student",
}
"""System names short enough for the results table to fit an 80-column terminal."""


def default_config_path() -> Path:
    return Path(str(resources.files("lref") / "demo.yaml"))


@dataclass
class DemoConfig:
    """Settings of the demo job."""

    out_dir: str = field(default="runs/demo", metadata={"help": "Run directory: every artefact, results and report."})
    config: str | None = field(
        default=None, metadata={"help": "Pipeline config to run instead of the shipped demo.yaml."}
    )
    fresh: bool = field(default=False, metadata={"help": "Re-run every stage instead of keeping finished ones."})


def results_table(results: dict[str, Any]):
    """A rich table of every evaluated system: training pairs, accuracy, macro- and weighted-F1 with its 95% interval,
    over-estimate share and scoring speed, narrow enough for 80 columns."""
    from rich import box
    from rich.table import Table

    evaluation = results.get("eval", {})
    table = Table(title=f"{evaluation.get('pairs', '?')} held-out pairs ({evaluation.get('scheme', '')}), calibrated",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("system", "train", "acc", "macro-F1", "wF1 [95% CI]", "over", "pairs/s"):
        table.add_column(column, justify="left" if column == "system" else "right", no_wrap=True)
    for system in results["systems"]:
        title = SHORT_TITLES.get(system["name"], system["title"])
        if "metrics" not in system:
            table.add_row(title, "", "", "", "skipped (see the log)", "", "")
            continue
        m = system["metrics"]
        ci = (m.get("ci95") or {}).get("weighted_f1")
        interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        speed = m.get("pairs_per_s")
        table.add_row(title, str(system.get("n_train") or "-"), f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}",
                      f"{m['weighted_f1']:.3f}{interval}", f"{m['over_estimate_share']:.3f}",
                      (f"{speed:.0f}" if speed >= 100 else f"{speed:.1f}") if speed else "")
    return table


def closing_notes(results: dict[str, Any], run_dir: str | Path) -> list[str]:
    """What the demo shows and does not, where the real-data figures are, and what to run next."""
    pairs = results.get("eval", {}).get("pairs", "?")
    lines = [
        "These sizes show every stage running on real weights, not the method's value: a few hundred training "
        f"pairs, {pairs} held-out pairs, and a synthetic catalog whose labels follow word matches (so the lexical "
        "model is hard to beat). Real-data figures, with paired intervals: benchmarks/RESULTS.md and "
        "docs/homedepot.md.",
        "",
        "Next, on your own labelled pairs:",
        "  lref data inspect pairs.csv          columns, labels, majority floor",
        "  cp configs/homedepot.yaml my.yaml    then point data.train, data.eval at yours",
        "  lref run my.yaml                     every baseline and the chain, resumable",
        f"  lref judge -m {run_dir}/stages/dpo/model -d new.csv -o labels.jsonl --budget 50",
        "                                       label pairs no human has judged; the 50 to review",
        f"  lref export {run_dir}/stages/distill/model -o student",
        "  lref serve student student           the distilled student over HTTP",
    ]
    return lines


def demo_record(run_dir: Path) -> dict[str, Any]:
    """The machine, its precision and every stage's wall time (from the stage manifests) and their sum."""
    from lref.device import machine_info
    from lref.pipeline import STAGES, read_manifest

    stages = {}
    for name in STAGES:
        manifest = read_manifest(run_dir / "stages" / name)
        if manifest and manifest.get("status") == "done":
            stages[name] = manifest.get("wall_time_s")
    return {"machine": machine_info(), "stage_seconds": stages,
            "total_stage_seconds": round(sum(v for v in stages.values() if v), 1)}


def run_demo(config: DemoConfig | None = None, console=None) -> dict[str, Any]:
    """Run the demo pipeline, write the report and `demo.json`, print the table and the closing notes; returns the
    pipeline results."""
    from rich.console import Console

    from lref.device import machine_info
    from lref.io import write_json
    from lref.pipeline import load_config, run_pipeline
    from lref.report import write_report

    config = config or DemoConfig()
    console = console or Console()
    # transformers 5's renaming notices (gradient -> activation checkpointing) would bury the progress lines
    warnings.filterwarnings("ignore", message=r".*deprecated and will be removed in v6", category=FutureWarning)
    pipeline_config = load_config(config.config or default_config_path())
    first = next(iter(pipeline_config.stages))
    machine = machine_info()
    console.print(f"machine: {machine['cpu']}, {machine['logical_cpus']} CPUs, {machine['precision']} "
                  f"(flags: {', '.join(machine['flags']) or 'none of ' + 'avx2/avx512/amx'})")
    results = run_pipeline(pipeline_config, run_dir=config.out_dir, from_stage=first if config.fresh else None,
                           echo=console.print)
    report = write_report(config.out_dir)
    write_json(Path(config.out_dir) / DEMO_RECORD, demo_record(Path(config.out_dir)))
    console.print(results_table(results))
    for line in closing_notes(results, config.out_dir):
        console.print(line, highlight=False, markup=False)
    console.print(f"report: {report}", highlight=False)
    return results
