"""The shipped demo config: valid, and it runs every baseline and the whole LREF chain."""

from __future__ import annotations

from rich.console import Console

from lref.demo import default_config_path, results_table
from lref.pipeline import STAGES, load_config


def test_shipped_demo_config_is_valid_and_complete():
    config = load_config(default_config_path())
    assert list(config.stages) == [s for s in STAGES if s in config.stages]
    assert set(config.stages) == {"lexical", "zero-shot", "bert", "llm-base", "select", "sft", "cot", "dpo", "distill"}
    assert config.data.format == "synthetic" and config.model == "gemma-3-270m"


def test_results_table_lists_every_system_and_skips():
    metrics = {"accuracy": 0.61, "macro_f1": 0.42, "weighted_f1": 0.58, "over_estimate_share": 0.2,
               "ci95": {"weighted_f1": [0.55, 0.61]}, "pairs_per_s": 20.0}
    results = {"eval": {"pairs": 300, "scheme": "graded3"}, "systems": [
        {"name": "lexical", "title": "Lexical", "n_train": 100, "metrics": metrics},
        {"name": "dpo", "title": "+DPO", "skipped": "too few pairs"},
    ]}
    console = Console(record=True, width=200)
    console.print(results_table(results))
    text = console.export_text()
    assert "Lexical" in text and "0.580 [0.550, 0.610]" in text and "20.0" in text
    assert "skipped: too few pairs" in text
