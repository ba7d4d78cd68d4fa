"""Scale-out on one machine: sharded / multi-process scoring and 2-process DDP training against 1 process.

    .venv/bin/python benchmarks/scale.py [--pairs 128] [--block-size 32] [--shards 3] [--ddp-steps 6] [--model M]

(a) Scoring: the first N Home Depot dev pairs (graded3) scored with `lref.sharding.score_in_parallel` on 1 and 2
    worker processes (cores split evenly), end to end (worker start and model load included, as a user sees it);
    then as `--shards` separate shard runs merged with `merge_shard_files`, checked byte for byte against the
    unsharded prediction file. Model: runs/sft_quality/adapter when present, else gemma-3-270m.
(b) Training: a short LoRA SFT (tests/ddp_sft_driver.py, the library entry point unchanged) on the first 64 train
    pairs with real Gemma-3-270M, as 1 plain process (all cores) and under `accelerate launch` with 2 CPU processes
    (configs/accelerate/ddp_cpu.yaml, gloo, cores / 2 threads each). Rates exclude the first step (warm-up).

Writes benchmarks/results/scale.json (atomically). The data are Kaggle competition data and stay outside the
repository: ../shared/datasets/homedepot/.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HOMEDEPOT, RESULTS, ROOT, machine, utc_now

DEFAULT_OUT = RESULTS / "scale.json"
DEFAULT_ADAPTER = ROOT / "runs" / "sft_quality" / "adapter"
DRIVER = ROOT / "tests" / "ddp_sft_driver.py"
DDP_CONFIG = ROOT / "configs" / "accelerate" / "ddp_cpu.yaml"


def bench_scoring(args, records, scheme, work: Path) -> dict:
    from functools import partial

    from lref.models.factory import make_scorer
    from lref.models.scorer import ScorerConfig
    from lref.predictions import write_predictions
    from lref.sharding import (
        merge_shard_files,
        score_in_parallel,
        select_shard,
        write_shard_info,
    )

    config = ScorerConfig(batch_size=args.batch_size, top_k=3, max_length=512)
    build = partial(make_scorer, args.model, kind="llm", scheme=scheme, config=config, calibrated=False)
    rates, files = {}, {}
    for workers in (1, 2):
        start = time.perf_counter()
        result = score_in_parallel(build, records, workers=workers, block_size=args.block_size)
        seconds = time.perf_counter() - start
        rates[workers] = round(len(records) / seconds, 3)
        files[workers] = work / f"workers{workers}.jsonl"
        write_predictions(files[workers], result.predictions())
        print(f"scoring, {workers} worker(s): {len(records)} pairs in {seconds:.1f} s = {rates[workers]} pairs/s",
              flush=True)
    parts = []
    start = time.perf_counter()
    for index in range(args.shards):
        spec = f"{index}/{args.shards}"
        shard = select_shard(records, spec, args.block_size)
        part = work / f"shard{index}.jsonl"
        write_predictions(part, score_in_parallel(build, shard, block_size=args.block_size)
                          .predictions())
        write_shard_info(part, spec, [r.id for r in records], args.block_size)
        parts.append(part)
    merged = work / "merged.jsonl"
    merge_shard_files(parts, merged)
    sharded_seconds = time.perf_counter() - start
    identical = merged.read_bytes() == files[1].read_bytes()
    print(f"{args.shards} shards run one after another + merge: {sharded_seconds:.1f} s; identical: {identical}")
    return {
        "sharded_pairs_per_s": rates,
        "shard_outputs_identical": identical,
        "workers_outputs_identical": files[2].read_bytes() == files[1].read_bytes(),
        "shards_sequential_seconds": round(sharded_seconds, 2),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_training(processes: int, args, train: Path, work: Path, cores: int) -> dict:
    out = work / f"ddp{processes}"
    driver_args = [str(DRIVER), args.train_model, str(train), str(out), str(args.ddp_steps), str(args.ddp_batch_size)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(max(1, cores // processes))}
    if processes == 1:
        command = [sys.executable, *driver_args]
    else:
        accelerate = str(Path(sys.executable).with_name("accelerate"))
        command = [accelerate, "launch", "--config_file", str(DDP_CONFIG), "--num_processes", str(processes),
                   "--main_process_port", str(_free_port()), *driver_args]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"training with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    ranks = [json.loads(path.read_text()) for path in sorted((out / "ranks").glob("rank*.json"))]
    rate = min(r["steps_per_s"] for r in ranks)  # the step rate is that of the slowest process
    checksums = {round(r["trainable_checksum"], 6) for r in ranks}
    print(f"training, {processes} process(es): {rate:.3f} steps/s, {rate * args.ddp_batch_size * processes:.2f} "
          f"examples/s, wall {wall:.1f} s, replicas identical: {len(checksums) == 1}", flush=True)
    return {"steps_per_s": round(rate, 4), "examples_per_s": round(rate * args.ddp_batch_size * processes, 3),
            "wall_s": round(wall, 1), "replicas_identical": len(checksums) == 1, "world_size": ranks[0]["world_size"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=128, help="Dev pairs to score.")
    parser.add_argument("--block-size", type=int, default=32, help="Pairs per scoring block (the shard unit).")
    parser.add_argument("--batch-size", type=int, default=16, help="Pairs per forward pass.")
    parser.add_argument("--shards", type=int, default=3, help="Shards for the sharded-equals-unsharded check.")
    parser.add_argument("--model", default=None, help="Scoring model (default: runs/sft_quality/adapter, else "
                        "gemma-3-270m).")
    parser.add_argument("--train-model", default="gemma-3-270m", help="Model for the DDP training steps.")
    parser.add_argument("--ddp-steps", type=int, default=6, help="SFT steps per training run.")
    parser.add_argument("--ddp-batch-size", type=int, default=4, help="Examples per process and step.")
    parser.add_argument("--skip-training", action="store_true", help="Only the scoring part.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not (HOMEDEPOT / "dev.csv").is_file():
        print(f"error: {HOMEDEPOT}/dev.csv not found; this benchmark needs the Home Depot data in "
              "../shared/datasets/homedepot/", file=sys.stderr)
        return 2
    if args.model is None:
        args.model = str(DEFAULT_ADAPTER) if (DEFAULT_ADAPTER / "adapter_config.json").is_file() else "gemma-3-270m"

    from lref.data import load_records, write_records
    from lref.io import write_json
    from lref.models.loading import read_manifest
    from lref.models.scorer import scheme_for_model
    from lref.models.zoo import resolve_model
    from lref.sharding import available_cores

    cores = available_cores()
    scheme = scheme_for_model(read_manifest(resolve_model(args.model)), default="graded3")
    records = load_records(HOMEDEPOT / "dev.csv", "homedepot")[: args.pairs]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lref-scale-") as tmp:
        work = Path(tmp)
        result = {
            "scoring_model": args.model,
            "scheme": scheme.name,
            "n_pairs": len(records),
            "block_size": args.block_size,
            "batch_size": args.batch_size,
            "shards": args.shards,
        }
        result.update(bench_scoring(args, records, scheme, work))
        if not args.skip_training:
            train = work / "train.jsonl"
            write_records(train, load_records(HOMEDEPOT / "train.csv", "homedepot")[:64])
            runs = {n: run_training(n, args, train, work, cores) for n in (1, 2)}
            result.update(
                train_model=args.train_model,
                ddp_steps=args.ddp_steps,
                ddp_batch_size_per_process=args.ddp_batch_size,
                ddp_steps_per_s={n: run["steps_per_s"] for n, run in runs.items()},
                ddp_examples_per_s={n: run["examples_per_s"] for n, run in runs.items()},
                ddp_runs=runs,
            )
    result.update(
        cores=cores,
        load_avg_before=[round(x, 2) for x in load_before],
        load_avg_after=[round(x, 2) for x in os.getloadavg()],
        machine=machine(),
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        date=utc_now(),
    )
    write_json(args.out, result)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
