"""What `lref judge` costs: unlabelled Home Depot pairs labelled by the int8 ONNX student (as it would serve) and by
the LLM judge, with the cost report `lref.judge` writes.

    .venv/bin/python benchmarks/judge.py [--pairs 10000] [--llm-pairs 100] [--threads 2] [--student DIR]

(a) Student: a MiniLM-L6 cross-encoder (`--student`: a trained folder or an `lref export` folder; default: one built
    here from the installed minilm-l6 weights with one training step, so its head is as good as untrained and its
    speed is a trained student's) exported to int8 ONNX, judging --pairs pairs: all of dev.csv, topped up with the
    first train.csv pairs when dev.csv has fewer (labels ignored; blind.csv is never read).
(b) LLM: the zoo Gemma (`--llm`, real weights) judging the first --llm-pairs of the same pairs, and the bare
    `LabelScorer` on the same pairs, to show that judging runs at the scorer's speed.

Each judge run's figures are `judge`'s own cost report (pairs/s and CPU-seconds per 1,000 pairs, process CPU time,
model loading included; `scoring_pairs_per_s` leaves the load out). The load average is read before and after:
other jobs on the machine slow the figures down. Writes benchmarks/results/judge.json (atomically).

The data are Kaggle competition data and stay outside the repository: ../shared/datasets/homedepot/.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from common import HOMEDEPOT, RESULTS, load_average, utc_now

DEFAULT_OUT = RESULTS / "judge.json"


def scoring_rate(model_cost: dict) -> float | None:
    """Pairs per second of scoring alone (the model's load time left out)."""
    seconds = model_cost["wall_s"] - (model_cost["load_s"] or 0.0)
    return round(model_cost["pairs_scored"] / seconds, 2) if model_cost["pairs_scored"] and seconds > 0 else None


def build_student(folder: Path, train) -> Path:
    """A MiniLM-L6 cross-encoder from the installed weights, one optimizer step on a few pairs, exported to int8."""
    from lref.models.onnx import ExportConfig, export_student
    from lref.training.cross_encoder import CrossEncoderConfig, train_cross_encoder

    config = CrossEncoderConfig(model="minilm-l6", output_dir=str(folder / "student"), max_steps=1, batch_size=8,
                                progress=False, threads=2)
    student = train_cross_encoder(config, train[:16])
    return export_student(ExportConfig(model=str(student), output_dir=str(folder / "export")))


def run_judge(models: list[str], records, out: Path, threads: int | None, batch_size: int) -> dict:
    from lref.judge import JudgeConfig, judge

    config = JudgeConfig(models=models, out=str(out), scheme="graded3", threads=threads, batch_size=batch_size,
                         budget=100, progress=True)
    before = load_average()
    report = judge(config, records)
    cost = dict(report.cost)
    cost["models"] = [{**entry, "scoring_pairs_per_s": scoring_rate(entry)} for entry in cost["models"]]
    return {"batch_size": batch_size, "threads": threads, "load_average_before": before,
            "load_average_after": load_average(), "low_confidence": report.low_confidence, **cost}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10000, help="pairs the student judges")
    parser.add_argument("--llm-pairs", type=int, default=100, help="pairs the LLM judges (0: skip the LLM)")
    parser.add_argument("--student", default=None, help="a trained student or export folder (default: build one)")
    parser.add_argument("--llm", default="gemma-3-270m", help="the LLM judge (zoo name or folder)")
    parser.add_argument("--threads", type=int, default=2, help="scoring threads (torch / onnxruntime)")
    parser.add_argument("--batch-size", type=int, default=32, help="student pairs per forward pass")
    parser.add_argument("--llm-batch-size", type=int, default=16, help="LLM pairs per forward pass")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)

    dev, train_csv = HOMEDEPOT / "dev.csv", HOMEDEPOT / "train.csv"
    if not dev.is_file() or not train_csv.is_file():
        print(f"error: {HOMEDEPOT} holds no dev.csv and train.csv. This benchmark needs the Home Depot data in "
              "../shared/datasets/homedepot/ beside the repository (Kaggle data, never shipped with lref).",
              file=sys.stderr)
        return 2

    import torch

    from lref.data import load_records
    from lref.io import write_json
    from lref.judge import read_pool

    torch.set_num_threads(args.threads)
    pool = read_pool(dev, "homedepot")
    train = load_records(train_csv, "homedepot")  # labelled: the student's one training step needs a few labels
    top_up = [dataclasses.replace(r, label=None) for r in train[: max(0, args.pairs - len(pool))]]
    records = (pool + top_up)[: args.pairs]
    with tempfile.TemporaryDirectory(prefix="lref-judge-bench-") as folder:
        results = measure(args, argv, Path(folder), records, train, min(len(pool), args.pairs))
    write_json(args.out, results)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def measure(args, argv: list[str] | None, work: Path, records, train, from_dev: int) -> dict:
    """Both judges' figures; the student and the labels go under `work`."""
    from lref.device import machine_info
    from lref.models.factory import make_scorer
    from lref.models.scorer import ScorerConfig

    results: dict = {"command": " ".join(["python benchmarks/judge.py", *(argv if argv is not None else sys.argv[1:])]),
                     "date": utc_now(), "machine": machine_info(),
                     "pairs": {"total": len(records), "dev_csv": from_dev, "train_csv": len(records) - from_dev}}
    student = Path(args.student) if args.student else build_student(work, train)
    results["student"] = {"model": args.student or "minilm-l6, one training step, int8 ONNX export",
                          **run_judge([str(student)], records, work / "student.jsonl", args.threads,
                                      args.batch_size)}
    entry = results["student"]
    print(f"student: {entry['pairs']} pairs, {entry['pairs_per_s']} pairs/s "
          f"({entry['models'][0]['scoring_pairs_per_s']} scoring only), {entry['cpu_s_per_1000_pairs']} CPU-s per "
          f"1,000 pairs; load average {entry['load_average_before']} -> {entry['load_average_after']}",
          file=sys.stderr)
    if args.llm_pairs:
        sample = records[: args.llm_pairs]
        results["llm"] = {"model": args.llm, **run_judge([args.llm], sample, work / "llm.jsonl", args.threads,
                                                         args.llm_batch_size)}
        scorer = make_scorer(args.llm, scheme="graded3",
                             config=ScorerConfig(batch_size=args.llm_batch_size, num_threads=args.threads))
        start = time.perf_counter()
        scorer.score(sample)
        seconds = time.perf_counter() - start
        results["llm"]["bare_scorer_pairs_per_s"] = round(len(sample) / seconds, 2)
        entry = results["llm"]
        print(f"llm: {entry['pairs']} pairs, judge {entry['models'][0]['scoring_pairs_per_s']} pairs/s scoring "
              f"(with load {entry['pairs_per_s']}), bare scorer {entry['bare_scorer_pairs_per_s']} pairs/s, "
              f"{entry['cpu_s_per_1000_pairs']} CPU-s per 1,000 pairs", file=sys.stderr)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
