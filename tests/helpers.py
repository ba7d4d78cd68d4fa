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
