"""A teacher over any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, Ollama, llama.cpp, a hosted GPT,
or ``lref serve llm``).

* ``concurrency`` requests in flight at most (a thread pool over one httpx client);
* timeouts, and retries with exponential backoff (honouring ``Retry-After``) on 429, 5xx, timeouts and connection
  errors; other 4xx answers stop the run at once with the server's message;
* a SQLite cache (WAL mode, one connection behind a lock, safe across threads) keyed by the sha256 of (model,
  messages, sampling parameters): every answer is stored as soon as it arrives, so an interrupted run resumes
  without paying twice;
* a 200 answer whose body is not a chat completion, or whose text has no parsable label, is counted and retried (at
  ``retry_temperature``, under a new cache key) and finally dropped; it never crashes the run;
* an endpoint still down after every retry raises :class:`~lref.teachers.base.TeacherError` naming the URL;
* the API key (``$OPENAI_API_KEY``) is sent only over https or to a loopback host (127.0.0.0/8, ::1, localhost):
  a key set for plain http to another host raises :class:`~lref.teachers.base.TeacherError` before any request,
  unless ``allow_insecure_key`` (or ``$LREF_ALLOW_INSECURE_KEY=1``) says the user accepts sending it in clear text.

Example::

    teacher = OpenAITeacher(OpenAITeacherConfig(base_url="http://127.0.0.1:8000/v1", model="gemma-3-270m"))
    explanations = teacher.explain(records, get_scheme("graded3"))
    print(teacher.stats())   # requests, cache_hits, failures, pairs_per_s, ...
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lref.net import is_loopback_host
from lref.teachers.base import ChatTeacher, TeacherError, TeacherRefusal

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
INSECURE_KEY_ENV = "LREF_ALLOW_INSECURE_KEY"
"""Set to 1 (true, yes) to allow sending the API key over plain http to a non-loopback host (`allow_insecure_key`)."""
REFUSAL_STATUS = (400, 413, 422)
"""Statuses that refuse the request itself, for good: the pair is skipped (`TeacherRefusal`), the run goes on."""


def key_is_safe_to_send(url: str) -> bool:
    """Whether a bearer token may go to `url` without the user's explicit consent: https, or a loopback host."""
    parsed = httpx.URL(url)
    return parsed.scheme == "https" or is_loopback_host(parsed.host)


