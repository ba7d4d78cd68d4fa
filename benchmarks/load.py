"""Load test of `lref serve student` with locust (as a library, headless), hostile requests mixed in.

    .venv/bin/python benchmarks/load.py --model runs/demo/stages/distill/model [--users 16 64 256] [--duration 20]
    .venv/bin/python benchmarks/load.py --tiny --duration 3          # smoke check with a tiny random student

It starts the service as its own process on a free loopback port (never another interface), then for each user
count runs locust users that each send requests back to back: 99% normal requests of --pairs-per-request pairs,
1% hostile ones, in turn a field over --max-field-chars, bytes that are not UTF-8, a batch over --max-batch-pairs and
a body over --max-body-bytes. Each level stops after --duration seconds or --max-requests requests, whichever comes
first (a --warmup before it is not counted). It reports per level the pairs/s scored, p50/p99 of the normal requests
and the responses by status code, and writes benchmarks/results/load.json (atomically). The goal it checks: no 5xx
at any level and a normal p99 under 20 ms at 16 users.

Without ONNX files in --model, the student is exported first (to a temporary folder) for --backend int8/onnx. The
load generator runs on the same machine: on a small one it takes CPU from the server, and is part of what is
measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import RESULTS, ROOT, machine, utc_now

DEFAULT_MODEL = ROOT / "runs" / "demo" / "stages" / "distill" / "model"
DEFAULT_OUT = RESULTS / "load.json"
HOSTILE_KINDS = ("long_field", "bad_utf8", "oversize_batch", "oversize_body")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="load.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL) if DEFAULT_MODEL.is_dir() else None,
                        help=f"Student folder (trained or exported); default {DEFAULT_MODEL} when it exists.")
    parser.add_argument("--tiny", action="store_true", help="Serve a tiny random student instead (smoke check).")
    parser.add_argument("--backend", default=None, help="int8, onnx or torch (default int8; torch with --tiny).")
    parser.add_argument("--users", type=int, nargs="+", default=[16, 64, 256], help="Concurrent users per level.")
    parser.add_argument("--duration", type=float, default=20.0, help="Measured seconds per level.")
    parser.add_argument("--warmup", type=float, default=2.0, help="Seconds per level before measuring.")
    parser.add_argument("--max-requests", type=int, default=200_000, help="Most measured requests per level.")
    parser.add_argument("--hostile", type=float, default=0.01, help="Share of hostile requests.")
    parser.add_argument("--pairs-per-request", type=int, default=1, help="Pairs in each normal request.")
    parser.add_argument("--threads", type=int, default=None, help="Server threads (--threads of the service).")
    parser.add_argument("--micro-batch-size", type=int, default=64, help="The service's --micro-batch-size.")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="The service's --max-wait-ms.")
    parser.add_argument("--max-batch-pairs", type=int, default=256, help="The service's --max-batch-pairs.")
    parser.add_argument("--max-field-chars", type=int, default=2000, help="The service's --max-field-chars.")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="The service's --max-body-bytes.")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="Where to write the JSON results.")
    args = parser.parse_args(argv)
    if not args.tiny and not args.model:
        parser.error(f"--model is required ({DEFAULT_MODEL} does not exist), or use --tiny")
    args.backend = args.backend or ("torch" if args.tiny else "int8")
    return args


def tiny_student(folder: Path) -> Path:
    """A tiny random cross-encoder trained for one step: the smallest folder the service loads."""
    from lref.data.records import Record
    from lref.labels import get_scheme
    from lref.testing import build_tiny_encoder
    from lref.training.cross_encoder import CrossEncoderConfig, train_cross_encoder

    labels = get_scheme("graded3").labels
    records = [Record(f"r{i}", f"drill {i}", "DeWalt drill kit", label=labels[i % 3]) for i in range(6)]
    config = CrossEncoderConfig(model=str(build_tiny_encoder(folder / "encoder")), output_dir=str(folder / "student"),
                                max_steps=1, batch_size=4, progress=False, threads=1)
    return Path(train_cross_encoder(config, records))


def servable(folder: Path, backend: str, scratch: Path) -> Path:
    """`folder`, or its ONNX export when the backend needs one and the folder has none."""
    if backend == "torch" or (folder / "model.onnx").is_file():
        return folder
    from lref.models.onnx import ExportConfig, export_student

    print(f"exporting {folder} to ONNX ...", file=sys.stderr)
    return Path(export_student(ExportConfig(model=str(folder), output_dir=str(scratch / "onnx"))))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(folder: Path, args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "lref.cli", "serve", "student", str(folder), "--backend", args.backend,
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
               "--micro-batch-size", str(args.micro_batch_size), "--max-wait-ms", str(args.max_wait_ms),
               "--max-batch-pairs", str(args.max_batch_pairs), "--max-field-chars", str(args.max_field_chars),
               "--max-body-bytes", str(args.max_body_bytes), "--limit-concurrency", str(max(args.users) * 2 + 16)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = {key: value for key, value in os.environ.items() if key != "LREF_SERVE_TOKEN"}  # loopback: open
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def wait_until_up(process: subprocess.Popen, url: str, timeout_s: float = 180) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited: {process.stdout.read().decode(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service did not come up within {timeout_s:.0f} s")
        time.sleep(0.2)


def hostile_body(kind: str, args: argparse.Namespace) -> bytes:
    if kind == "long_field":
        return json.dumps({"pairs": [{"query": "q" * (args.max_field_chars + 1), "title": "drill"}]}).encode()
    if kind == "bad_utf8":
        return b'{"pairs": [{"query": "\xff\xfe\xc3(", "title": "drill"}]}'
    if kind == "oversize_batch":
        return json.dumps({"pairs": [{"query": "q", "title": "t"}] * (args.max_batch_pairs + 1)}).encode()
    return b'{"pairs": [{"query": "' + b"x" * args.max_body_bytes + b'", "title": "t"}]}'


def run_level(url: str, users: int, args: argparse.Namespace, queries: list[str]) -> dict:
    """One locust run of `users` users; the measured figures."""
    import gevent
    import numpy as np
    from locust import FastHttpUser, constant, events, task
    from locust.env import Environment

    state = {"measuring": False, "requests": 0, "hostile": 0}
    statuses: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    normal_ms: list[float] = []
    hostile = [hostile_body(kind, args) for kind in HOSTILE_KINDS]
    headers = {"content-type": "application/json"}
    normal = [json.dumps({"pairs": [{"query": queries[(i + j) % len(queries)], "title": "DeWalt 20V drill driver kit",
                                     "brand": "DeWalt"} for j in range(args.pairs_per_request)]}).encode()
              for i in range(len(queries))]

    class Client(FastHttpUser):
        host = url
        wait_time = constant(0)
        network_timeout = connection_timeout = 60.0

        def on_start(self):
            self.sent = 0

        @task
        def relevance(self):
            self.sent += 1
            # A fixed pattern per user (every 1/hostile-th request) keeps the share exact and the run repeatable.
            every = max(1, round(1 / args.hostile)) if args.hostile > 0 else 0
            if every and (self.sent + id(self)) % every == 0:
                state["hostile"] += 1  # the kinds take turns across all users
                kind = HOSTILE_KINDS[state["hostile"] % len(HOSTILE_KINDS)]
                body, name = hostile[HOSTILE_KINDS.index(kind)], f"hostile:{kind}"
            else:
                body, name = normal[self.sent % len(normal)], "normal"
            with self.client.post("/v1/relevance", data=body, headers=headers, name=name,
                                  catch_response=True) as response:
                if name != "normal" and 400 <= response.status_code < 500:
                    response.success()  # refusing a hostile request is the right answer

    def on_request(request_type, name, response_time, response_length, response=None, exception=None, **kwargs):
        if not state["measuring"]:
            return
        status = str(getattr(response, "status_code", 0) or 0) if exception is None or response is not None else "0"
        statuses[status] += 1
        by_kind[name] += 1
        if name == "normal" and status == "200":
            normal_ms.append(response_time)
        state["requests"] += 1
        if state["requests"] >= args.max_requests:
            runner.quit()

    env = Environment(user_classes=[Client], events=events)
    events.request.add_listener(on_request)
    runner = env.create_local_runner()
    try:
        runner.start(users, spawn_rate=max(users, 1))
        gevent.sleep(args.warmup)
        state["measuring"], started = True, time.perf_counter()
        stopper = gevent.spawn_later(args.duration, runner.quit)
        runner.greenlet.join()
        elapsed = time.perf_counter() - started
        stopper.kill()
    finally:
        events.request.remove_listener(on_request)
    ms = np.asarray(normal_ms or [float("nan")])
    five_xx = sum(count for status, count in statuses.items() if status.startswith("5"))
    return {
        "users": users,
        "seconds": round(elapsed, 2),
        "requests": state["requests"],
        "normal_requests_ok": len(normal_ms),
        "hostile_requests": sum(count for name, count in by_kind.items() if name.startswith("hostile")),
        "pairs_per_s": round(len(normal_ms) * args.pairs_per_request / elapsed, 1),
        "normal_p50_ms": round(float(np.percentile(ms, 50)), 2),
        "normal_p99_ms": round(float(np.percentile(ms, 99)), 2),
        "status_counts": dict(sorted(statuses.items())),
        "five_xx": five_xx,  # 503/504 here are load shed by the queue bound and the request timeout
        "transport_errors": statuses.get("0", 0),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import gevent.monkey

    gevent.monkey.patch_all()  # before anything opens sockets; locust would do it on import anyway

    load_before = os.getloadavg()  # other work on the machine takes CPU from the server: say how much
    with tempfile.TemporaryDirectory(prefix="lref-load-") as scratch:
        scratch = Path(scratch)
        folder = tiny_student(scratch) if args.tiny else servable(Path(args.model), args.backend, scratch)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_service(folder, args, port)
        try:
            wait_until_up(process, url)
            queries = [f"cordless drill {i} volt" for i in range(97)]
            levels = []
            for users in args.users:
                level = run_level(url, users, args, queries)
                print(json.dumps(level), file=sys.stderr)
                levels.append(level)
        finally:
            process.terminate()
            process.wait(timeout=30)

    at16 = next((level for level in levels if level["users"] == 16), None)
    result = {
        "created": utc_now(),
        "machine": machine(),
        "load_avg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "command": shlex.join(["python", "benchmarks/load.py", *(sys.argv[1:] if argv is None else argv)]),
        "model": "tiny random student (--tiny)" if args.tiny else str(args.model),
        "backend": args.backend,
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "max_requests": args.max_requests,
                     "hostile_share": args.hostile, "pairs_per_request": args.pairs_per_request,
                     "micro_batch_size": args.micro_batch_size, "max_wait_ms": args.max_wait_ms,
                     "threads": args.threads, "client": "locust FastHttpUser, no think time, same machine"},
        "levels": levels,
        "goal": {"no_5xx": all(level["five_xx"] == 0 for level in levels),
                 "p99_under_20ms_at_16_users": None if at16 is None else at16["normal_p99_ms"] < 20.0},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".json.tmp")
    partial.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    partial.replace(out)
    print(json.dumps(result["goal"]))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
