"""`lref serve student`: the real server on a loopback port over a tiny cross-encoder, called over HTTP (no mocks)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from helpers import wait_until_up
from prometheus_client.parser import text_string_to_metric_families

from lref.data.records import Record
from lref.labels import get_scheme
from lref.models.cross_encoder import CrossEncoderScorer
from lref.models.scorer import ScorerConfig
from lref.serve.background import free_port, serve_in_background
from lref.serve.guard import TOKEN_ENV, AuthConfigError
from lref.serve.student import (
    InputRejected,
    MicroBatcher,
    QueueFull,
    ServeStudentConfig,
    StudentMetrics,
    build_server,
    relevance_results,
)
from lref.testing import build_tiny_encoder
from lref.training.cross_encoder import CrossEncoderConfig, train_cross_encoder

G3 = get_scheme("graded3")
LIMITS = dict(max_batch_pairs=16, max_field_chars=50, max_body_bytes=2048, micro_batch_size=8)


SECRET = "/srv/secret/model.bin"  # internal detail an exception carries: must never reach a client


class Flaky:
    """The real scorer, except for marked queries in a batch: 'explode' raises (input the model cannot score), 'slow'
    takes a second, 'halt' raises SystemExit (kills the thread it runs on); `broken` makes every call raise."""

    def __init__(self, scorer, broken: bool = False):
        self.scorer, self.scheme, self.broken = scorer, scorer.scheme, broken

    def score(self, records):
        queries = {r.query for r in records}
        if self.broken or "explode" in queries:
            raise RuntimeError(f"simulated model failure reading {SECRET}")
        if "halt" in queries:
            raise SystemExit(3)
        if "slow" in queries:
            time.sleep(1.0)
        return self.scorer.score(records)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    torch.set_num_threads(1)
    encoder = build_tiny_encoder(tmp_path_factory.mktemp("encoder"))
    records = [Record(f"r{i}", f"drill {i}", "DeWalt drill kit", label=G3.labels[i % 3]) for i in range(6)]
    config = CrossEncoderConfig(model=str(encoder), output_dir=str(tmp_path_factory.mktemp("student") / "ce"),
                                max_steps=1, batch_size=4, progress=False, threads=1)
    return train_cross_encoder(config, records)


@pytest.fixture(scope="module")
def reference(student):
    """The same student scored in-process: what the service must return."""
    return CrossEncoderScorer.from_pretrained(student, config=ScorerConfig(batch_size=64, max_length=128))


@pytest.fixture(scope="module")
def server_url(student, reference):
    # A long max_wait_ms makes concurrent requests land in one micro-batch even on a busy machine.
    config = ServeStudentConfig(model=str(student), backend="torch", port=free_port(), max_wait_ms=100,
                                threads=1, log_level="warning", **LIMITS)
    with serve_in_background(build_server(config, Flaky(reference))) as url:
        yield url


def pair(i: int, **extra) -> dict:
    return {"query": f"cordless drill {i}", "title": f"DeWalt {i} V drill driver kit", **extra}


def as_records(pairs: list[dict]) -> list[Record]:
    return [Record(str(i), p["query"], p["title"], brand=p.get("brand"), description=p.get("description"))
            for i, p in enumerate(pairs)]


def post(url: str, body=None, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/relevance", json=body, timeout=30, **kwargs)


def metrics(url: str) -> dict[str, float]:
    """Every sample of /metrics, keyed by name and labels, e.g. 'lref_student_batch_pairs_count'."""
    text = httpx.get(f"{url}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def assert_matches(results: list[dict], pairs: list[dict], reference) -> None:
    expected = reference.score(as_records(pairs)).probs
    assert len(results) == len(pairs)
    for result, row in zip(results, expected):
        probs = np.array([result["probabilities"][label] for label in G3.labels])
        assert list(result["probabilities"]) == list(G3.labels)  # scheme order
        np.testing.assert_allclose(probs, row, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Scoring


def test_relevance_happy_path(server_url, reference):
    pairs = [pair(1), pair(2, brand="DeWalt"), pair(3, description="A 20V drill with two batteries.")]
    response = post(server_url, {"pairs": pairs})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["scheme"] == "graded3" and len(data["results"]) == 3
    for result in data["results"]:
        probs = result["probabilities"]
        assert abs(sum(probs.values()) - 1.0) < 1e-6
        assert result["label"] == max(probs, key=probs.get)
        assert 1.0 <= result["expected_grade"] <= 3.0
        assert result["expected_grade"] == pytest.approx(sum(p * G3.rating(label) for label, p in probs.items()))
    assert_matches(data["results"], pairs, reference)
    # Brand and description reach the model: the same query and title without them scores differently.
    bare = post(server_url, {"pairs": [pair(2)]}).json()["results"][0]["probabilities"]
    assert bare != data["results"][1]["probabilities"]


def test_relevance_results_from_logits():
    (result,) = relevance_results(np.log(np.array([[0.2, 0.5, 0.3]])), G3)
    assert result["label"] == "Partial" and result["expected_grade"] == pytest.approx(0.6 + 1.0 + 0.3)
    assert result["probabilities"] == pytest.approx({"Exact": 0.2, "Partial": 0.5, "Irrelevant": 0.3})


def post_together(server_url: str, bodies: list[list[dict]]) -> list:
    """POST each body's pairs from its own thread, all released at once; the responses in body order."""
    start = threading.Barrier(len(bodies))
    answers: list = [None] * len(bodies)

    def client(i: int) -> None:
        start.wait()
        answers[i] = post(server_url, {"pairs": bodies[i]})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_concurrent_clients_are_batched_and_get_their_own_results(server_url, reference):
    before = metrics(server_url)
    clients = 12
    bodies = [[pair(100 + i)] for i in range(clients)]  # one pair each: a batch > 1 can only come from batching
    answers = post_together(server_url, bodies)
    for body, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        assert_matches(answer.json()["results"], body, reference)
    after = metrics(server_url)
    calls = after["lref_student_batch_pairs_count"] - before["lref_student_batch_pairs_count"]
    pairs = after["lref_student_batch_pairs_sum"] - before["lref_student_batch_pairs_sum"]
    assert pairs == clients and calls < clients  # some model call scored pairs of several requests


