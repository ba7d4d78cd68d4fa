"""Serving speed: the distilled student (torch, ONNX fp32, ONNX int8) against the LLM judge, and the real service.

    .venv/bin/python benchmarks/serving.py --student runs/student [--llm runs/sft_quality/adapter] [--pairs 1024]

On the first N Home Depot dev pairs (graded3) it measures, and writes to benchmarks/results/serving.json (atomically):

(a) student pairs/s with each backend, batch 64, on the same N pairs (best of --repeats after a warm-up batch), and
    how far int8 and fp32 ONNX stray from torch (max |prob difference|, label agreement);
(b) LLM pairs/s with the fast `LabelScorer` (default batch) on the first --llm-pairs of the same pairs, and
    speedup = int8 pairs/s / LLM pairs/s;
(c) the real `lref serve student --backend int8`, started as its own process on a loopback port:
    - one client sending single pairs sequentially (--requests) -> p50 / p99 / mean latency in ms;
    - --clients concurrent asyncio clients, each sending requests of --client-pairs pairs (first value -> the
      headline `concurrent_pairs_per_s`) -> pairs/s, request latency and the mean pairs per model call the server
      reports in /metrics (what micro-batching achieved).

`--student` is a trained cross-encoder folder or an `lref export` folder. Without model.onnx / model.int8.onnx in
it, the student is exported first (to --onnx-dir, default a temporary folder). The load generator runs in this
process and shares the CPUs with the server: on a small machine it is part of what is measured.

The data are Kaggle competition data and stay outside the repository: ../shared/datasets/homedepot/dev.csv.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HOMEDEPOT, RESULTS, ROOT, machine, utc_now

DEFAULT_DATA = HOMEDEPOT / "dev.csv"
DEFAULT_OUT = RESULTS / "serving.json"
DEFAULT_LLM = ROOT / "runs" / "sft_quality" / "adapter"


def best_pairs_per_s(scorer, records, repeats: int, warmup: int) -> tuple[float, object]:
    """Best pairs/s over `repeats` full scorings after a warm-up on the first `warmup` pairs; also the last result."""
    scorer.score(records[:warmup])
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = scorer.score(records)
        best = min(best, time.perf_counter() - start)
    return len(records) / best, result


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    import numpy as np

    values = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2),
            "mean_ms": round(float(values.mean()), 2)}


def as_pair(record) -> dict:
    pair = {"query": record.query, "title": record.title}
    if record.brand:
        pair["brand"] = record.brand
    if record.description:
        pair["description"] = record.description[:2000]
    return pair


def batch_stats(url: str) -> tuple[float, float]:
    """(model calls, pairs scored) so far, from the server's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    samples = {s.name: s.value for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
               for s in family.samples if not s.labels}
    return samples["lref_student_batch_pairs_count"], samples["lref_student_batch_pairs_sum"]


class Service:
    """`lref serve student` as a child process on a free loopback port."""

    def __init__(self, folder: Path, backend: str, micro_batch_size: int, max_wait_ms: float, threads: int | None,
                 workers: int = 1):
        from lref.serve.background import free_port

        self.port, self.workers = free_port(), workers
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "lref.cli", "serve", "student", str(folder), "--backend", backend,
                        "--port", str(self.port), "--micro-batch-size", str(micro_batch_size),
                        "--max-wait-ms", str(max_wait_ms), "--log-level", "warning"]
        if threads:
            self.command += ["--threads", str(threads)]
        if workers > 1:
            self.command += ["--workers", str(workers)]

    def __enter__(self) -> "Service":
        import httpx

        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline, answered = time.monotonic() + 180, set()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited: {self.process.stdout.read().decode(errors='replace')}")
            try:
                response = httpx.get(f"{self.url}/healthz", timeout=1)
                if response.status_code == 200:
                    answered.add(response.json().get("pid"))
                    if len(answered) >= self.workers:  # every worker has loaded its model
                        return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the service did not come up within 180 s")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def sequential_latency(url: str, pairs: list[dict], requests: int, warmup: int = 20) -> dict:
    import httpx

    with httpx.Client(timeout=60) as client:
        for i in range(warmup):
            client.post(f"{url}/v1/relevance", json={"pairs": [pairs[i % len(pairs)]]}).raise_for_status()
        times = []
        for i in range(requests):
            body = {"pairs": [pairs[i % len(pairs)]]}
            start = time.perf_counter()
            client.post(f"{url}/v1/relevance", json=body).raise_for_status()
            times.append(time.perf_counter() - start)
    return {"requests": requests, **percentiles_ms(times), "requests_per_s": round(requests / sum(times), 1)}


