"""``lref serve student``: the online relevance service over a distilled student (a cross-encoder folder, or the folder
``export_student`` wrote with its ONNX models).

Endpoints:

* ``POST /v1/relevance``: ``{"pairs": [{"query", "title", "brand"?, "description"?}, ...]}`` -> per pair the label,
  the probability of every grade (scheme order) and the expected grade (probability-weighted rating). Bad fields,
  too many pairs or malformed JSON -> 422 naming the pair index and field; a body over ``max_body_bytes`` -> 413; a
  failed model call -> 500 for the requests of that batch only.
* ``GET /healthz``: model, backend, label scheme and the label calibration applied (``label_bias``, or null).
* ``GET /metrics``: Prometheus text: requests by path and status, request latency, pairs per model call, queue depth.

Requests from concurrent clients are micro-batched: each request is cut into chunks of at most ``micro_batch_size``
pairs and queued; one worker thread runs the scorer on as many queued chunks as fit in ``micro_batch_size`` pairs,
waiting at most ``max_wait_ms`` for more, and routes the scores back to each request.
"""

# No `from __future__ import annotations`: pydantic must resolve the request models built inside `request_model`.

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from lref.data.records import Record
from lref.labels import LabelScheme
from lref.models.factory import load_student
from lref.models.onnx import BACKENDS
from lref.predictions import softmax

logger = logging.getLogger(__name__)

RELEVANCE_PATH = "/v1/relevance"
_STOP = object()  # queued to end the batcher's worker


@dataclass
class ServeStudentConfig:
    model: str = field(default="runs/student", metadata={
        "help": "Student to serve: a trained cross-encoder folder, or a folder written by `lref export`."})
    backend: str = field(default="int8", metadata={
        "help": "Inference backend: 'int8' (quantised ONNX), 'onnx' (fp32 ONNX) or 'torch'."})
    calibrated: bool = field(default=True, metadata={
        "help": "Apply the model folder's label-prior calibration (calibration.json, from `lref calibrate` or the "
                "pipeline) when it has one."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to listen on."})
    port: int = field(default=8080, metadata={"help": "TCP port to listen on."})
    max_batch_pairs: int = field(default=256, metadata={"help": "Most pairs one request may send."})
    max_field_chars: int = field(default=2000, metadata={"help": "Most characters in any one field of a pair."})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "Largest request body in bytes (else 413)."})
    micro_batch_size: int = field(default=64, metadata={
        "help": "Most pairs per model call; requests from concurrent clients are batched together up to this."})
    max_wait_ms: float = field(default=5.0, metadata={
        "help": "How long a model call waits for more queued pairs before it runs on what it has."})
    threads: int | None = field(default=None, metadata={
        "help": "CPU threads for the model (torch or ONNX Runtime); default: the backend's choice."})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level."})
    access_log: bool = field(default=False, metadata={
        "help": "Log every request (off by default: it costs throughput; /metrics has the counts)."})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        for name in ("max_batch_pairs", "max_field_chars", "max_body_bytes", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def _label_bias(scorer, scheme: LabelScheme) -> dict[str, float] | None:
    """The calibration the scorer applies, by label (None: raw scores)."""
    bias = getattr(getattr(scorer, "config", None), "label_bias", None)
    return None if bias is None else dict(zip(scheme.labels, map(float, bias)))


def load_scorer(config: ServeStudentConfig):
    """The student scorer for `config.backend`: anything with `.scheme` and `.score(records) -> ScoreResult`."""
    return load_student(config.model, backend=config.backend, threads=config.threads,
                        batch_size=config.micro_batch_size, calibrated=config.calibrated)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


@dataclass
class StudentMetrics:
    """The service's Prometheus metrics, in their own registry (several apps can live in one process)."""

    registry: Any
    requests: Any
    latency: Any
    batch_pairs: Any
    queue_pairs: Any
    pairs: Any
    model_errors: Any

    @classmethod
    def create(cls) -> "StudentMetrics":
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter("lref_student_requests", "HTTP requests by path and status code.",
                             ["path", "status"], registry=registry),
            latency=Histogram("lref_student_request_seconds", "Latency of POST /v1/relevance, end to end.",
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                              registry=registry),
            batch_pairs=Histogram("lref_student_batch_pairs", "Pairs per model call (micro-batch size).",
                                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=registry),
            queue_pairs=Gauge("lref_student_queue_pairs", "Pairs queued and waiting for a model call.",
                              registry=registry),
            pairs=Counter("lref_student_pairs", "Pairs scored.", registry=registry),
            model_errors=Counter("lref_student_model_errors", "Model calls that raised.", registry=registry),
        )


# ---------------------------------------------------------------------------------------------------------------------
# Micro-batching