def test_a_request_over_the_micro_batch_size_is_split_and_reassembled(server_url, reference):
    pairs = [pair(200 + i) for i in range(LIMITS["max_batch_pairs"])]  # 16 pairs, micro-batches of 8
    before = metrics(server_url)
    response = post(server_url, {"pairs": pairs})
    assert response.status_code == 200, response.text
    assert_matches(response.json()["results"], pairs, reference)
    after = metrics(server_url)
    assert after["lref_student_batch_pairs_count"] - before["lref_student_batch_pairs_count"] == 2
    assert after["lref_student_batch_pairs_bucket{le=8.0}"] - before["lref_student_batch_pairs_bucket{le=8.0}"] == 2


def test_pairs_the_model_cannot_score_fail_their_request_only_and_the_server_keeps_serving(server_url, reference):
    before = metrics(server_url)
    failed = post(server_url, {"pairs": [{"query": "explode", "title": "anything"}]})
    # The probe pair scores, so the model works: the request's own pairs are at fault (422), with no internals.
    assert failed.status_code == 422, failed.text
    assert "could not score pairs[0:1]" in failed.json()["error"]["message"]
    assert SECRET not in failed.text and "RuntimeError" not in failed.text
    ok = post(server_url, {"pairs": [pair(7)]})
    assert ok.status_code == 200
    assert_matches(ok.json()["results"], [pair(7)], reference)
    after = metrics(server_url)
    assert after["lref_student_model_errors_total"] - before["lref_student_model_errors_total"] == 1
    key = "lref_student_requests_total{path=/v1/relevance,status=422}"
    assert after[key] - before.get(key, 0) == 1
    assert httpx.get(f"{server_url}/healthz").status_code == 200  # bad input does not make the server unhealthy