async def _concurrent(url: str, pairs: list[dict], clients: int, per_client: int, client_pairs: int) -> tuple:
    import httpx

    times: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def run(worker: int) -> None:
            for i in range(per_client):
                offset = ((worker * per_client + i) * client_pairs) % len(pairs)
                body = {"pairs": [pairs[(offset + j) % len(pairs)] for j in range(client_pairs)]}
                start = time.perf_counter()
                response = await client.post(f"{url}/v1/relevance", json=body)
                response.raise_for_status()
                times.append(time.perf_counter() - start)

        await asyncio.gather(*(run(w) for w in range(clients)))  # warm the connections
        times.clear()
        start = time.perf_counter()
        await asyncio.gather(*(run(w) for w in range(clients)))
        wall = time.perf_counter() - start
    return wall, times


def concurrent_load(url: str, pairs: list[dict], clients: int, requests: int, client_pairs: int) -> dict:
    per_client = max(1, requests // clients)
    calls_before, pairs_before = batch_stats(url)
    wall, times = asyncio.run(_concurrent(url, pairs, clients, per_client, client_pairs))
    calls_after, pairs_after = batch_stats(url)
    total = clients * per_client
    return {
        "clients": clients,
        "client_pairs": client_pairs,
        "requests": total,
        "pairs_per_s": round(total * client_pairs / wall, 1),
        "requests_per_s": round(total / wall, 1),
        **percentiles_ms(times),
        # warm-up and timed rounds together: both run under the same load
        "mean_pairs_per_model_call": round((pairs_after - pairs_before) / max(calls_after - calls_before, 1), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", required=True, help="trained cross-encoder folder or `lref export` folder")
    parser.add_argument("--onnx-dir", default=None, help="where to export the student when it has no ONNX files")
    parser.add_argument("--llm", default=str(DEFAULT_LLM), help="LLM judge: lref adapter folder, HF folder or zoo name")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Home Depot dev.csv")
    parser.add_argument("--pairs", type=int, default=1024, help="first N dev pairs, scored by every student backend")
    parser.add_argument("--llm-pairs", type=int, default=256, help="first N of those scored by the LLM")
    parser.add_argument("--batch-size", type=int, default=64, help="student batch size (and server micro-batch)")
    parser.add_argument("--repeats", type=int, default=2, help="timed scorings per backend (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="threads for torch/ONNX Runtime (default: theirs)")
    parser.add_argument("--requests", type=int, default=500, help="sequential single-pair requests (latency)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--concurrent-requests", type=int, default=1024, help="requests over all concurrent clients")
    parser.add_argument("--client-pairs", default="1,16", help="pairs per concurrent request, comma-separated")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="the server's micro-batch wait")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)

    data = Path(args.data)
    if not data.is_file():
        print(
            f"error: {data} not found. This benchmark needs the Home Depot data in ../shared/datasets/homedepot/ "
            "beside the repository (Kaggle data, never shipped with lref); pass --data to point elsewhere.",
            file=sys.stderr,
        )
        return 2
    client_pairs = [int(x) for x in args.client_pairs.split(",") if x.strip()]

    import numpy as np
    import torch

    from lref.data import load_records
    from lref.io import write_json
    from lref.labels import get_scheme
    from lref.models.factory import load_student
    from lref.models.loading import load_causal_lm
    from lref.models.onnx import ONNX_FILES, ExportConfig, export_student
    from lref.models.scorer import LabelScorer, ScorerConfig, scheme_for_model

    if args.threads:
        torch.set_num_threads(args.threads)
    records = load_records(data, format="homedepot")[: args.pairs]
    student = Path(args.student)
    temporary = None
    if all((student / name).is_file() for name in ONNX_FILES.values()):
        exported = student
    else:
        if args.onnx_dir is None:
            temporary = tempfile.TemporaryDirectory(prefix="lref-serving-")
        onnx_dir = Path(args.onnx_dir or temporary.name)
        print(f"exporting {student} to {onnx_dir} ...", file=sys.stderr)
        exported = export_student(ExportConfig(model=str(student), output_dir=str(onnx_dir)))

    # (a) the student, three backends, the same pairs
    student_pps, results = {}, {}
    for backend in ("torch", "onnx", "int8"):
        scorer = load_student(exported, backend=backend, threads=args.threads, batch_size=args.batch_size)
        student_pps[backend], results[backend] = best_pairs_per_s(scorer, records, args.repeats, args.batch_size)
        print(f"student {backend}: {student_pps[backend]:.1f} pairs/s", file=sys.stderr)
    scheme = scorer.scheme
    agreement = {
        backend: {
            "max_abs_prob_diff_vs_torch": round(
                float(np.abs(results[backend].probs - results["torch"].probs).max()), 5),
            "label_agreement_vs_torch": round(float(np.mean(
                [a == b for a, b in zip(results[backend].predicted, results["torch"].predicted)])), 4),
        }
        for backend in ("onnx", "int8")
    }

    # (b) the LLM judge on a subset of the same pairs
    llm_records = records[: args.llm_pairs]
    model, tokenizer, manifest = load_causal_lm(args.llm)
    llm_scheme = scheme_for_model(manifest, default=get_scheme(scheme.name))
    llm = LabelScorer(model, tokenizer, llm_scheme, ScorerConfig(num_threads=args.threads))
    llm_pps, _ = best_pairs_per_s(llm, llm_records, 1, min(16, len(llm_records)))
    print(f"LLM: {llm_pps:.2f} pairs/s", file=sys.stderr)
    del model, llm

    # (c) the real service (int8), sequential latency and concurrent throughput
    pairs = [as_pair(r) for r in records]
    with Service(exported, "int8", args.batch_size, args.max_wait_ms, args.threads) as service:
        sequential = sequential_latency(service.url, pairs, args.requests)
        concurrent = [concurrent_load(service.url, pairs, args.clients, args.concurrent_requests, n)
                      for n in client_pairs]
        service_command = shlex.join(service.command)
    if temporary is not None:
        temporary.cleanup()

    result = {
        "student_pairs_per_s": {k: round(v, 1) for k, v in student_pps.items()},
        "llm_pairs_per_s": round(llm_pps, 2),
        "speedup": round(student_pps["int8"] / llm_pps, 1),
        "p50_ms": sequential["p50_ms"],
        "p99_ms": sequential["p99_ms"],
        "concurrent_pairs_per_s": concurrent[0]["pairs_per_s"] if concurrent else None,
        "sequential": sequential,
        "concurrent": concurrent,
        "onnx_agreement": agreement,
        "sizes": {"pairs": len(records), "llm_pairs": len(llm_records), "batch_size": args.batch_size,
                  "requests": args.requests, "clients": args.clients,
                  "concurrent_requests": args.concurrent_requests, "client_pairs": client_pairs,
                  "max_wait_ms": args.max_wait_ms, "repeats": args.repeats},
        "student": str(student),
        "llm": str(args.llm),
        "scheme": scheme.name,
        "service_command": service_command,
        "command": shlex.join([sys.executable, *sys.argv]),
        "threads": args.threads or torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "date": utc_now(),
        "machine": machine(),
        "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
    }
    write_json(args.out, result)

    print(f"{'measure':<58}{'value':>12}")
    rows = [(f"student {k} pairs/s (batch {args.batch_size}, {len(records)} pairs)", v)
            for k, v in result["student_pairs_per_s"].items()]
    rows += [(f"LLM pairs/s ({len(llm_records)} pairs)", result["llm_pairs_per_s"]),
             ("speedup int8 / LLM", result["speedup"]),
             (f"service p50 ms (1 pair, {args.requests} sequential)", result["p50_ms"]),
             ("service p99 ms", result["p99_ms"])]
    rows += [(f"service pairs/s ({c['clients']} clients x {c['client_pairs']} pairs)", c["pairs_per_s"])
             for c in concurrent]
    rows += [(f"  mean pairs per model call ({c['client_pairs']} pairs/request)", c["mean_pairs_per_model_call"])
             for c in concurrent]
    for name, value in rows:
        print(f"{name:<58}{value:>12}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
