"""The shipped demo config: valid, and it runs every baseline and the whole LREF chain."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import run_lref
from rich.console import Console

from lref.demo import default_config_path, results_table
from lref.pipeline import STAGES, load_config
from lref.testing import build_tiny_causal_lm


def test_shipped_demo_config_is_valid_and_complete():
    config = load_config(default_config_path())
    assert list(config.stages) == [s for s in STAGES if s in config.stages]
    assert set(config.stages) == {"lexical", "zero-shot", "bert", "llm-base", "select", "sft", "cot", "dpo", "distill"}
    assert config.data.format == "synthetic" and config.model == "gemma-3-270m"


def test_results_table_lists_every_system_and_skips_in_80_columns():
    metrics = {"accuracy": 0.61, "macro_f1": 0.42, "weighted_f1": 0.58, "over_estimate_share": 0.2,
               "ci95": {"weighted_f1": [0.55, 0.61]}, "pairs_per_s": 20.0}
    names = ["lexical", "zero-shot", "bert", "llm-base", "sft", "cot-ee", "cot-ra", "cot-dr", "distill"]
    results = {"eval": {"pairs": 300, "scheme": "graded3"}, "systems": [
        *({"name": name, "title": name, "n_train": 3483, "metrics": {**metrics, "pairs_per_s": 1234.5}}
          for name in names),
        {"name": "dpo", "title": "+DPO", "skipped": "too few pairs"},
    ]}
    console = Console(record=True, width=80)
    console.print(results_table(results))
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    rows = [line for line in lines if "0.580 [0.55, 0.61]" in line]
    assert len(rows) == len(names)  # one line per system: nothing wrapped
    assert any(row.lstrip().startswith("LLM SFT, all") and "1234" in row for row in rows)
    assert any("+ DPO" in line and "skipped" in line for line in lines)


def test_demo_command_runs_a_config_and_ends_with_the_truthful_summary(monkeypatch, capsys, tmp_path):
    """`lref demo --config` on tiny random models: the same code path as `make demo` (pipeline, report, demo.json,
    table, closing notes), in seconds."""
    lm = str(build_tiny_causal_lm(tmp_path / "lm", embedding_scale=10.0))
    train = {"max_steps": 2, "batch_size": 4, "save_steps": 1, "progress": False, "max_length": 256}
    config = {
        "run_dir": str(tmp_path / "ignored"), "seed": 0, "model": lm,
        "data": {"format": "synthetic", "synthetic": {"n_pairs": 300, "descriptions": False}, "eval_fraction": 0.25,
                 "eval_pairs": 30},
        "eval": {"bootstrap": 10, "batch_size": 8, "max_length": 256, "progress": False},
        "stages": {"lexical": {"max_iter": 10}, "zero-shot": {"model": lm}, "llm-base": {"pairs": 16, **train},
                   "sft": {"pairs": 16, **train}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    out_dir = tmp_path / "demo"
    code, out, err = run_lref(monkeypatch, capsys, "demo", "--config", str(path), "--out-dir", str(out_dir))
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith("machine: ") for line in lines)
    # progress: stage k of n with the time so far, an estimate of the time left once a stage has been measured
    assert "[1/4] lexical: running on" in out and "[2/4] zero-shot: running scoring only" in out
    assert any(line.startswith("[4/4] sft: running") and "left" in line for line in lines), out
    assert "finished: total " in out and "slowest stage: " in out
    # each chain step says how many held-out decisions it changed
    for system in ("llm-base", "sft"):  # without start_from, sft continues the base model too
        assert any(line.strip().startswith(f"{system}: ") and "held-out labels differ from zero-shot" in line
                   for line in lines), system
    # the end: the table, what the demo does not show and where the real figures are, the next commands
    end = out[out.index("held-out pairs (graded3), calibrated"):]
    for text in ("zero-shot LLM", "not the method's value", "benchmarks/RESULTS.md", "lref data inspect",
                 "lref run my.yaml", f"{out_dir}/stages/distill/model", "report: "):
        assert text in end, text
    record = json.loads((out_dir / "demo.json").read_text())
    assert record["machine"]["precision"] in ("bf16", "float32") and record["machine"]["logical_cpus"] >= 1
    assert set(record["stage_seconds"]) == {"lexical", "zero-shot", "llm-base", "sft"}
    assert record["total_stage_seconds"] == pytest.approx(sum(record["stage_seconds"].values()), abs=0.2)
    results = json.loads((out_dir / "results.json").read_text())
    assert {s["name"]: s["n_train"] for s in results["systems"]}["zero-shot"] == 0
    assert (out_dir / "report" / "report.html").is_file()