def test_one_bad_request_in_a_shared_batch_fails_alone(server_url, reference):
    bodies = [[pair(300 + i)] for i in range(8)] + [[{"query": "explode", "title": "x"}]]
    answers = post_together(server_url, bodies)
    for body, answer in zip(bodies[:-1], answers[:-1]):
        assert answer.status_code == 200, answer.text  # before the fix: 500 for everyone batched with 'explode'
        assert_matches(answer.json()["results"], body, reference)
    assert answers[-1].status_code == 422 and SECRET not in answers[-1].text


def test_micro_batcher_isolates_a_failing_request_in_one_batch():
    gate = threading.Event()

    def score(records):
        gate.wait(5)
        if any(r.query == "bad" for r in records):
            raise ValueError("cannot tokenise")
        return np.array([[float(len(r.query)), 0.0, 0.0] for r in records])

    batcher = MicroBatcher(score, 3, micro_batch_size=16, max_wait_s=0.0).start()
    try:
        first = batcher.submit([Record("0", "x", "t")])
        time.sleep(0.1)  # the worker holds the first call; the rest queue and go into one batch
        good = [batcher.submit([Record("1", "ab", "t"), Record("2", "abc", "t")]),
                batcher.submit([Record("3", "a", "t")])]
        bad = batcher.submit([Record("4", "ok", "t"), Record("5", "bad", "t")])
        gate.set()
        first.result(5)
        assert good[0].result(5)[:, 0].tolist() == [2.0, 3.0] and good[1].result(5)[:, 0].tolist() == [1.0]
        with pytest.raises(InputRejected):
            bad.result(5)
        assert batcher.health() is None
    finally:
        batcher.stop()


def test_micro_batcher_refuses_pairs_beyond_its_queue_bound():
    gate = threading.Event()
    batcher = MicroBatcher(lambda records: gate.wait(5) and np.zeros((len(records), 3)), 3, micro_batch_size=4,
                           max_wait_s=0.0, max_queue_pairs=4).start()
    try:
        first = batcher.submit([Record("0", "q", "t")])
        time.sleep(0.1)  # taken by the worker: no longer queued
        queued = batcher.submit([Record(str(i), "q", "t") for i in range(4)])
        with pytest.raises(QueueFull, match="at most 4"):
            batcher.submit([Record("5", "q", "t")])
        gate.set()
        assert first.result(5).shape == (1, 3) and queued.result(5).shape == (4, 3)
        assert batcher.submit([Record("6", "q", "t")]).result(5).shape == (1, 3)  # room again
    finally:
        batcher.stop()


@pytest.fixture(scope="module")
def slow_url(student, reference):
    """A server with a small queue and a short request timeout; 'slow' holds its worker for a second."""
    config = ServeStudentConfig(model=str(student), backend="torch", port=free_port(), max_wait_ms=0, threads=1,
                                log_level="warning", max_batch_pairs=8, micro_batch_size=8, max_queue_pairs=8,
                                request_timeout_s=0.5)
    with serve_in_background(build_server(config, Flaky(reference))) as url:
        yield url


def test_a_request_not_scored_in_time_gets_504(slow_url):
    started = time.monotonic()
    response = post(slow_url, {"pairs": [{"query": "slow", "title": "x"}]})
    assert response.status_code == 504 and "not scored within 0.5 s" in response.json()["error"]["message"]
    assert time.monotonic() - started < 0.95  # answered at the timeout, not when the model finished
    time.sleep(0.7)  # let the worker finish the slow call
    assert post(slow_url, {"pairs": [pair(1)]}).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(slow_url):
    holder = threading.Thread(target=post, args=(slow_url, {"pairs": [{"query": "slow", "title": "x"}]}))
    holder.start()
    time.sleep(0.2)  # the worker is now busy for a second
    filler = threading.Thread(target=post, args=(slow_url, {"pairs": [pair(i) for i in range(8)]}))
    filler.start()
    deadline = time.monotonic() + 0.7
    while metrics(slow_url)["lref_student_queue_pairs"] < 8 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the filler's 8 pairs are queued: the bound
    refused = post(slow_url, {"pairs": [pair(9)]})
    holder.join()
    filler.join()
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1" and refused.json()["error"]["type"] == "overloaded"


