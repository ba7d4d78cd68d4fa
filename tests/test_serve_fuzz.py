"""schemathesis against each service's own OpenAPI schema, on real servers on loopback (tiny random models): whatever
body the schema admits (positive cases), or almost admits (negative cases: wrong types, missing fields...), the answer
is never a 5xx and always matches the documented response schema and content type. Bounded and derandomized: the
same cases on every run.

The operations are driven through hypothesis directly (`APIOperation.as_strategy`): schemathesis' own pytest loader
(`from_fixture`) does not run under the installed pytest 9."""

from __future__ import annotations

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from lref.data.records import Record
from lref.labels import get_scheme
from lref.serve.background import free_port, serve_in_background
from lref.serve.llm import LLMServerConfig
from lref.serve.llm import build_server as build_llm_server
from lref.serve.student import ServeStudentConfig
from lref.serve.student import build_server as build_student_server
from lref.teachers.local import ChatModel
from lref.testing import build_tiny_causal_lm, build_tiny_encoder
from lref.training.cross_encoder import CrossEncoderConfig, train_cross_encoder

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
FUZZ = settings(max_examples=40, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def student_schema(tmp_path_factory):
    torch.set_num_threads(1)
    encoder = build_tiny_encoder(tmp_path_factory.mktemp("encoder"))
    labels = get_scheme("graded3").labels
    records = [Record(f"r{i}", f"drill {i}", "DeWalt drill kit", label=labels[i % 3]) for i in range(6)]
    student = train_cross_encoder(CrossEncoderConfig(
        model=str(encoder), output_dir=str(tmp_path_factory.mktemp("student") / "ce"), max_steps=1, batch_size=4,
        progress=False, threads=1), records)
    config = ServeStudentConfig(model=str(student), backend="torch", port=free_port(), threads=1, max_wait_ms=0,
                                log_level="critical", max_batch_pairs=8, max_field_chars=200, max_body_bytes=8192)
    with serve_in_background(build_student_server(config)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.fixture(scope="module")
def llm_schema(tmp_path_factory):
    chat = ChatModel.load(str(build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))), name="tiny")
    config = LLMServerConfig(model="unused", port=free_port(), served_name="tiny", default_max_tokens=2,
                             max_tokens_limit=4, max_prompt_chars=400, max_prompt_tokens=128, max_body_bytes=8192,
                             generation_timeout_s=1.0, log_level="critical")
    with serve_in_background(build_llm_server(config, chat)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def fuzz(schema, method: str, path: str) -> None:
    operation = schema[path][method]
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if method == "POST" else [])

    @FUZZ
    @given(case=st.one_of(*(operation.as_strategy(mode) for mode in modes)))
    def run(case):
        case.call_and_validate(checks=CHECKS, timeout=30)

    run()


@pytest.mark.parametrize("method, path", [("POST", "/v1/relevance"), ("GET", "/healthz"), ("GET", "/metrics")])
def test_student_service_answers_every_case_within_its_schema(student_schema, method, path):
    fuzz(student_schema, method, path)


@pytest.mark.parametrize("method, path", [("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                                          ("GET", "/health"), ("GET", "/metrics")])
def test_llm_service_answers_every_case_within_its_schema(llm_schema, method, path):
    fuzz(llm_schema, method, path)
