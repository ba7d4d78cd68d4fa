"""Helpers shared by the test modules (importable because pytest puts tests/ on sys.path)."""

import sys

from lref.cli import main


def run_lref(monkeypatch, capsys, *args):
    """Run `lref ARGS` in-process as the installed script runs it; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["lref", *args])
    monkeypatch.setenv("COLUMNS", "200")  # keep rich from wrapping lines
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def wait_until_up(process, url: str, timeout: float = 90) -> None:
    """Poll `url` until it answers 200, failing with the server's output if `process` exits or `timeout` passes."""
    import time

    import httpx

    deadline = time.time() + timeout
    while True:
        assert process.poll() is None, process.stdout.read().decode()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.time() < deadline, f"{url} did not come up within {timeout} s"
        time.sleep(0.2)


def other_label(label: str) -> str:
    """A graded3 label that is not `label`: what a reviewer's correction changes it to in the review tests."""
    return "Irrelevant" if label != "Irrelevant" else "Exact"


def write_train_eval(tmp_path, n_pairs: int, seed: int, n_train: int) -> list:
    """A synthetic catalog written as tmp_path/train.jsonl (the first n_train pairs) and eval.jsonl (the rest)."""
    from lref.data import write_records
    from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog

    catalog = generate_catalog(SyntheticCatalogConfig(n_pairs=n_pairs, seed=seed))
    write_records(tmp_path / "train.jsonl", catalog[:n_train])
    write_records(tmp_path / "eval.jsonl", catalog[n_train:])
    return catalog