def test_a_broken_model_gives_generic_500s_and_an_unhealthy_healthz(student, reference):
    config = ServeStudentConfig(model=str(student), backend="torch", port=free_port(), max_wait_ms=0, threads=1,
                                log_level="critical", health_window=2)
    flaky = Flaky(reference, broken=True)
    with serve_in_background(build_server(config, flaky)) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200  # no model call yet
        failed = post(url, {"pairs": [pair(1)]})
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "internal_error"
        assert SECRET not in failed.text and "RuntimeError" not in failed.text  # before the fix: echoed
        health = httpx.get(f"{url}/healthz")
        assert health.status_code == 503  # the call and the probe both failed
        data = health.json()
        assert data["status"] == "unavailable" and "last 2 model calls failed" in data["reason"]
        assert data["scheme"]["name"] == "graded3" and data["backend"] == "torch"  # the usual fields stay
        flaky.broken = False
        assert post(url, {"pairs": [pair(1)]}).status_code == 200
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


def test_a_dead_batcher_thread_makes_healthz_and_requests_503(student, reference):
    config = ServeStudentConfig(model=str(student), backend="torch", port=free_port(), max_wait_ms=0, threads=1,
                                log_level="critical", request_timeout_s=5)
    with serve_in_background(build_server(config, Flaky(reference))) as url:
        killed = post(url, {"pairs": [{"query": "halt", "title": "x"}]})
        assert killed.status_code == 503, killed.text  # failed at once, not left to time out
        health = httpx.get(f"{url}/healthz")
        assert health.status_code == 503 and "batcher thread is not running" in health.json()["reason"]
        later = post(url, {"pairs": [pair(1)]})
        assert later.status_code == 503 and later.json()["error"]["type"] == "unavailable"


# ---------------------------------------------------------------------------------------------------------------------
# Validation and limits


@pytest.mark.parametrize("body, message", [
    ({"pairs": [pair(0), {"query": "", "title": "drill"}]}, "pairs[1].query: String should have at least 1 character"),
    ({"pairs": [{"query": "drill", "title": "   "}]}, "pairs[0].title: String should have at least 1 character"),
    ({"pairs": [pair(0, description="x" * 51)]}, "pairs[0].description: String should have at most 50 characters"),
    ({"pairs": [pair(0), {"query": "drill"}]}, "pairs[1].title: Field required"),
    ({"pairs": [pair(0, titel="typo")]}, "pairs[0].titel: Extra inputs are not permitted"),
    ({"pairs": [{"query": 5, "title": "drill"}]}, "pairs[0].query: Input should be a valid string"),
    ({"pairs": []}, "pairs: List should have at least 1 item"),
    ({"pairs": [pair(i) for i in range(17)]}, "pairs: 17 pairs exceed this server's limit of 16 per request"),
    ({"items": []}, "pairs: Field required"),
])
def test_invalid_requests_are_refused_naming_the_problem(server_url, body, message):
    response = post(server_url, body)
    assert response.status_code == 422
    assert message in response.json()["error"]["message"]