class _Job:
    """One request's pairs; its future gets the N x K logits once every chunk is scored."""

    def __init__(self, records: Sequence[Record], n_labels: int, chunks: int):
        self.records = records
        self.logits = np.zeros((len(records), n_labels), dtype=np.float32)
        self.remaining = chunks
        self.future: Future = Future()

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        try:  # a client that went away cancelled the future: nothing to deliver
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        except InvalidStateError:
            pass


class MicroBatcher:
    """Queues pairs from any thread and scores them on one worker thread, `micro_batch_size` pairs per model call.

    `submit(records)` returns a `concurrent.futures.Future` of the N x K logits (scheme order). An exception in a
    model call fails the requests whose pairs were in that call; the worker goes on with the next batch."""

    def __init__(self, score: Callable[[list[Record]], np.ndarray], n_labels: int, micro_batch_size: int = 64,
                 max_wait_s: float = 0.005, metrics: StudentMetrics | None = None):
        self.score, self.n_labels = score, n_labels
        self.micro_batch_size, self.max_wait_s = micro_batch_size, max_wait_s
        self.metrics = metrics
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> "MicroBatcher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="lref-student-batcher")
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def submit(self, records: Sequence[Record]) -> Future:
        size = self.micro_batch_size
        starts = range(0, len(records), size)
        job = _Job(records, self.n_labels, len(starts))
        if not records:
            job.resolve(job.logits)
            return job.future
        if self.metrics is not None:
            self.metrics.queue_pairs.inc(len(records))
        for start in starts:
            self._queue.put((job, start, min(start + size, len(records))))
        return job.future

    def _take(self, chunk) -> None:
        if self.metrics is not None:
            self.metrics.queue_pairs.dec(chunk[2] - chunk[1])

    def _run(self) -> None:
        carry = None  # a chunk (or the stop marker) that did not fit in the previous batch
        while True:
            first, carry = (carry if carry is not None else self._queue.get()), None
            if first is _STOP:
                return
            self._take(first)
            batch, pairs = [first], first[2] - first[1]
            deadline = time.monotonic() + self.max_wait_s
            while pairs < self.micro_batch_size:
                wait = deadline - time.monotonic()
                try:
                    chunk = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if chunk is _STOP or pairs + chunk[2] - chunk[1] > self.micro_batch_size:
                    carry = chunk
                    break
                self._take(chunk)
                batch.append(chunk)
                pairs += chunk[2] - chunk[1]
            self._score_batch(batch)

    def _score_batch(self, batch: list) -> None:
        live = [chunk for chunk in batch if not chunk[0].future.done()]  # skip cancelled or failed requests
        if not live:
            return
        records = [record for job, start, stop in live for record in job.records[start:stop]]
        if self.metrics is not None:
            self.metrics.batch_pairs.observe(len(records))
        try:
            logits = np.asarray(self.score(records), dtype=np.float32).reshape(len(records), self.n_labels)
        except Exception as error:  # fail this batch's requests, keep serving
            logger.exception("model call on %d pairs failed", len(records))
            if self.metrics is not None:
                self.metrics.model_errors.inc()
            for job in {id(job): job for job, _, _ in live}.values():
                job.resolve(error=error)
            return
        if self.metrics is not None:
            self.metrics.pairs.inc(len(records))
        offset = 0
        for job, start, stop in live:
            job.logits[start:stop] = logits[offset : offset + stop - start]
            offset += stop - start
            job.remaining -= 1
            if job.remaining == 0:
                job.resolve(job.logits)


# ---------------------------------------------------------------------------------------------------------------------
# HTTP


def request_model(max_batch_pairs: int, max_field_chars: int) -> type[BaseModel]:
    """The pydantic model of a `POST /v1/relevance` body under this server's limits."""
    Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=max_field_chars)]
    OptionalText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=max_field_chars)] | None

    class Pair(BaseModel):
        model_config = ConfigDict(extra="forbid")
        query: Text
        title: Text
        brand: OptionalText = None
        description: OptionalText = None

    class RelevanceRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        pairs: list[Pair] = Field(min_length=1, max_length=max_batch_pairs)

    return RelevanceRequest


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


