"""``lref serve llm``: an OpenAI-compatible chat endpoint over a local causal LM (a zoo name, an HF folder or a tuned
lref adapter folder), so any OpenAI client, and lref's own ``openai`` teacher, can use it.

Endpoints:

* ``POST /v1/chat/completions``: messages -> prompt (the tokenizer's chat template, else plain text), ``temperature``
  (0 = greedy), ``top_p``, ``max_tokens`` / ``max_completion_tokens``, ``stop``, ``seed``; answers in the standard
  ``chat.completion`` shape with ``usage`` counts. ``n`` > 1 and ``stream`` are refused with 400, an unknown model
  with 404, a malformed body with 422; error bodies have OpenAI's ``{"error": {"message", "type", ...}}`` shape.
* ``GET /v1/models``; ``GET /health``; ``GET /metrics``: request counters (JSON; unknown paths count as one).

Every request is bounded before it may take the model: the body (``max_body_bytes``, 413), the prompt in characters
(413) and in tokens (400, ``context_length_exceeded``), ``max_tokens`` (400). One generation runs at a time; a request
that cannot get the model within ``generation_timeout_s`` gets 503, and a generation stops after that long
(``finish_reason`` "length"). With a token (``token_file`` or ``LREF_SERVE_TOKEN``) every path but ``/health`` needs
``Authorization: Bearer``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from lref.serve.guard import BearerAuth, BodyLimit, resolve_token, valid_utf8
from lref.teachers.local import ChatModel

logger = logging.getLogger(__name__)

SEED_RANGE = (-(2**63), 2**64 - 1)
"""What torch.manual_seed accepts."""
MIN_TEMPERATURE = 1e-3
"""Temperatures below it decode greedily."""
KNOWN_PATHS = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")

@dataclass
class LLMServerConfig:
    model: str = field(default="gemma-3-270m", metadata={
        "help": "Model to serve: a zoo name, an HF folder or an lref adapter folder."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to listen on."})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on."})
    served_name: str | None = field(default=None, metadata={
        "help": "Model name clients must send (and /v1/models lists); default: the --model value."})
    default_max_tokens: int = field(default=256, metadata={"help": "max_tokens when a request gives none."})
    max_tokens_limit: int = field(default=2048, metadata={"help": "Largest max_tokens a request may ask for."})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch; default: torch's choice."})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level."})
    max_prompt_chars: int = field(default=32000, metadata={
        "help": "Most characters in a request's messages together (else 413)."})
    max_prompt_tokens: int = field(default=4096, metadata={
        "help": "Most prompt tokens after the chat template (else 400, context_length_exceeded)."})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "Largest request body in bytes (else 413)."})
    generation_timeout_s: float = field(default=120.0, metadata={
        "help": "Longest one generation may run (it then stops, finish_reason 'length'), and longest a request "
                "waits for the model (else 503)."})
    token_file: str | None = field(default=None, metadata={
        "help": "File whose first line is the bearer token clients must send (else $LREF_SERVE_TOKEN); required "
                "when --host is not loopback."})

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise ValueError("default_max_tokens must be between 1 and max_tokens_limit")
        for name in ("max_prompt_chars", "max_prompt_tokens", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.generation_timeout_s > 0:
            raise ValueError(f"generation_timeout_s must be > 0, got {self.generation_timeout_s}")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]


class ChatCompletionRequest(BaseModel):
    # OpenAI clients send fields this server does not use (frequency_penalty, user, ...): ignore them.
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def _guard_error(status: int, message: str, kind: str) -> JSONResponse:
    """The guard middlewares' (status, message, kind) in OpenAI's error shape."""
    kind = {"request_too_large": "invalid_request_error", "invalid_request": "invalid_request_error"}.get(kind, kind)
    return _error(status, message, kind=kind)


def _text(message: ChatMessage, index: int) -> str:
    if isinstance(message.content, str):
        text = message.content
    else:
        parts = []
        for part in message.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(400, f"messages[{index}].content: only text parts are supported",
                                   param=f"messages[{index}].content")
            parts.append(part["text"])
        text = "".join(parts)
    try:
        return valid_utf8(text)
    except ValueError as error:  # the tokenizer would raise on it inside the model lock
        raise RequestError(400, f"messages[{index}].content {error}", param=f"messages[{index}].content") from None


def create_app(chat_model: ChatModel, served_name: str, default_max_tokens: int = 256, max_tokens_limit: int = 2048,
               max_prompt_chars: int = 32000, max_prompt_tokens: int = 4096, max_body_bytes: int = 1 << 20,
               generation_timeout_s: float = 120.0, token: str | None = None) -> FastAPI:
    """The FastAPI app over an already loaded :class:`ChatModel`; with `token`, every path but /health needs it."""
    app = FastAPI(title="lref LLM server", version="1")
    counters: Counter[str] = Counter()
    lock = threading.Lock()  # the counters
    model_lock = threading.Lock()  # one generation at a time; waited for at most generation_timeout_s
    created = int(time.time())

    def count(**deltas: int) -> None:
        with lock:
            counters.update(deltas)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, error=_guard_error)
    if token is not None:
        app.add_middleware(BearerAuth, token=token, error=_guard_error, open_paths=("/health",))

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        path = request.url.path if request.url.path in KNOWN_PATHS else "other"  # one series, whatever is probed
        count(requests_total=1, **{f"path:{path}": 1})
        response = await call_next(request)
        if response.status_code >= 400:
            count(errors_total=1)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', ())[1:]) or 'body'}: {item.get('msg')}"
            for item in error.errors()
        )
        return _error(422, f"invalid request: {problems}")

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, error: RequestError) -> JSONResponse:
        kind = {404: "not_found_error", 503: "server_overloaded"}.get(error.status, "invalid_request_error")
        headers = {"Retry-After": "5"} if error.status == 503 else None
        return _error(error.status, error.message, error.param, error.code, kind, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return _error(error.status_code, str(error.detail), kind=kind)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Never the exception text: it can carry paths, library internals or the prompt.
        incident = uuid.uuid4().hex[:12]
        logger.error("unhandled error on %s (incident %s)", request.url.path, incident, exc_info=error)
        return _error(500, f"internal server error (incident {incident}; details in the server log)",
                      kind="server_error")

    # The cheap endpoints are async: they answer even while every worker thread waits for the model.
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": served_name}

    @app.get("/metrics")
    async def metrics() -> dict[str, int]:
        with lock:
            return dict(counters)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        model = {"id": served_name, "object": "model", "created": created, "owned_by": "lref"}
        return {"object": "list", "data": [model]}

    @app.post("/v1/chat/completions")
    def chat_completions(body: ChatCompletionRequest) -> dict[str, Any]:
        if body.model and body.model != served_name:
            raise RequestError(404, f"model {body.model!r} is not served here (this server serves {served_name!r})",
                               param="model", code="model_not_found")
        if body.stream:
            raise RequestError(400, "stream=true is not supported by this server", param="stream")
        if body.n != 1:
            raise RequestError(400, f"n={body.n} is not supported; only n=1", param="n")
        max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
        if max_tokens > max_tokens_limit:
            raise RequestError(400, f"max_tokens={max_tokens} exceeds this server's limit of {max_tokens_limit}",
                               param="max_tokens")
        if body.seed is not None and not SEED_RANGE[0] <= body.seed <= SEED_RANGE[1]:
            raise RequestError(400, f"seed must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}", param="seed")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m, i)}
                    for i, m in enumerate(body.messages)]
        chars = sum(len(m["content"]) for m in messages)
        if chars > max_prompt_chars:
            raise RequestError(413, f"the messages hold {chars} characters, over this server's limit of "
                                    f"{max_prompt_chars}", param="messages", code="prompt_too_large")
        # Counted before taking the model: an over-long prompt never holds the lock.
        text, templated = chat_model.render(messages)
        prompt_tokens = len(chat_model.tokenizer(text, add_special_tokens=not templated)["input_ids"])
        if prompt_tokens > max_prompt_tokens:
            raise RequestError(400, f"the prompt is {prompt_tokens} tokens, over this server's limit of "
                                    f"{max_prompt_tokens}", param="messages", code="context_length_exceeded")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if not model_lock.acquire(timeout=generation_timeout_s):
            raise RequestError(503, f"the model stayed busy for {generation_timeout_s:g} s; retry later",
                               code="server_busy")
        try:
            # A temperature near 0 overflows the softmax (NaN probabilities): its limit is greedy decoding.
            temperature = body.temperature if body.temperature >= MIN_TEMPERATURE else 0.0
            generation = chat_model.generate(messages, max_tokens, temperature=temperature, top_p=body.top_p,
                                             seed=body.seed, stop=stop)
        finally:
            model_lock.release()
        count(chat_completions_total=1, prompt_tokens_total=generation.prompt_tokens,
              completion_tokens_total=generation.completion_tokens)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served_name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": generation.text},
                "logprobs": None,
                "finish_reason": generation.finish_reason,
            }],
            "usage": {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.completion_tokens,
                "total_tokens": generation.prompt_tokens + generation.completion_tokens,
            },
        }

    return app


def build_server(config: LLMServerConfig, chat_model: ChatModel | None = None):
    """A configured ``uvicorn.Server`` (not yet running) over the model; tests run it in a thread."""
    import uvicorn

    token = resolve_token(config.token_file, config.host)  # before loading: a bad setup fails fast
    served_name = config.served_name or config.model
    chat_model = chat_model or ChatModel.load(config.model, name=served_name, threads=config.threads)
    # transformers stops a generate() call after max_time seconds: this bounds how long one request holds the model.
    chat_model.model.generation_config.max_time = config.generation_timeout_s
    app = create_app(chat_model, served_name, config.default_max_tokens, config.max_tokens_limit,
                     config.max_prompt_chars, config.max_prompt_tokens, config.max_body_bytes,
                     config.generation_timeout_s, token)
    return uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level))


def serve_llm(config: LLMServerConfig) -> None:
    """Load the model and serve it until interrupted."""
    build_server(config).run()
