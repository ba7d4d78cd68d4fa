"""The embedded default job: the synthetic catalog, the real Gemma-3-270M, LoRA SFT, scoring and evaluation.

`lref demo` (and `make demo`) runs it end to end on a laptop CPU in a few minutes:
1. generate the synthetic catalog and split it by query into train / dev / test;
2. score the test split with the untuned base model (zero-shot) as the "before" figure;
3. fine-tune the model with LoRA on a train sample;
4. score the test split with the tuned model and print both evaluations side by side.
Everything it writes lands in `out_dir`: data, adapter, prediction files and `summary.json`.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lref.data import split_by_query, write_records
from lref.data.records import Record
from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog
from lref.io import write_json
from lref.labels import get_scheme
from lref.metrics import evaluate, format_report
from lref.models.loading import load_causal_lm
from lref.models.scorer import LabelScorer, ScorerConfig
from lref.predictions import write_predictions
from lref.stages.sft import SFTStageConfig, train_sft


@dataclass
class DemoConfig:
    """Settings of the demo job; the defaults finish in a few minutes on 2 CPU cores."""

    out_dir: str = field(default="runs/demo", metadata={"help": "Folder for every artefact of the run."})
    model: str = field(default="gemma-3-270m", metadata={"help": "Base LLM: a zoo name or an HF folder."})
    scheme: str = field(default="graded3", metadata={"help": "Label scheme of the synthetic catalog."})
    catalog_pairs: int = field(default=4000, metadata={"help": "Pairs in the generated catalog before splitting."})
    label_noise: float = field(default=0.05, metadata={"help": "Share of catalog labels flipped to another grade."})
    train_pairs: int = field(default=480, metadata={"help": "Training pairs sampled from the train split."})
    test_pairs: int = field(default=300, metadata={"help": "Test pairs scored before and after tuning."})
    epochs: float = field(default=1.0, metadata={"help": "SFT epochs over the training sample."})
    batch_size: int = field(default=8, metadata={"help": "SFT batch size."})
    learning_rate: float = field(default=2e-4, metadata={"help": "SFT peak learning rate."})
    seed: int = field(default=0, metadata={"help": "Seed for the catalog, the samples and training."})
    bootstrap: int = field(default=200, metadata={"help": "Bootstrap resamples for the 95% intervals."})


def _sample(records: list[Record], n: int, seed: int) -> list[Record]:
    if n >= len(records):
        return list(records)
    return random.Random(seed).sample(records, n)


def _score_and_evaluate(model_ref: str, records: list[Record], scheme, out_path: Path, bootstrap: int) -> dict[str, Any]:
    model, tokenizer, _ = load_causal_lm(model_ref)
    scorer = LabelScorer(model, tokenizer, scheme, ScorerConfig(progress=True))
    started = time.perf_counter()
    predictions = scorer.predict(records)
    seconds = time.perf_counter() - started
    write_predictions(out_path, predictions)
    metrics = evaluate(records, predictions, scheme, bootstrap=bootstrap)
    metrics["pairs_per_s"] = len(records) / seconds
    return metrics


def run_demo(config: DemoConfig | None = None, console=None) -> dict[str, Any]:
    """Run the demo and return its summary (also written to `out_dir/summary.json`)."""
    from rich.console import Console

    config = config or DemoConfig()
    console = console or Console()
    out = Path(config.out_dir)
    scheme = get_scheme(config.scheme)

    console.rule("1. synthetic catalog")
    catalog = generate_catalog(
        SyntheticCatalogConfig(
            n_pairs=config.catalog_pairs, scheme=scheme.name, label_noise=config.label_noise, seed=config.seed
        )
    )
    splits = split_by_query(catalog, seed=config.seed)
    for name, records in splits.items():
        write_records(out / "data" / f"{name}.jsonl", records)
    train = _sample(splits["train"], config.train_pairs, config.seed)
    test = _sample(splits["test"], config.test_pairs, config.seed)
    console.print(
        f"{len(catalog)} pairs; split by query into "
        + ", ".join(f"{name} {len(records)}" for name, records in splits.items())
        + f"; training on {len(train)}, testing on {len(test)}"
    )

    console.rule(f"2. zero-shot {config.model}")
    before = _score_and_evaluate(config.model, test, scheme, out / "predictions_zero_shot.jsonl", config.bootstrap)
    console.print(format_report(before, scheme))

    console.rule(f"3. LoRA SFT of {config.model} on {len(train)} pairs")
    shutil.rmtree(out / "sft", ignore_errors=True)  # a demo run always trains afresh
    started = time.perf_counter()
    adapter = train_sft(
        SFTStageConfig(
            model=config.model,
            scheme=scheme.name,
            output_dir=str(out / "sft"),
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            seed=config.seed,
        ),
        train,
    )
    train_seconds = time.perf_counter() - started

    console.rule("4. tuned model on the test split")
    after = _score_and_evaluate(str(adapter), test, scheme, out / "predictions_sft.jsonl", config.bootstrap)
    console.print(format_report(after, scheme))

    summary = {
        "config": asdict(config),
        "train_pairs": len(train),
        "test_pairs": len(test),
        "sft_seconds": round(train_seconds, 1),
        "adapter": str(adapter),
        "zero_shot": before,
        "sft": after,
    }
    write_json(out / "summary.json", summary)
    console.rule("summary (held-out test split of the synthetic catalog)")
    for name, metrics in (("zero-shot", before), ("LoRA SFT", after)):
        console.print(
            f"{name:>10}: accuracy {metrics['accuracy']:.3f} (majority floor {metrics['majority_floor']:.3f}), "
            f"macro-F1 {metrics['macro_f1']:.3f}, weighted-F1 {metrics['weighted_f1']:.3f}, "
            f"over-estimates {metrics['over_estimate_share']:.3f}, {metrics['pairs_per_s']:.1f} pairs/s"
        )
    console.print(f"SFT took {train_seconds:.0f} s; artefacts in {out}/")
    return summary
