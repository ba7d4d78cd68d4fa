"""``lref serve student``: the online relevance service over a distilled student (a cross-encoder folder, or the folder
``export_student`` wrote with its ONNX models).

Endpoints:

* ``POST /v1/relevance``: ``{"pairs": [{"query", "title", "brand"?, "description"?}, ...]}`` -> per pair the label,
  the probability of every grade (scheme order) and the expected grade (probability-weighted rating). Bad fields,
  too many pairs or malformed JSON -> 422 naming the pair index and field; a body over ``max_body_bytes`` -> 413; a
  full queue -> 503 with Retry-After; no answer within ``request_timeout_s`` -> 504; pairs the model cannot score
  -> 422 for that request only; a broken model -> 500 with a generic body (the details go to the log).
* ``GET /healthz``: model, backend, label scheme and the label calibration applied (``label_bias``, or null); 503
  when the batcher thread is dead or the last ``health_window`` model calls all failed.
* ``GET /metrics``: Prometheus text: requests by path and status, request latency, pairs per model call, queue depth.

Requests from concurrent clients are micro-batched: each request is cut into chunks of at most ``micro_batch_size``
pairs and queued; one worker thread runs the scorer on as many queued chunks as fit in ``micro_batch_size`` pairs,
waiting at most ``max_wait_ms`` for more, and routes the scores back to each request. When a model call raises, the
batcher scores its requests' chunks one by one, so only the request at fault fails (see :class:`MicroBatcher`).

With a token (``token_file`` or ``LREF_SERVE_TOKEN``) every path but ``/healthz`` needs ``Authorization: Bearer``.
"""

# No `from __future__ import annotations`: pydantic must resolve the request models built inside `request_model`.

import asyncio
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException

