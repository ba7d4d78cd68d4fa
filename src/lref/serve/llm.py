"""``lref serve llm``: an OpenAI-compatible chat endpoint over a local causal LM (a zoo name, an HF folder or a tuned
lref adapter folder), so any OpenAI client, and lref's own ``openai`` teacher, can use it.

Endpoints:

* ``POST /v1/chat/completions``: messages -> prompt (the tokenizer's chat template, else plain text), ``temperature``
  (0 = greedy), ``top_p``, ``max_tokens`` / ``max_completion_tokens``, ``stop``, ``seed``; answers in the standard
  ``chat.completion`` shape with ``usage`` counts. ``n`` > 1 and ``stream`` are refused with 400, an unknown model
  with 404, a malformed body with 422; error bodies have OpenAI's ``{"error": {"message", "type", ...}}`` shape.
* ``GET /v1/models``; ``GET /health``; ``GET /metrics``: request counters (JSON).
"""

from __future__ import annotations

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

from lref.teachers.local import ChatModel


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

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise ValueError("default_max_tokens must be between 1 and max_tokens_limit")


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
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def _text(message: ChatMessage, index: int) -> str:
    if isinstance(message.content, str):
        return message.content
    parts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise RequestError(400, f"messages[{index}].content: only text parts are supported",
                               param=f"messages[{index}].content")
        parts.append(part["text"])
    return "".join(parts)


def create_app(chat_model: ChatModel, served_name: str, default_max_tokens: int = 256,
               max_tokens_limit: int = 2048) -> FastAPI:
    """The FastAPI app over an already loaded :class:`ChatModel`."""
    app = FastAPI(title="lref LLM server", version="1")
    counters: Counter[str] = Counter()
    lock = threading.Lock()
    created = int(time.time())

    def count(**deltas: int) -> None:
        with lock:
            counters.update(deltas)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        count(requests_total=1, **{f"path:{request.url.path}": 1})
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
        kind = "not_found_error" if error.status == 404 else "invalid_request_error"
        return _error(error.status, error.message, error.param, error.code, kind)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": served_name}

    @app.get("/metrics")
    def metrics() -> dict[str, int]:
        with lock:
            return dict(counters)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
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
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m, i)}
                    for i, m in enumerate(body.messages)]
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        generation = chat_model.generate(messages, max_tokens, temperature=body.temperature, top_p=body.top_p,
                                         seed=body.seed, stop=stop)
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

    served_name = config.served_name or config.model
    chat_model = chat_model or ChatModel.load(config.model, name=served_name, threads=config.threads)
    app = create_app(chat_model, served_name, config.default_max_tokens, config.max_tokens_limit)
    return uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level))


def serve_llm(config: LLMServerConfig) -> None:
    """Load the model and serve it until interrupted."""
    build_server(config).run()