def _where(loc: Sequence[Any]) -> str:
    """('body', 'pairs', 3, 'query') -> 'pairs[3].query'."""
    text = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _problem(item: dict[str, Any], max_batch_pairs: int) -> str:
    loc, kind = item.get("loc", ()), item.get("type")
    if kind == "json_invalid":
        position = loc[1] if len(loc) > 1 else "?"
        return f"malformed JSON at offset {position}: {(item.get('ctx') or {}).get('error', item.get('msg'))}"
    if kind == "too_long" and tuple(loc) == ("body", "pairs"):
        return (f"pairs: {(item.get('ctx') or {}).get('actual_length', 'too many')} pairs exceed this server's limit "
                f"of {max_batch_pairs} per request")
    return f"{_where(loc)}: {item.get('msg')}"


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by its Content-Length or, when that is absent or lies, by
    the bytes actually received (the body is buffered up to the limit, then replayed to the app)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    @staticmethod
    async def _refuse(scope, receive, send, status: int, message: str) -> None:
        kind = "request_too_large" if status == 413 else "invalid_request"
        await _error(status, message, kind)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = f"request body exceeds this server's limit of {self.max_bytes} bytes"
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    return await self._refuse(scope, receive, send, 413, too_large)
            except ValueError:
                bad = declared.decode(errors="replace")
                return await self._refuse(scope, receive, send, 400, f"invalid Content-Length header {bad!r}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, 413, too_large)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RequestMetrics:
    """ASGI middleware: counts every response by path and status, and times POST /v1/relevance."""

    def __init__(self, app, metrics: StudentMetrics, paths: Sequence[str]):
        self.app, self.metrics, self.paths = app, metrics, set(paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = scope["path"] if scope["path"] in self.paths else "other"
            self.metrics.requests.labels(path=path, status=str(status)).inc()
            if path == RELEVANCE_PATH:
                self.metrics.latency.observe(time.perf_counter() - started)


def relevance_results(logits: np.ndarray, scheme: LabelScheme) -> list[dict[str, Any]]:
    """Label, per-grade probabilities (scheme order) and expected grade of every row of N x K logits."""
    probs = softmax(np.asarray(logits, dtype=np.float32).reshape(-1, len(scheme)))
    expected = probs @ np.asarray(scheme.ratings, dtype=np.float64)
    return [
        {
            "label": scheme.labels[int(row.argmax())],
            "probabilities": {label: float(p) for label, p in zip(scheme.labels, row)},
            "expected_grade": float(grade),
        }
        for row, grade in zip(probs, expected)
    ]


def _records(pairs: Sequence[BaseModel]) -> list[Record]:
    return [Record(id=str(i), query=p.query, title=p.title, brand=p.brand or None, description=p.description or None)
            for i, p in enumerate(pairs)]


def create_app(config: ServeStudentConfig, scorer=None) -> FastAPI:
    """The FastAPI app over `scorer` (default: `load_scorer(config)`); its lifespan runs the micro-batcher."""
    scorer = scorer if scorer is not None else load_scorer(config)
    scheme: LabelScheme = scorer.scheme
    metrics = StudentMetrics.create()
    batcher = MicroBatcher(lambda records: scorer.score(records).logits, len(scheme), config.micro_batch_size,
                           config.max_wait_ms / 1000.0, metrics)
    RelevanceRequest = request_model(config.max_batch_pairs, config.max_field_chars)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="lref student", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher, app.state.metrics = batcher, metrics
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, paths=(RELEVANCE_PATH, "/healthz", "/metrics"))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(item, config.max_batch_pairs) for item in error.errors()]
        return _error(422, "invalid request: " + "; ".join(problems), "invalid_request")

    health = {
        "status": "ok",
        "model": config.model,
        "backend": config.backend,
        "scheme": {"name": scheme.name, "labels": list(scheme.labels), "ratings": list(scheme.ratings)},
        "label_bias": _label_bias(scorer, scheme),
        "limits": {"max_batch_pairs": config.max_batch_pairs, "max_field_chars": config.max_field_chars,
                   "max_body_bytes": config.max_body_bytes, "micro_batch_size": config.micro_batch_size},
    }

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return health

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(RELEVANCE_PATH)
    async def relevance(body: RelevanceRequest) -> Any:
        try:
            logits = await asyncio.wrap_future(batcher.submit(_records(body.pairs)))
        except Exception as error:
            return _error(500, f"model call failed: {type(error).__name__}: {error}", "model_error")
        # A JSONResponse directly: skips FastAPI's generic re-encoding of the (already plain) result.
        results = relevance_results(logits, scheme)
        return JSONResponse({"model": config.model, "scheme": scheme.name, "results": results})

    return app


def build_server(config: ServeStudentConfig, scorer=None):
    """A configured ``uvicorn.Server`` (not yet running); tests and benchmarks run it in a thread."""
    import uvicorn

    app = create_app(config, scorer)
    return uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                                         access_log=config.access_log))


def serve_student(config: ServeStudentConfig) -> None:
    """Load the student and serve it until interrupted."""
    build_server(config).run()


__all__ = [
    "BACKENDS",
    "MicroBatcher",
    "ServeStudentConfig",
    "StudentMetrics",
    "build_server",
    "create_app",
    "load_scorer",
    "relevance_results",
    "request_model",
    "serve_student",
]