from lref.data.records import Record
from lref.labels import LabelScheme
from lref.models.factory import load_student
from lref.models.onnx import BACKENDS
from lref.predictions import softmax
from lref.serve.guard import BearerAuth, BodyLimit, resolve_token
from lref.sharding import available_cores

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
    max_wait_ms: float = field(default=0.0, metadata={
        "help": "How long a model call waits for more queued pairs before it runs on what it has; with 0 the pairs "
                "that queue while a call runs still form the next batch."})
    threads: int | None = field(default=None, metadata={
        "help": "CPU threads for the model (torch or ONNX Runtime) in each worker; default: the backend's choice "
                "with one worker, the machine's cores shared out among several."})
    workers: int = field(default=1, metadata={
        "help": "Server processes, each with its own copy of the model and micro-batcher, behind one port. One "
                "process is bound by its Python thread; on a machine with spare cores, more serve more pairs/s. "
                "/metrics and /healthz then describe the worker that answers, and limit_concurrency and "
                "max_queue_pairs hold per worker."})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level."})
    access_log: bool = field(default=False, metadata={
        "help": "Log every request (off by default: it costs throughput; /metrics has the counts)."})
    max_queue_pairs: int = field(default=4096, metadata={
        "help": "Most pairs waiting for a model call; a request that would pass it gets 503 with Retry-After."})
    request_timeout_s: float = field(default=10.0, metadata={
        "help": "Longest a request waits for its scores before it gets 504."})
    limit_concurrency: int | None = field(default=1024, metadata={
        "help": "Most connections and requests uvicorn handles at once; beyond it 503 (none: unlimited)."})
    health_window: int = field(default=5, metadata={
        "help": "/healthz answers 503 when this many model calls in a row have failed."})
    token_file: str | None = field(default=None, metadata={
        "help": "File whose first line is the bearer token clients must send (else $LREF_SERVE_TOKEN); required "
                "when --host is not loopback."})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        for name in ("max_batch_pairs", "max_field_chars", "max_body_bytes", "micro_batch_size", "health_window",
                     "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue_pairs < self.max_batch_pairs:
            raise ValueError(f"max_queue_pairs ({self.max_queue_pairs}) must be >= max_batch_pairs "
                             f"({self.max_batch_pairs}), else a full-size request could never be queued")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ValueError(f"limit_concurrency must be >= 1, got {self.limit_concurrency}")
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


class QueueFull(Exception):
    """Queuing the request would pass ``max_queue_pairs``: the client should retry later (503)."""


class BatcherDown(Exception):
    """The batcher's worker thread is not running (503)."""


class InputRejected(Exception):
    """The model raised on these pairs while it scores others: the request's fault (422)."""

    def __init__(self, start: int, stop: int):
        super().__init__(f"pairs[{start}:{stop}]")
        self.start, self.stop = start, stop


class ModelFailure(Exception):
    """The model call failed and a known-good probe pair failed too: the server's fault (500). `incident` names the
    log entry that holds the exception."""

    def __init__(self, incident: str):
        super().__init__(f"incident {incident}")
        self.incident = incident


PROBE = [Record(id="probe", query="cordless drill", title="DeWalt cordless drill")]
"""Scored after a failed call that no other request can vouch for: if it scores, the model works and the failed
pairs were at fault."""


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

    `submit(records)` returns a `concurrent.futures.Future` of the N x K logits (scheme order), or raises
    :class:`QueueFull` / :class:`BatcherDown`. When a model call raises, each request's chunk of it is scored on its
    own, so one request's bad pairs fail only that request: with :class:`InputRejected` when the model scores
    something else (another chunk, else the probe pair), with :class:`ModelFailure` when it scores nothing. Non-finite
    scores count as a raise. The worker goes on with the next batch."""

    def __init__(self, score: Callable[[list[Record]], np.ndarray], n_labels: int, micro_batch_size: int = 64,
                 max_wait_s: float = 0.0, metrics: StudentMetrics | None = None, max_queue_pairs: int | None = None,
                 health_window: int = 5):
        self.score, self.n_labels = score, n_labels
        self.micro_batch_size, self.max_wait_s = micro_batch_size, max_wait_s
        self.metrics, self.max_queue_pairs = metrics, max_queue_pairs
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._queued = 0  # pairs submitted and not yet taken by the worker
        self._outcomes: deque[bool] = deque(maxlen=health_window)  # latest model calls: True = it scored
        self._in_flight: list = []

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

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def health(self) -> str | None:
        """Why the batcher cannot serve, or None when it can."""
        if not self.alive:
            return "the batcher thread is not running"
        with self._lock:
            outcomes = list(self._outcomes)
        if len(outcomes) == self._outcomes.maxlen and not any(outcomes):
            return f"the last {len(outcomes)} model calls failed"
        return None

    def submit(self, records: Sequence[Record]) -> Future:
        if not self.alive:
            raise BatcherDown("the batcher thread is not running")
        size = self.micro_batch_size
        starts = range(0, len(records), size)
        job = _Job(records, self.n_labels, len(starts))
        if not records:
            job.resolve(job.logits)
            return job.future
        with self._lock:
            if self.max_queue_pairs is not None and self._queued + len(records) > self.max_queue_pairs:
                raise QueueFull(f"{self._queued} pairs are queued; this server queues at most {self.max_queue_pairs}")
            self._queued += len(records)
        if self.metrics is not None:
            self.metrics.queue_pairs.inc(len(records))
        for start in starts:
            self._queue.put((job, start, min(start + size, len(records))))
        return job.future

    def _take(self, chunk) -> None:
        with self._lock:
            self._queued -= chunk[2] - chunk[1]
        if self.metrics is not None:
            self.metrics.queue_pairs.dec(chunk[2] - chunk[1])

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # even SystemExit from a scorer: fail what waits rather than leave it hanging
            logger.critical("the micro-batcher's worker stopped; /healthz now answers 503", exc_info=True)
            down = BatcherDown("the batcher thread stopped")
            for job, _, _ in self._in_flight:
                job.resolve(error=down)
            while True:
                try:
                    chunk = self._queue.get_nowait()
                except queue.Empty:
                    break
                if chunk is not _STOP:
                    self._take(chunk)
                    chunk[0].resolve(error=down)

    def _loop(self) -> None:
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
            self._in_flight = batch
            self._score_batch(batch)
            self._in_flight = []

    def _call(self, records: list[Record], probe: bool = False) -> np.ndarray:
        """One model call -> N x K logits; notes the outcome for /healthz and (unless a probe) the metrics."""
        if self.metrics is not None and not probe:
            self.metrics.batch_pairs.observe(len(records))
        try:
            logits = np.asarray(self.score(records), dtype=np.float32).reshape(len(records), self.n_labels)
            if not np.isfinite(logits).all():
                raise ValueError("the model returned non-finite scores")
        except Exception:
            with self._lock:
                self._outcomes.append(False)
            if self.metrics is not None:
                self.metrics.model_errors.inc()
            raise
        with self._lock:
            self._outcomes.append(True)
        if self.metrics is not None and not probe:
            self.metrics.pairs.inc(len(records))
        return logits

    @staticmethod
    def _records(chunks: list) -> list[Record]:
        return [record for job, start, stop in chunks for record in job.records[start:stop]]

    def _score_batch(self, batch: list) -> None:
        live = [chunk for chunk in batch if not chunk[0].future.done()]  # skip cancelled or failed requests
        if not live:
            return
        try:
            logits = self._call(self._records(live))
        except Exception as error:
            self._isolate(live, error)
            return
        self._deliver(live, logits)

    def _isolate(self, live: list, error: Exception) -> None:
        """After a failed call: score each chunk alone, then fail only the chunks that fail alone."""
        failed: list[tuple[Any, Exception]] = []
        model_works = False
        if len(live) == 1:
            failed.append((live[0], error))
        else:
            for chunk in live:
                if chunk[0].future.done() or any(chunk[0] is other[0] for other, _ in failed):
                    continue  # its request already failed
                try:
                    self._deliver([chunk], self._call(self._records([chunk])))
                    model_works = True
                except Exception as chunk_error:
                    failed.append((chunk, chunk_error))
        if failed and not model_works:
            try:
                self._call(PROBE, probe=True)
                model_works = True
            except Exception:
                pass
        for (job, start, stop), chunk_error in failed:
            incident = uuid.uuid4().hex[:12]
            logger.error("model call on pairs[%d:%d] of a request failed (incident %s; %s)", start, stop, incident,
                         "the model scores others: bad input" if model_works else "the model is failing",
                         exc_info=(type(chunk_error), chunk_error, chunk_error.__traceback__))
            job.resolve(error=InputRejected(start, stop) if model_works else ModelFailure(incident))

    @staticmethod
    def _deliver(chunks: list, logits: np.ndarray) -> None:
        offset = 0
        for job, start, stop in chunks:
            job.logits[start:stop] = logits[offset : offset + stop - start]
            offset += stop - start
            job.remaining -= 1
            if job.remaining == 0:
                job.resolve(job.logits)


# ---------------------------------------------------------------------------------------------------------------------
# HTTP


def request_model(max_batch_pairs: int, max_field_chars: int) -> type[BaseModel]:
    """The pydantic model of a `POST /v1/relevance` body under this server's limits."""
    # pydantic already refuses a lone surrogate ("\ud800"), which no tokenizer could encode.
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


class ErrorDetail(BaseModel):
    message: str
    type: str


class ErrorResponse(BaseModel):
    """Every error body: ``{"error": {"message", "type"}}``."""

    error: ErrorDetail


class RelevanceResult(BaseModel):
    label: str
    probabilities: dict[str, float]
    expected_grade: float


class RelevanceResponse(BaseModel):
    model: str
    scheme: str
    results: list[RelevanceResult]


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an endpoint can answer (schemathesis checks bodies against them)."""
    meaning = {400: "Unreadable request", 401: "Missing or wrong bearer token", 413: "Body too large",
               422: "Invalid request", 500: "Internal error (details in the server log)",
               503: "Overloaded or not able to score", 504: "Not scored within request_timeout_s"}
    return {status: {"model": ErrorResponse, "description": meaning[status]} for status in statuses}


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}}, headers=headers)


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


def _internal_error(incident: str) -> JSONResponse:
    # Never the exception text: it can carry paths, library internals or the input itself.
    return _error(500, f"internal error while scoring (incident {incident}; details in the server log)",
                  "internal_error")


def create_app(config: ServeStudentConfig, scorer=None) -> FastAPI:
    """The FastAPI app over `scorer` (default: `load_scorer(config)`); its lifespan runs the micro-batcher.
    AuthConfigError (before any model is loaded) when the host is not loopback and no token is set."""
    token = resolve_token(config.token_file, config.host)
    scorer = scorer if scorer is not None else load_scorer(config)
    scheme: LabelScheme = scorer.scheme
    metrics = StudentMetrics.create()
    batcher = MicroBatcher(lambda records: scorer.score(records).logits, len(scheme), config.micro_batch_size,
                           config.max_wait_ms / 1000.0, metrics, max_queue_pairs=config.max_queue_pairs,
                           health_window=config.health_window)
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
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, error=_error)
    if token is not None:
        app.add_middleware(BearerAuth, token=token, error=_error, open_paths=("/healthz",))
    app.add_middleware(RequestMetrics, metrics=metrics, paths=(RELEVANCE_PATH, "/healthz", "/metrics"))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(item, config.max_batch_pairs) for item in error.errors()]
        return _error(422, "invalid request: " + "; ".join(problems), "invalid_request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        # Starlette's own errors (404, 405, an undecodable body) in this service's error shape.
        kind = "not_found" if error.status_code == 404 else "invalid_request"
        return _error(error.status_code, str(error.detail), kind, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        logger.error("unhandled error on %s (incident %s)", request.url.path, incident, exc_info=error)
        return _internal_error(incident)

    health = {
        "status": "ok",
        "model": config.model,
        "backend": config.backend,
        "pid": os.getpid(),  # which worker answered, when several serve (--workers)
        "scheme": {"name": scheme.name, "labels": list(scheme.labels), "ratings": list(scheme.ratings)},
        "label_bias": _label_bias(scorer, scheme),
        "limits": {"max_batch_pairs": config.max_batch_pairs, "max_field_chars": config.max_field_chars,
                   "max_body_bytes": config.max_body_bytes, "micro_batch_size": config.micro_batch_size,
                   "max_queue_pairs": config.max_queue_pairs, "request_timeout_s": config.request_timeout_s},
    }

    @app.get("/healthz", responses={503: {"description": "The batcher cannot score (same body, status "
                                                         "'unavailable' and a reason)"}})
    def healthz() -> JSONResponse:
        problem = batcher.health()
        if problem is None:
            return JSONResponse({**health, "reason": None})
        return JSONResponse({**health, "status": "unavailable", "reason": problem}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse, responses=_responses(401))
    def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(RELEVANCE_PATH, response_model=None,
              responses={200: {"model": RelevanceResponse, "description": "One result per pair, in order"},
                         **_responses(400, 401, 413, 422, 500, 503, 504)})
    async def relevance(body: RelevanceRequest) -> Any:
        try:
            future = batcher.submit(_records(body.pairs))
        except QueueFull as error:
            return _error(503, f"server busy: {error}; retry later", "overloaded", headers={"Retry-After": "1"})
        except BatcherDown:
            return _error(503, "scoring is unavailable (see /healthz)", "unavailable", headers={"Retry-After": "5"})
        try:
            logits = await asyncio.wait_for(asyncio.wrap_future(future), config.request_timeout_s)
        except TimeoutError:
            return _error(504, f"not scored within {config.request_timeout_s:g} s", "timeout")
        except InputRejected as error:
            return _error(422, f"invalid request: the model could not score pairs[{error.start}:{error.stop}] "
                               "(e.g. text it cannot tokenise); other requests are unaffected", "invalid_request")
        except BatcherDown:
            return _error(503, "scoring is unavailable (see /healthz)", "unavailable", headers={"Retry-After": "5"})
        except ModelFailure as error:
            return _internal_error(error.incident)
        # A JSONResponse directly: skips FastAPI's generic re-encoding of the (already plain) result.
        results = relevance_results(logits, scheme)
        return JSONResponse({"model": config.model, "scheme": scheme.name, "results": results})

    return app


def uvicorn_options(config: ServeStudentConfig) -> dict[str, Any]:
    """The uvicorn settings a config sets, whether one process serves or several."""
    return {"host": config.host, "port": config.port, "log_level": config.log_level, "access_log": config.access_log,
            "limit_concurrency": config.limit_concurrency}


def build_server(config: ServeStudentConfig, scorer=None):
    """A configured ``uvicorn.Server`` (not yet running); tests and benchmarks run it in a thread."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(create_app(config, scorer), **uvicorn_options(config)))


WORKER_CONFIG_ENV = "LREF_SERVE_STUDENT_CONFIG"
"""How `serve_student` hands its config to worker processes (JSON of the config's fields)."""


def worker_app() -> FastAPI:
    """The app of one worker process of a multi-worker `serve_student` (uvicorn's factory), built from the config
    in `WORKER_CONFIG_ENV`."""
    return create_app(ServeStudentConfig(**json.loads(os.environ[WORKER_CONFIG_ENV])))


def serve_student(config: ServeStudentConfig) -> None:
    """Load the student and serve it until interrupted; with `workers` > 1, in that many processes behind one port
    (uvicorn's process manager), each loading the model itself. The model and the token are checked here first: a
    worker that fails to start would otherwise be restarted for ever."""
    if config.workers == 1:
        build_server(config).run()
        return
    import uvicorn

    resolve_token(config.token_file, config.host)
    load_scorer(config)  # a folder that cannot serve fails here, once, with its own error
    threads = config.threads or max(1, available_cores() // config.workers)
    previous = os.environ.get(WORKER_CONFIG_ENV)
    os.environ[WORKER_CONFIG_ENV] = json.dumps({**asdict(config), "threads": threads, "workers": 1}, default=str)
    try:
        uvicorn.run(f"{__name__}:worker_app", factory=True, workers=config.workers, **uvicorn_options(config))
    finally:
        if previous is None:
            os.environ.pop(WORKER_CONFIG_ENV, None)
        else:
            os.environ[WORKER_CONFIG_ENV] = previous


__all__ = [
    "BACKENDS",
    "BatcherDown",
    "InputRejected",
    "MicroBatcher",
    "ModelFailure",
    "QueueFull",
    "ServeStudentConfig",
    "StudentMetrics",
    "WORKER_CONFIG_ENV",
    "build_server",
    "create_app",
    "load_scorer",
    "relevance_results",
    "request_model",
    "serve_student",
    "uvicorn_options",
    "worker_app",
]
