"""`lref serve llm` over a tiny model, and the openai teacher against real loopback HTTP servers (no mocks)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from helpers import wait_until_up

from lref.data.records import Record
from lref.labels import get_scheme
from lref.serve.background import free_port, serve_in_background
from lref.serve.guard import TOKEN_ENV, AuthConfigError
from lref.serve.llm import LLMServerConfig, build_server
from lref.teachers import TeacherError, load_rules
from lref.teachers.local import ChatModel, LocalTeacher, LocalTeacherConfig
from lref.teachers.openai import OpenAITeacher, OpenAITeacherConfig
from lref.testing import build_tiny_causal_lm

G3 = get_scheme("graded3")
RECORDS = [
    Record("a", "cordless drill", "DeWalt 20V MAX cordless drill driver kit", label="Exact"),
    Record("b", "garden hose 50 ft", "Flexzilla 50 ft. garden hose, green", label="Partial"),
    Record("c", "ceiling fan", "Replacement light kit for ceiling fan", label="Irrelevant"),
]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    folder = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))
    return ChatModel.load(str(folder), name="tiny")


@pytest.fixture(scope="module")
def server_url(chat_model):
    server = build_server(LLMServerConfig(model="unused", port=free_port(), served_name="tiny", default_max_tokens=8,
                                          max_tokens_limit=64, log_level="warning"), chat_model)
    with serve_in_background(server) as url:
        yield url


def chat_count(url: str) -> int:
    return httpx.get(f"{url}/metrics").json().get("chat_completions_total", 0)


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


# ---------------------------------------------------------------------------------------------------------------------
# The server

def test_models_and_health(server_url):
    assert httpx.get(f"{server_url}/v1/models").json()["data"][0]["id"] == "tiny"
    assert httpx.get(f"{server_url}/health").json()["status"] == "ok"


def test_chat_completion_shape_usage_and_greedy_determinism(server_url):
    body = {"model": "tiny", "messages": [{"role": "system", "content": "Judge relevance."},
                                          {"role": "user", "content": "Query: drill\nProduct: DeWalt drill"}],
            "temperature": 0, "max_tokens": 6}
    first = post(server_url, body)
    assert first.status_code == 200, first.text
    data = first.json()
    assert data["object"] == "chat.completion" and data["model"] == "tiny" and data["id"].startswith("chatcmpl-")
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = data["usage"]
    assert usage["prompt_tokens"] > 10 and 1 <= usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert post(server_url, body).json()["choices"][0]["message"]["content"] == choice["message"]["content"]
    # Content given as text parts is the same prompt.
    parts = dict(body, messages=[body["messages"][0], {"role": "user", "content": [
        {"type": "text", "text": "Query: drill\n"}, {"type": "text", "text": "Product: DeWalt drill"}]}])
    assert post(server_url, parts).json()["usage"]["prompt_tokens"] == usage["prompt_tokens"]


@pytest.mark.parametrize("body, status, message", [
    ({"messages": []}, 422, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 422, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 422, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}, 400, "exceeds this server's limit of 64"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "only n=1"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, 400, "stream=true is not supported"),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "model 'gpt-9' is not served here"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, "only text parts"),
])
def test_bad_requests_are_refused_with_messages(server_url, body, status, message):
    response = post(server_url, body)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


SECRET = "/srv/secret/weights.bin"  # internal detail an exception carries: must never reach a client


class FailingChat(ChatModel):
    """The tiny model, except that a prompt holding 'explode' raises inside generation."""

    def generate(self, messages, *args, **kwargs):
        if any("explode" in m["content"] for m in messages):
            raise RuntimeError(f"simulated failure reading {SECRET}")
        return super().generate(messages, *args, **kwargs)


@pytest.fixture(scope="module")
def limited_url(tmp_path_factory):
    """A server with small prompt and body limits and a 0.05 s generation timeout, over its own copy of the model."""
    folder = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm-limited"))
    loaded = ChatModel.load(str(folder), name="tiny")
    chat = FailingChat(loaded.model, loaded.tokenizer, "tiny")
    config = LLMServerConfig(model="unused", port=free_port(), served_name="tiny", default_max_tokens=8,
                             max_tokens_limit=64, max_prompt_chars=300, max_prompt_tokens=40, max_body_bytes=2048,
                             generation_timeout_s=0.05, log_level="critical")
    with serve_in_background(build_server(config, chat)) as url:
        yield url


def user(content) -> dict:
    return {"messages": [{"role": "user", "content": content}]}


def assert_openai_error(response: httpx.Response, status: int, text: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and text in error["message"]
    return error


def test_prompts_over_the_limits_are_refused_before_generation(limited_url):
    before = chat_count(limited_url)
    error = assert_openai_error(post(limited_url, user("x" * 301)), 413, "over this server's limit of 300")
    assert error["code"] == "prompt_too_large"
    error = assert_openai_error(post(limited_url, user("the drill " * 25)), 400, "over this server's limit of 40")
    assert error["code"] == "context_length_exceeded"
    too_big = httpx.post(f"{limited_url}/v1/chat/completions", content=b"{" + b" " * 3000 + b"}", timeout=30,
                         headers={"content-type": "application/json"})
    assert_openai_error(too_big, 413, "exceeds this server's limit of 2048 bytes")
    assert chat_count(limited_url) == before  # none reached the model


def test_generation_stops_at_the_timeout(limited_url):
    started = time.monotonic()
    response = post(limited_url, {**user("hi"), "max_tokens": 64})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    # Unbounded, the tiny model writes all 64 tokens (in under 0.2 s on a quiet fast CPU, so a 0.2 s timeout let
    # them all through once); max_time cuts it at about 0.05 s, after at least one token.
    assert response.json()["usage"]["completion_tokens"] < 64 and choice["finish_reason"] == "length"
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("body, message", [
    ({**user("hi"), "seed": 2**80}, "seed must be between"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a\ud800"}]}]}, "lone surrogate"),
])
def test_huge_seeds_and_lone_surrogates_are_400s(server_url, body, message):
    import json

    content = json.dumps(body).encode()  # ASCII JSON: the surrogate travels as the escape \ud800
    response = httpx.post(f"{server_url}/v1/chat/completions", content=content, timeout=30,
                          headers={"content-type": "application/json"})
    assert_openai_error(response, 400, message)


def test_a_lone_surrogate_in_plain_content_is_a_400(server_url):
    response = httpx.post(f"{server_url}/v1/chat/completions", timeout=30, headers={"content-type": "application/json"},
                          content=b'{"messages": [{"role": "user", "content": "drill \\ud800"}]}')
    assert_openai_error(response, 400, "messages[0].content contains a lone surrogate")


def test_a_temperature_near_zero_decodes_greedily(server_url):
    body = {**user("Query: drill"), "max_tokens": 4}
    greedy = post(server_url, {**body, "temperature": 0})
    tiny = post(server_url, {**body, "temperature": 1e-300})  # before: NaN probabilities, a plain-text 500
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["message"]["content"] == greedy.json()["choices"][0]["message"]["content"]


def test_an_internal_error_gives_a_generic_json_500(limited_url):
    response = post(limited_url, user("explode"))
    error = assert_openai_error(response, 500, "internal server error (incident ")
    assert error["type"] == "server_error" and SECRET not in response.text and "RuntimeError" not in response.text
    assert post(limited_url, user("hi")).status_code == 200  # and it goes on serving


def test_metrics_bucket_unknown_paths(server_url):
    for i in range(3):
        assert httpx.get(f"{server_url}/probe/{i}").status_code == 404
    counters = httpx.get(f"{server_url}/metrics").json()
    assert counters["path:other"] >= 3 and not any(key.startswith("path:/probe") for key in counters)
    assert counters["path:/metrics"] >= 1  # known paths keep their own series


def test_a_token_is_required_when_set(chat_model, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "llm-token")
    config = LLMServerConfig(model="unused", port=free_port(), served_name="tiny", log_level="warning")
    with serve_in_background(build_server(config, chat_model)) as url:
        assert_openai_error(post(url, user("hi")), 401, "missing or wrong bearer token")
        assert httpx.get(f"{url}/v1/models").status_code == 401
        good = {"authorization": "Bearer llm-token"}
        assert httpx.get(f"{url}/v1/models", headers=good).status_code == 200
        answer = httpx.post(f"{url}/v1/chat/completions", json={**user("hi"), "max_tokens": 2}, headers=good,
                            timeout=30)
        assert answer.status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200  # open for probes


def test_a_public_host_needs_a_token(chat_model, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(AuthConfigError, match="refusing to listen on 0.0.0.0"):
        build_server(LLMServerConfig(model="unused", host="0.0.0.0"), chat_model)


# ---------------------------------------------------------------------------------------------------------------------
# The openai teacher against the real server

def test_openai_teacher_through_lref_server_and_cache(server_url, tmp_path):
    config = OpenAITeacherConfig(base_url=f"{server_url}/v1", model="tiny", cache_path=str(tmp_path / "cache.sqlite"),
                                 max_tokens=8, concurrency=2, malformed_retries=1, progress=False)
    before = chat_count(server_url)
    with OpenAITeacher(config) as teacher:
        first = teacher.explain(RECORDS, G3)
        stats = teacher.stats()
    served = chat_count(server_url) - before
    # A random tiny model writes no label: every answer is malformed, retried once, then dropped; nothing crashes.
    assert [e.id for e in first] == ["a", "b", "c"]
    assert all(e.label is None and e.error == "no parsable label" and e.kind == "ee" for e in first)
    assert stats["requests"] == served == 6 and stats["cache_hits"] == 0 and stats["cache_hit_rate"] == 0.0
    assert stats["malformed_answers"] == 6 and stats["dropped"] == 3 and stats["pairs"] == 3
    assert stats["pairs_per_s"] > 0

    with OpenAITeacher(config) as teacher:  # a rerun, e.g. after an interruption: all from the cache
        again = teacher.explain(RECORDS, G3)
        stats = teacher.stats()
    assert chat_count(server_url) - before == 6  # no new HTTP request reached the server
    assert stats["requests"] == 0 and stats["cache_hits"] == 6 and stats["cache_hit_rate"] == 1.0
    assert [e.analysis for e in again] == [e.analysis for e in first]


def test_openai_teacher_wrong_model_stops_with_the_servers_message(server_url, tmp_path):
    config = OpenAITeacherConfig(base_url=f"{server_url}/v1", model="gpt-9", cache_path=None, progress=False)
    with OpenAITeacher(config) as teacher, pytest.raises(TeacherError, match=r"HTTP 404: model 'gpt-9' is not served"):
        teacher.explain(RECORDS[:1], G3)


# ---------------------------------------------------------------------------------------------------------------------
# The openai teacher against scripted loopback servers

class ScriptedServer:
    """A real http.server on loopback answering POSTs from a script of (status, body) steps; the last step repeats."""

    def __init__(self, script):
        self.script, self.posts = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                outer.posts.append(json.loads(self.rfile.read(length)))
                status, body = outer.script[min(len(outer.posts) - 1, len(outer.script) - 1)]
                payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(text: str) -> dict:
    return {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                      "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}}


def config_for(url: str, tmp_path, **overrides) -> OpenAITeacherConfig:
    values = dict(base_url=url, model="m", cache_path=str(tmp_path / "cache.sqlite"), backoff_s=0.01,
                  max_retries=3, concurrency=1, progress=False)
    values.update(overrides)
    return OpenAITeacherConfig(**values)


def test_retries_on_503_then_parses_label_and_rule_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("LREF_TEST_KEY", "sekret")
    answer = "Product type: a light kit for a fan.\nRule [HD-ACCESSORY] applies.\nRelevance: Irrelevant"
    with ScriptedServer([(503, "busy"), (503, "busy"), (200, completion(answer))]) as server:
        config = config_for(server.url, tmp_path, api_key_env="LREF_TEST_KEY")
        with OpenAITeacher(config) as teacher:
            (explanation,) = teacher.apply_rules(RECORDS[2:], load_rules("homedepot"))
            stats = teacher.stats()
    assert len(server.posts) == 3 and stats["retries"] == 2 and stats["requests"] == 3
    assert explanation.label == "Irrelevant" and explanation.rule_ids == ["HD-ACCESSORY"]
    assert explanation.analysis.endswith("Rule [HD-ACCESSORY] applies.") and explanation.kind == "ra"
    assert stats["prompt_tokens"] == 50 and stats["failures"] == 0
    body = server.posts[-1]
    assert body["model"] == "m" and body["temperature"] == 0.0 and "[HD-BRAND]" in body["messages"][1]["content"]

    # The endpoint is now down, but the answer is cached: the rerun resumes without any request.
    with OpenAITeacher(config) as teacher:
        (again,) = teacher.apply_rules(RECORDS[2:], load_rules("homedepot"))
        assert again == explanation and teacher.stats()["requests"] == 0


def test_garbage_and_malformed_answers_are_counted_retried_and_dropped(tmp_path):
    script = [(200, "<html>not json</html>"), (200, completion("no idea, sorry")),
              (200, completion("Relevance: Exact"))]
    with ScriptedServer(script) as server:
        config = config_for(server.url, tmp_path, malformed_retries=1)
        with OpenAITeacher(config) as teacher:
            first = teacher.explain(RECORDS[:1], G3)  # garbage, then a reply without a label: dropped
            second = teacher.explain(RECORDS[1:2], G3)  # gets the well-formed answer
            stats = teacher.stats()
    assert first[0].label is None and first[0].error == "no parsable label"
    assert second[0].label == "Exact"
    assert stats["failures"] == 1 and stats["malformed_answers"] == 1 and stats["dropped"] == 1
    assert [post["temperature"] for post in server.posts] == [0.0, 0.7, 0.0]  # the retry samples afresh


def test_confusable_through_the_endpoint_falls_back_to_a_neighbour(tmp_path):
    with ScriptedServer([(200, completion("Partial")), (200, completion("Exact"))]) as server:
        with OpenAITeacher(config_for(server.url, tmp_path, malformed_retries=0)) as teacher:
            labels = teacher.confusable(RECORDS[:2], G3)
    # a: Exact named Partial; b: Partial was answered Exact (also valid). Both differ from the human label.
    assert labels == ["Partial", "Exact"]


def test_down_endpoint_raises_a_clear_error_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with OpenAITeacher(config_for(url, tmp_path, max_retries=2)) as teacher:
        with pytest.raises(TeacherError) as caught:
            teacher.explain(RECORDS, G3)
        assert teacher.stats()["requests"] >= 3
    message = str(caught.value)
    assert f"{url}/chat/completions failed after 3 attempts" in message and "ConnectError" in message
    assert "rerun to resume" in message


def test_config_is_validated():
    with pytest.raises(ValueError, match="model is required"):
        OpenAITeacherConfig(base_url="http://x/v1")
    with pytest.raises(ValueError, match="http:// or https://"):
        OpenAITeacherConfig(base_url="localhost:8000", model="m")
    with pytest.raises(ValueError, match="port"):
        LLMServerConfig(port=0)
    with pytest.raises(ValueError, match="max_prompt_tokens must be >= 1"):
        LLMServerConfig(max_prompt_tokens=0)
    with pytest.raises(ValueError, match="generation_timeout_s must be > 0"):
        LLMServerConfig(generation_timeout_s=0)


# ---------------------------------------------------------------------------------------------------------------------
# The local teacher

def test_local_teacher_generates_and_never_crashes_on_unparsable_text(chat_model):
    teacher = LocalTeacher(LocalTeacherConfig(max_new_tokens=4, malformed_retries=0, progress=False), chat_model)
    out = teacher.reflect(RECORDS[:2], ["Irrelevant", "Exact"], G3)
    assert [e.kind for e in out] == ["dr", "dr"] and [e.wrong_label for e in out] == ["Irrelevant", "Exact"]
    assert all(e.label is None and e.error for e in out)
    stats = teacher.stats()
    assert stats["pairs"] == 2 and 0 < stats["generated_tokens"] <= 8 and stats["dropped"] == 2


def test_plain_prompt_without_chat_template(chat_model):
    text, templated = chat_model.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert not templated and text == "System: S\n\nUser: U\n\nAssistant:"


# ---------------------------------------------------------------------------------------------------------------------
# The command line

def test_cli_serve_llm_end_to_end(tmp_path):
    import subprocess
    import sys

    folder = build_tiny_causal_lm(tmp_path / "model")
    port = free_port()
    command = [sys.executable, "-m", "lref.cli", "serve", "llm", "--model", str(folder), "--port", str(port),
               "--served-name", "tiny", "--log-level", "warning", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(process, f"{url}/health")
        response = post(url, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] <= 3
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_cli_serve_llm_refuses_a_bad_port():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "lref.cli", "serve", "llm", "--port", "70000"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "port must be in 1..65535" in result.stderr


@pytest.mark.smoke
def test_smoke_real_gemma_served_and_used_as_openai_teacher(tmp_path):
    """Real Gemma-3-270M behind `lref serve llm`, asked through the openai teacher (2 pairs, 24 tokens each)."""
    from lref.models.zoo import resolve_model

    chat = ChatModel.load(str(resolve_model("gemma-3-270m")), name="gemma-3-270m")
    port = free_port()
    server = build_server(LLMServerConfig(port=port, served_name="gemma-3-270m", log_level="warning"), chat)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        config = OpenAITeacherConfig(base_url=f"http://127.0.0.1:{port}/v1", model="gemma-3-270m", max_tokens=24,
                                     cache_path=str(tmp_path / "cache.sqlite"), malformed_retries=0, progress=False)
        with OpenAITeacher(config) as teacher:
            out = teacher.explain(RECORDS[:2], G3)
            stats = teacher.stats()
        assert len(out) == 2 and all(e.analysis or e.error for e in out)
        assert stats["requests"] == 2 and stats["completion_tokens"] > 0 and stats["pairs_per_s"] > 0
        print("\nsmoke:", stats, [(e.label, e.analysis[:80]) for e in out])
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize(("status", "refusal"), [(400, True), (413, True), (422, True), (401, False), (404, False)])
def test_request_errors_are_refusals_the_run_skips_and_endpoint_errors_stop_it(tmp_path, status, refusal):
    from lref.teachers.base import TeacherRefusal

    body = {"error": {"message": "This model's maximum context length is 32 tokens"}}
    with ScriptedServer([(status, body)]) as server:
        with OpenAITeacher(config_for(server.url, tmp_path, cache_path=None)) as teacher:
            with pytest.raises(TeacherError, match=f"HTTP {status}: This model's maximum context") as raised:
                teacher.explain(RECORDS[:1], G3)
    assert isinstance(raised.value, TeacherRefusal) is refusal