def test_malformed_json_is_refused(server_url):
    response = post(server_url, content=b'{"pairs": [{"query": "drill",', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "malformed JSON at offset 29: Expecting property name" in response.json()["error"]["message"]


def test_bodies_over_the_limit_are_refused_with_413(server_url):
    big = {"pairs": [pair(i, brand="b" * 50, description="d" * 50) for i in range(16)]}
    by_header = post(server_url, big)  # httpx sends Content-Length
    assert by_header.status_code == 413 and "2048 bytes" in by_header.json()["error"]["message"]

    def stream():  # chunked transfer: no Content-Length, so only the bytes received can tell
        for _ in range(50):
            yield b" " * 100

    by_stream = httpx.post(f"{server_url}/v1/relevance", content=stream(), timeout=30,
                           headers={"content-type": "application/json"})
    assert "content-length" not in by_stream.request.headers
    assert by_stream.status_code == 413 and "2048 bytes" in by_stream.json()["error"]["message"]
    # A body under the limit, chunked the same way, is read whole and scored.
    small = httpx.post(f"{server_url}/v1/relevance", content=iter([b'{"pairs": [', b'{"query": "a", "title": "b"}]}']),
                       timeout=30, headers={"content-type": "application/json"})
    assert small.status_code == 200 and len(small.json()["results"]) == 1
    assert metrics(server_url)["lref_student_requests_total{path=/v1/relevance,status=413}"] >= 2


def test_text_that_is_not_valid_unicode_is_refused_with_422(server_url):
    lone = b'{"pairs": [{"query": "drill \\ud800", "title": "kit"}]}'  # JSON escapes a lone surrogate
    response = post(server_url, content=lone, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "pairs[0].query" in response.json()["error"]["message"]
    assert "unable to parse raw data as a unicode string" in response.json()["error"]["message"]
    raw = post(server_url, content=b'{"pairs": [{"query": "\xff\xfe", "title": "kit"}]}',
               headers={"content-type": "application/json"})
    assert 400 <= raw.status_code < 500 and "error" in raw.json()  # bad UTF-8 bytes: a JSON 4xx, never a 500


def test_unknown_paths_and_methods_answer_in_the_error_shape(server_url):
    missing = httpx.get(f"{server_url}/no/such/path")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    wrong = httpx.get(f"{server_url}/v1/relevance")
    assert wrong.status_code == 405 and "error" in wrong.json()


@pytest.fixture(scope="module")
def token_url(student, reference, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text("s3cret-token\n")
    config = ServeStudentConfig(model=str(student), backend="torch", port=free_port(), threads=1,
                                log_level="warning", token_file=str(token_file))
    with serve_in_background(build_server(config, reference)) as url:
        yield url


def test_a_token_is_required_when_set(token_url):
    body = {"pairs": [pair(1)]}
    missing = post(token_url, body)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert post(token_url, body, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{token_url}/metrics").status_code == 401
    assert post(token_url, body, headers={"authorization": "Bearer s3cret-token"}).status_code == 200
    assert httpx.get(f"{token_url}/healthz").status_code == 200  # open for probes: it tells no secret


def test_a_public_host_needs_a_token(student, reference, monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    public = ServeStudentConfig(model=str(student), backend="torch", host="0.0.0.0", port=free_port())
    with pytest.raises(AuthConfigError, match="refusing to listen on 0.0.0.0 without authentication"):
        build_server(public, reference)
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert build_server(public, reference) is not None  # the env token is enough
    (tmp_path / "empty").write_text("")
    with pytest.raises(AuthConfigError, match="is empty"):
        build_server(ServeStudentConfig(model=str(student), token_file=str(tmp_path / "empty")), reference)


def test_a_calibration_with_nan_is_refused_at_load_naming_file_and_key(student, tmp_path):
    import shutil

    from lref.labels import LabelError

    folder = shutil.copytree(student, tmp_path / "student")
    (folder / "calibration.json").write_text('{"bias": {"Exact": 0.0, "Partial": NaN, "Irrelevant": 0.5}}')
    config = ServeStudentConfig(model=str(folder), backend="torch", port=free_port(), threads=1)
    with pytest.raises(LabelError, match=r"calibration\.json.*'Partial'.*not a finite number"):
        build_server(config)


# ---------------------------------------------------------------------------------------------------------------------
# Health and metrics


def test_healthz(server_url, student):
    data = httpx.get(f"{server_url}/healthz").json()
    assert data["status"] == "ok" and data["model"] == str(student) and data["backend"] == "torch"
    assert data["scheme"] == {"name": "graded3", "labels": ["Exact", "Partial", "Irrelevant"],
                              "ratings": [3.0, 2.0, 1.0]}
    assert data["limits"]["max_batch_pairs"] == 16
    assert data["label_bias"] is None  # the test student has no calibration.json


def test_metrics_are_prometheus_text(server_url):
    post(server_url, {"pairs": [pair(1)]})
    httpx.get(f"{server_url}/healthz")
    response = httpx.get(f"{server_url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = metrics(server_url)
    assert samples["lref_student_requests_total{path=/v1/relevance,status=200}"] >= 1
    assert samples["lref_student_requests_total{path=/healthz,status=200}"] >= 1
    assert samples["lref_student_request_seconds_count"] >= 1 and samples["lref_student_request_seconds_sum"] > 0
    assert samples["lref_student_queue_pairs"] == 0  # nothing waiting now
    assert samples["lref_student_pairs_total"] >= 1


# ---------------------------------------------------------------------------------------------------------------------
# The micro-batcher alone


def test_micro_batcher_splits_batches_and_routes_results():
    calls = []
    gate = threading.Event()

    def score(records):
        gate.wait(5)  # hold the first call so the rest queue up behind it
        calls.append(len(records))
        return np.array([[float(r.query), 0.0, 0.0] for r in records])

    metrics = StudentMetrics.create()
    batcher = MicroBatcher(score, 3, micro_batch_size=4, max_wait_s=0.0, metrics=metrics).start()
    try:
        first = batcher.submit([Record("0", "1", "t")])
        time.sleep(0.1)  # the worker now waits in the first call
        futures = [batcher.submit([Record(str(j), str(10 * i + j), "t") for j in range(n)])
                   for i, n in enumerate([3, 1, 6, 2])]
        assert metrics.registry.get_sample_value("lref_student_queue_pairs") == 12  # all but the first request wait
        gate.set()
        assert first.result(5)[:, 0].tolist() == [1.0]
        for i, (n, future) in enumerate(zip([3, 1, 6, 2], futures)):
            assert future.result(5)[:, 0].tolist() == [float(10 * i + j) for j in range(n)]
    finally:
        batcher.stop()
    # queued chunks [3], [1], [4, 2] (the 6-pair request split), [2]: packed FIFO into calls of at most 4 pairs
    assert calls == [1, 4, 4, 4]
    assert metrics.registry.get_sample_value("lref_student_queue_pairs") == 0
    assert metrics.registry.get_sample_value("lref_student_batch_pairs_sum") == 13


# ---------------------------------------------------------------------------------------------------------------------
# Backends and the command line


def test_int8_backend_serves_an_exported_student(student, tmp_path):
    from lref.models.onnx import ExportConfig, export_student

    exported = export_student(ExportConfig(model=str(student), output_dir=str(tmp_path / "onnx")))
    config = ServeStudentConfig(model=str(exported), backend="int8", port=free_port(), threads=1, log_level="warning")
    pairs = [pair(1), pair(2, brand="DeWalt")]
    with serve_in_background(build_server(config)) as url:
        assert httpx.get(f"{url}/healthz").json()["backend"] == "int8"
        response = post(url, {"pairs": pairs})
    assert response.status_code == 200, response.text
    torch_probs = CrossEncoderScorer.from_pretrained(student).score(as_records(pairs)).probs
    served = np.array([[r["probabilities"][label] for label in G3.labels] for r in response.json()["results"]])
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(served, torch_probs, atol=0.05)  # int8 weights: close to the fp32 model, not equal


def test_config_is_validated():
    with pytest.raises(ValueError, match="backend must be one of int8, onnx, torch"):
        ServeStudentConfig(backend="tensorrt")
    with pytest.raises(ValueError, match="micro_batch_size must be >= 1"):
        ServeStudentConfig(micro_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms must be >= 0"):
        ServeStudentConfig(max_wait_ms=-1)
    with pytest.raises(ValueError, match="max_queue_pairs .* must be >= max_batch_pairs"):
        ServeStudentConfig(max_queue_pairs=10, max_batch_pairs=20)
    with pytest.raises(ValueError, match="request_timeout_s must be > 0"):
        ServeStudentConfig(request_timeout_s=0)
    with pytest.raises(ValueError, match="limit_concurrency must be >= 1"):
        ServeStudentConfig(limit_concurrency=0)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ServeStudentConfig(workers=0)


def test_connections_over_limit_concurrency_get_503(student, reference):
    config = ServeStudentConfig(model=str(student), backend="torch", port=free_port(), max_wait_ms=0, threads=1,
                                log_level="critical", limit_concurrency=2)
    with serve_in_background(build_server(config, Flaky(reference))) as url:
        holder = threading.Thread(target=post, args=(url, {"pairs": [{"query": "slow", "title": "x"}]}))
        holder.start()
        time.sleep(0.3)  # one connection with a request in flight: at the limit of 2
        refused = httpx.get(f"{url}/healthz", timeout=10)
        holder.join()
        assert refused.status_code == 503  # uvicorn's own answer, before the app
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200  # free again


@contextlib.contextmanager
def cli_server(student, *options: str):
    """`lref serve student` (torch, one thread) as a child process with `options`; yields the process and its URL."""
    port = free_port()
    command = [sys.executable, "-m", "lref.cli", "serve", "student", str(student), "--backend", "torch",
               "--port", str(port), "--log-level", "warning", "--threads", "1", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(process, f"{url}/healthz")
        yield process, url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_cli_serve_student_end_to_end(student):
    with cli_server(student, "--max-batch-pairs", "2") as (_, url):
        assert post(url, {"pairs": [pair(1)]}).status_code == 200
        assert "limit of 2 per request" in post(url, {"pairs": [pair(i) for i in range(3)]}).json()["error"]["message"]


def worker_processes(parent: int) -> list[int]:
    """Child processes of `parent` that are multiprocessing workers (uvicorn spawns them), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # a process that ended while being read
        if ppid == parent and b"spawn_main" in command:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="counts worker processes through Linux /proc")
def test_cli_serve_student_with_two_workers_serves_the_same_scores_from_two_processes(student, reference):
    with cli_server(student, "--workers", "2") as (process, url):
        workers = set(worker_processes(process.pid))
        assert len(workers) == 2
        answered = set()
        for _ in range(60):  # fresh connections, which the kernel hands to either worker
            answered.add(httpx.get(f"{url}/healthz", timeout=30).json()["pid"])
            if answered == workers:
                break
        assert answered == workers
        pairs = [pair(i) for i in range(4)]
        for _ in range(4):
            response = post(url, {"pairs": pairs})
            assert response.status_code == 200, response.text
            assert_matches(response.json()["results"], pairs, reference)
        assert post(url, {"pairs": []}).status_code == 422


def test_several_workers_refuse_a_folder_that_cannot_serve_before_starting_any(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lref.cli", "serve", "student", str(tmp_path), "--workers", "2",
                             "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no label scheme" in result.stderr  # the folder has no manifest


def test_cli_serve_student_refuses_a_public_host_without_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    result = subprocess.run([sys.executable, "-m", "lref.cli", "serve", "student", str(tmp_path), "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and "without authentication" in result.stderr  # before any model is loaded


def test_cli_serve_student_refuses_a_bad_backend(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lref.cli", "serve", "student", str(tmp_path), "--backend", "gpu"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "backend must be one of int8, onnx, torch" in result.stderr
