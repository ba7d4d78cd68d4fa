"""`lref serve llm | student`: an OpenAI-compatible LLM endpoint, and the relevance service over a student."""

from __future__ import annotations

import typer

from lref.cli.common import serve_app
from lref.config import field_help


def _serve_llm_help(name: str) -> str:
    from lref.serve.llm import LLMServerConfig

    return field_help(LLMServerConfig, name)


@serve_app.command("llm")
def serve_llm_command(
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help=_serve_llm_help("model")),
    host: str = typer.Option("127.0.0.1", "--host", help=_serve_llm_help("host")),
    port: int = typer.Option(8000, "--port", "-p", help=_serve_llm_help("port")),
    served_name: str | None = typer.Option(None, "--served-name", help=_serve_llm_help("served_name")),
    default_max_tokens: int = typer.Option(256, "--default-max-tokens", help=_serve_llm_help("default_max_tokens")),
    max_tokens_limit: int = typer.Option(2048, "--max-tokens-limit", help=_serve_llm_help("max_tokens_limit")),
    threads: int | None = typer.Option(None, "--threads", min=1, help=_serve_llm_help("threads")),
    log_level: str = typer.Option("info", "--log-level", help=_serve_llm_help("log_level")),
    max_prompt_chars: int = typer.Option(32000, "--max-prompt-chars", help=_serve_llm_help("max_prompt_chars")),
    max_prompt_tokens: int = typer.Option(4096, "--max-prompt-tokens", help=_serve_llm_help("max_prompt_tokens")),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", help=_serve_llm_help("max_body_bytes")),
    generation_timeout_s: float = typer.Option(120.0, "--generation-timeout-s",
                                               help=_serve_llm_help("generation_timeout_s")),
    token_file: str | None = typer.Option(None, "--token-file", help=_serve_llm_help("token_file")),
) -> None:
    """An OpenAI-compatible /v1/chat/completions endpoint over a local LLM (zoo name, folder or lref adapter)."""
    from lref.serve.guard import resolve_token
    from lref.serve.llm import LLMServerConfig, serve_llm

    try:
        config = LLMServerConfig(
            model=model, host=host, port=port, served_name=served_name, default_max_tokens=default_max_tokens,
            max_tokens_limit=max_tokens_limit, threads=threads, log_level=log_level,
            max_prompt_chars=max_prompt_chars, max_prompt_tokens=max_prompt_tokens, max_body_bytes=max_body_bytes,
            generation_timeout_s=generation_timeout_s, token_file=token_file,
        )
        resolve_token(config.token_file, config.host)  # refuse a public host without a token before loading
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    serve_llm(config)


def _student_option(name: str, *flags: str, **kwargs):
    """A typer option whose default and help come from ServeStudentConfig's field `name`."""
    from lref.config import field_default
    from lref.serve.student import ServeStudentConfig

    return typer.Option(field_default(ServeStudentConfig, name), *flags,
                        help=field_help(ServeStudentConfig, name), **kwargs)


@serve_app.command("student")
def serve_student_command(
    model: str = typer.Argument(..., metavar="MODEL_DIR", help="A trained cross-encoder folder or an ONNX export."),
    backend: str = _student_option("backend", "--backend", "-b"),
    host: str = _student_option("host", "--host"),
    port: int = _student_option("port", "--port", "-p"),
    max_batch_pairs: int = _student_option("max_batch_pairs", "--max-batch-pairs"),
    max_field_chars: int = _student_option("max_field_chars", "--max-field-chars"),
    max_body_bytes: int = _student_option("max_body_bytes", "--max-body-bytes"),
    micro_batch_size: int = _student_option("micro_batch_size", "--micro-batch-size"),
    max_wait_ms: float = _student_option("max_wait_ms", "--max-wait-ms"),
    threads: int | None = _student_option("threads", "--threads"),
    workers: int = _student_option("workers", "--workers"),
    log_level: str = _student_option("log_level", "--log-level"),
    access_log: bool = _student_option("access_log", "--access-log/--no-access-log"),
    calibrated: bool = _student_option("calibrated", "--calibration/--no-calibration"),
    max_queue_pairs: int = _student_option("max_queue_pairs", "--max-queue-pairs"),
    request_timeout_s: float = _student_option("request_timeout_s", "--request-timeout-s"),
    limit_concurrency: int | None = _student_option("limit_concurrency", "--limit-concurrency"),
    health_window: int = _student_option("health_window", "--health-window"),
    token_file: str | None = _student_option("token_file", "--token-file"),
) -> None:
    """The relevance service over a distilled student: POST /v1/relevance, GET /healthz, GET /metrics."""
    from lref.serve.guard import resolve_token
    from lref.serve.student import ServeStudentConfig, serve_student

    try:
        config = ServeStudentConfig(
            model=model, backend=backend, host=host, port=port, max_batch_pairs=max_batch_pairs,
            max_field_chars=max_field_chars, max_body_bytes=max_body_bytes, micro_batch_size=micro_batch_size,
            max_wait_ms=max_wait_ms, threads=threads, workers=workers, log_level=log_level, access_log=access_log,
            calibrated=calibrated, max_queue_pairs=max_queue_pairs, request_timeout_s=request_timeout_s,
            limit_concurrency=limit_concurrency, health_window=health_window, token_file=token_file,
        )
        resolve_token(config.token_file, config.host)  # refuse a public host without a token before loading
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    serve_student(config)