@dataclass
class OpenAITeacherConfig:
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={
        "help": "Base URL of the OpenAI-compatible API, including /v1; requests go to <base_url>/chat/completions."})
    model: str = field(default="", metadata={"help": "Model name sent with every request (as the server knows it)."})
    api_key_env: str | None = field(default="OPENAI_API_KEY", metadata={
        "help": "Name of the environment variable holding the API key (sent as a Bearer token when set)."})
    cache_path: str | None = field(default="teacher_cache.sqlite", metadata={
        "help": "SQLite file caching every answer, so reruns resume without new requests; None disables it."})
    concurrency: int = field(default=4, metadata={"help": "Requests in flight at most."})
    timeout_s: float = field(default=60.0, metadata={"help": "Timeout of one HTTP request, in seconds."})
    max_retries: int = field(default=5, metadata={
        "help": "Retries of one request on 429, 5xx, timeouts and connection errors before giving up."})
    backoff_s: float = field(default=0.5, metadata={"help": "First retry delay; it doubles on every retry."})
    max_backoff_s: float = field(default=30.0, metadata={"help": "Longest delay between two retries."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the first attempt."})
    max_tokens: int = field(default=400, metadata={"help": "Most tokens the teacher may write per answer."})
    malformed_retries: int = field(default=1, metadata={
        "help": "New attempts for an answer without a parsable label (or a garbled body) before it is dropped."})
    retry_temperature: float = field(default=0.7, metadata={
        "help": "Temperature of those new attempts, so a deterministic server can answer differently."})
    hint_label: bool = field(default=True, metadata={
        "help": "Tell the teacher the human label (EE/RA) so it explains the evidence rather than guesses."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    allow_insecure_key: bool = field(default=False, metadata={
        "help": "Send the API key even over plain http to a non-loopback host, where anyone on the path can read it "
                f"(also allowed by ${INSECURE_KEY_ENV}=1). By default the key goes only over https or to a loopback "
                "host, and anything else is refused before the first request."})

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model:
            raise ValueError("model is required: the model name the endpoint serves")
        for name in ("concurrency", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("max_retries", "malformed_retries", "timeout_s", "backoff_s", "max_backoff_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


def insecure_key_allowed(config: OpenAITeacherConfig) -> bool:
    """The user's opt-in to a clear-text key: the config field, or $LREF_ALLOW_INSECURE_KEY set to 1/true/yes."""
    return config.allow_insecure_key or os.environ.get(INSECURE_KEY_ENV, "").strip().lower() in ("1", "true", "yes")


def check_key_destination(url: str, config: OpenAITeacherConfig) -> None:
    """Refuse to send the API key to `url` over plain http to another host, unless the user opted in."""
    if key_is_safe_to_send(url) or insecure_key_allowed(config):
        return
    raise TeacherError(
        f"refusing to send ${config.api_key_env} to {url}: plain http to a non-loopback host would expose the key "
        f"to anyone on the path. Use an https:// URL, unset ${config.api_key_env} (or set api_key_env=None) if "
        f"the endpoint needs no key, or opt in with allow_insecure_key=True / {INSECURE_KEY_ENV}=1"
    )


class ResponseCache:
    """Answers by request hash, in SQLite (WAL). One connection shared by threads, serialised by a lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, "
                             "response TEXT NOT NULL, created REAL NOT NULL)")
            self._db.commit()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, model: str, response: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                             (key, model, response, time.time()))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def request_key(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    payload = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class OpenAIChatClient:
    """The chat backend: cached, retried, concurrent calls to one endpoint."""

    def __init__(self, config: OpenAITeacherConfig):
        self.config = config
        self.name = f"openai:{config.model}"
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if api_key:
            check_key_destination(self.url, config)
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(config.timeout_s),
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
        )
        self.cache = ResponseCache(config.cache_path) if config.cache_path else None
        self._lock = threading.Lock()
        self._stats = {"pairs": 0, "lookups": 0, "requests": 0, "cache_hits": 0, "retries": 0, "failures": 0,
                       "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}

    def _count(self, **deltas: float) -> None:
        with self._lock:
            for key, delta in deltas.items():
                self._stats[key] += delta

    def stats(self) -> dict[str, Any]:
        with self._lock:
            stats = dict(self._stats)
        seconds = stats["seconds"]
        stats["pairs_per_s"] = round(stats["pairs"] / seconds, 3) if seconds > 0 else None
        stats["cache_hit_rate"] = round(stats["cache_hits"] / stats["lookups"], 4) if stats["lookups"] else None
        stats["url"] = self.url
        return stats

    def _params(self, attempt: int) -> dict[str, Any]:
        temperature = self.config.temperature if attempt == 0 else self.config.retry_temperature
        params: dict[str, Any] = {"temperature": temperature, "max_tokens": self.config.max_tokens}
        if attempt:
            params["seed"] = attempt  # a new cache key, and a new sample on servers that honour seeds
        return params

    def _post(self, body: dict[str, Any]) -> httpx.Response:
        """POST with retries; returns the first non-retryable response, or raises TeacherError."""
        last = ""
        for retry in range(self.config.max_retries + 1):
            if retry:
                self._count(retries=1)
            try:
                self._count(requests=1)
                response = self._client.post(self.url, json=body)
            except httpx.TransportError as error:  # connection refused, DNS, timeouts, broken reads
                last = f"{type(error).__name__}: {error}"
                delay = None
            else:
                if response.status_code not in RETRY_STATUS:
                    return response
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                retry_after = response.headers.get("retry-after", "")
                delay = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
            if retry < self.config.max_retries:
                backoff = self.config.backoff_s * (2 ** retry)
                time.sleep(min(self.config.max_backoff_s, delay if delay is not None else backoff))
        cache_note = (f"; finished answers are cached in {self.cache.path}, rerun to resume"
                      if self.cache is not None else "")
        raise TeacherError(f"endpoint {self.url} failed after {self.config.max_retries + 1} attempts "
                           f"(last: {last}){cache_note}")

    def _one(self, messages: list[dict[str, str]], attempt: int) -> str | None:
        params = self._params(attempt)
        key = request_key(self.config.model, messages, params)
        self._count(lookups=1)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            self._count(cache_hits=1)
            return cached
        response = self._post({"model": self.config.model, "messages": messages, **params})
        if response.status_code >= 400:
            try:
                message = response.json().get("error", {}).get("message") or response.text
            except (ValueError, AttributeError):
                message = response.text
            hint = f" (is ${self.config.api_key_env} set?)" if response.status_code in (401, 403) else ""
            # 400/413/422 are about this request (e.g. a prompt over the context length): the pair is skipped
            error = TeacherRefusal if response.status_code in REFUSAL_STATUS else TeacherError
            raise error(f"endpoint {self.url} refused the request: HTTP {response.status_code}: "
                        f"{str(message)[:300]}{hint}")
        try:
            data = response.json()
            content = data["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("content is not text")
        except (ValueError, KeyError, IndexError, TypeError):
            self._count(failures=1)  # a garbled body: the teacher retries or drops this pair
            return None
        usage = data.get("usage") or {}
        self._count(prompt_tokens=usage.get("prompt_tokens", 0) or 0,
                    completion_tokens=usage.get("completion_tokens", 0) or 0)
        if self.cache is not None:
            self.cache.put(key, self.config.model, content)
        return content

    def complete(self, conversations: Sequence[list[dict[str, str]]], attempt: int = 0) -> list[str | None]:
        from tqdm.auto import tqdm

        started = time.perf_counter()
        results: list[str | None] = [None] * len(conversations)
        bar = tqdm(total=len(conversations), desc=f"teacher {self.config.model}", unit="pair",
                   disable=not self.config.progress or len(conversations) < 2)
        executor = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="lref-teacher")
        try:
            futures = {executor.submit(self._one, messages, attempt): i for i, messages in enumerate(conversations)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    error = future.exception()
                    if error is not None:
                        for other in pending:
                            other.cancel()
                        raise error
                    results[futures[future]] = future.result()
                    bar.update(1)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            bar.close()
            self._count(pairs=len(conversations) if attempt == 0 else 0, seconds=time.perf_counter() - started)
        return results

    def close(self) -> None:
        self._client.close()
        if self.cache is not None:
            self.cache.close()


class OpenAITeacher(ChatTeacher):
    """The EE/RA/DR/confusable teacher over an OpenAI-compatible endpoint; see the module docstring."""

    def __init__(self, config: OpenAITeacherConfig):
        self.config = config
        super().__init__(OpenAIChatClient(config), config.malformed_retries, config.hint_label)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "OpenAITeacher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
