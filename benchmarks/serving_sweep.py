"""Many one-pair clients against the student service: server settings against pairs/s, latency and CPU.

    python benchmarks/serving_sweep.py --student DIR [--settings 0:5:1 1:0:2 ...] [--client wrk|python]

For each setting THREADS:MAX_WAIT_MS:WORKERS (THREADS 0: the server's default) it starts the real
`lref serve student --backend int8` (benchmarks/serving.py's `Service`, micro-batches of up to 64 pairs), times
--sequential-requests one-pair requests from one client, then --clients concurrent clients sending one pair each:
- `--client wrk` (default when the `wrk` program is installed; Debian package `wrk`): wrk's C event loop with
  --clients connections for --seconds after a 3 s warm-up, one dev pair per request in turn (a Lua script);
- `--client python`: serving.py's asyncio httpx clients (`concurrent_load`), --concurrent-requests in all.
It reads the CPU seconds of the server's processes (its workers included) per wall second and per pair, and with the
Python clients theirs per request. Before that
it scores the same dev pairs in process, 32 a call, with one and two threads: the model's own cost, the ceiling of any
service of it on this CPU. Clients and server share the machine's cores. Writes benchmarks/results/serving_sweep.json.
Needs ../shared/datasets/homedepot/dev.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HOMEDEPOT, RESULTS, load_average, machine, utc_now
from serving import Service, as_pair, concurrent_load, sequential_latency

WRK_SCRIPT = """
bodies = {%s}
i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, "/v1/relevance", nil, bodies[i])
end
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("RESULT %%d %%.3f %%d %%d %%.2f %%.2f\\n", summary.requests, summary.duration / 1e6,
    errors.status, errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
"""


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and its live descendants so far (Linux /proc)."""
    parents, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while being read
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total, frontier = 0.0, [root]
    while frontier:
        pid = frontier.pop()
        total += cpu.get(pid, 0.0)
        frontier += [child for child, parent in parents.items() if parent == pid]
    return total


def wrk_load(url: str, script: Path, clients: int, seconds: int) -> dict:
    command = ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    requests, seconds, non_2xx, socket_errors, p50, p99 = line.split()[1:]
    return {"clients": clients, "requests": int(requests), "seconds": float(seconds),
            "pairs_per_s": round(int(requests) / float(seconds), 1), "p50_ms": float(p50), "p99_ms": float(p99),
            "non_2xx": int(non_2xx), "socket_errors": int(socket_errors)}


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (the Python clients run in it)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="an `lref export` folder (model.int8.onnx)")
    parser.add_argument("--settings", nargs="+", default=["0:5:1", "0:0:1", "1:5:2", "1:0:2"],
                        help="THREADS:MAX_WAIT_MS:WORKERS per server run")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--pairs", type=int, default=1024, help="first N dev pairs")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=20, help="wrk's timed run")
    parser.add_argument("--concurrent-requests", type=int, default=1024, help="the python client's requests")
    parser.add_argument("--sequential-requests", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS / "serving_sweep.json"))
    args = parser.parse_args()
    settings = []
    for spec in args.settings:
        try:
            threads, wait, workers = spec.split(":")
            settings.append((int(threads), float(wait), int(workers)))
        except ValueError:
            parser.error(f"--settings takes THREADS:MAX_WAIT_MS:WORKERS, not {spec!r}")
    if args.client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk needs the wrk program (Debian: apt-get install wrk)")

    import numpy as np

    from lref.data import load_records
    from lref.io import write_json
    from lref.models.cross_encoder import pair_texts
    from lref.models.factory import make_scorer
    from lref.models.scorer import ScorerConfig

    records = load_records(HOMEDEPOT / "dev.csv", format="homedepot")[: args.pairs]
    in_process = {}
    for threads in (1, 2):
        scorer = make_scorer(args.student, kind="onnx", variant="int8",
                             config=ScorerConfig(batch_size=32, num_threads=threads))
        scorer.score(records[:64])
        started = time.perf_counter()
        scorer.score(records)
        in_process[f"{threads}_threads_pairs_per_s"] = round(len(records) / (time.perf_counter() - started), 1)
    tokens = [len(scorer.tokenizer(*pair_texts(r))["input_ids"]) for r in records]
    print(f"in process, 32 pairs a call: {in_process}", flush=True)

    pairs = [as_pair(r) for r in records]
    runs = []
    with tempfile.TemporaryDirectory(prefix="lref-sweep-") as scratch:
        script = Path(scratch) / "pairs.lua"
        script.write_text(WRK_SCRIPT % ",".join("[==[" + json.dumps({"pairs": [p]}) + "]==]" for p in pairs))
        for threads, wait, workers in settings:
            with Service(Path(args.student), "int8", 64, wait, threads or None, workers) as service:
                sequential = sequential_latency(service.url, pairs, args.sequential_requests)
                if args.client == "wrk":
                    wrk_load(service.url, script, args.clients, 3)  # warm-up
                cpu_before, started = tree_cpu_seconds(service.process.pid), time.perf_counter()
                client_before = own_cpu_seconds()
                if args.client == "wrk":
                    concurrent = wrk_load(service.url, script, args.clients, args.seconds)
                    timed_requests = concurrent["requests"]
                else:
                    concurrent = concurrent_load(service.url, pairs, args.clients, args.concurrent_requests, 1)
                    if workers > 1:  # /metrics describes whichever worker answers: not the whole service
                        concurrent["mean_pairs_per_model_call"] = None
                    timed_requests = 2 * concurrent["requests"]  # concurrent_load's warm-up and timed rounds
                wall = time.perf_counter() - started
                server_cpu, client_cpu = tree_cpu_seconds(service.process.pid), own_cpu_seconds() - client_before
            run = {"threads": threads or None, "max_wait_ms": wait, "workers": workers,
                   "sequential_p50_ms": sequential["p50_ms"], "sequential_p99_ms": sequential["p99_ms"],
                   "concurrent": concurrent, "server_cores_busy": round((server_cpu - cpu_before) / wall, 2),
                   "server_cpu_ms_per_pair": round(1000 * (server_cpu - cpu_before) / timed_requests, 2)}
            if args.client == "python":  # the clients run in this process (wrk's CPU is not measured)
                run["client_cpu_ms_per_request"] = round(1000 * client_cpu / timed_requests, 2)
            print(run, flush=True)
            runs.append(run)
    write_json(args.out, {
        "command": " ".join(["python benchmarks/serving_sweep.py", *sys.argv[1:]]),
        "machine": machine(), "date": utc_now(), "cpu_count": os.cpu_count(), "load_average_after": load_average(),
        "student": args.student, "client": args.client, "pairs": len(records), "clients": args.clients,
        "tokens_per_pair_p10_p50_p90": [float(x) for x in np.percentile(tokens, [10, 50, 90])],
        "in_process_int8": in_process, "runs": runs,
    })


if __name__ == "__main__":
    main()
