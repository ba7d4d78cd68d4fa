"""The benchmark and probe scripts: each answers `--help` with a usage that names its options, without loading the
heavy libraries (the arguments are parsed first); none edits sys.path to reach another script; and the scripts and
options that README.md and docs/ cite exist."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "benchmarks" / "common.py"
SCRIPTS = sorted(
    path for path in (*ROOT.glob("benchmarks/*.py"), *ROOT.glob("benchmarks/probes/*.py")) if path != SHARED
)
HEAVY = {"torch", "transformers", "sklearn", "scipy", "pandas", "peft", "trl", "onnxruntime", "datasets"}
"""Libraries whose import takes seconds: a script loads them only after its arguments are parsed."""


def declared_options(script: Path) -> list[str]:
    """The long options of the script's `add_argument` calls, except those hidden from --help."""
    options = []
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):
            continue
        hidden = any(keyword.arg == "help" and isinstance(keyword.value, ast.Attribute)
                     and keyword.value.attr == "SUPPRESS" for keyword in node.keywords)
        names = [arg.value for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")]
        if not hidden:
            options += names
    return options


def imported_modules(importtime_log: str) -> set[str]:
    """Top-level package names from `python -X importtime` output ("import time: self | cumulative | name")."""
    names = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def run_help(script: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-X", "importtime", str(script), "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def helps() -> dict[Path, subprocess.CompletedProcess]:
    """Every script's --help, run a few at a time."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(zip(SCRIPTS, pool.map(run_help, SCRIPTS)))


def test_the_scripts_are_found():
    names = {path.relative_to(ROOT).as_posix() for path in SCRIPTS}
    assert {"benchmarks/homedepot.py", "benchmarks/scoring.py", "benchmarks/probes/dr_probe.py"} <= names
    assert "benchmarks/common.py" not in names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_help_names_every_option_and_loads_nothing_heavy(script, helps):
    done = helps[script]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"usage: {script.name}"), done.stdout[:500]
    options = declared_options(script)
    assert options, f"{script.name} declares no options"
    missing = [option for option in options if option not in done.stdout]
    assert not missing, f"--help of {script.name} does not name {missing}"
    loaded = imported_modules(done.stderr) & HEAVY
    assert not loaded, f"{script.name} imports {sorted(loaded)} before parsing its arguments"


def lref_imports(script: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from lref... import name` in the script, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lref":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "lref"]
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_lref_name_a_script_imports_exists(script):
    """--help never reaches the lazy imports, so check them here: a name the library moved fails this test."""
    for module, name in lref_imports(script):
        imported = importlib.import_module(module)
        submodule = hasattr(imported, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None
        assert not name or hasattr(imported, name) or submodule, f"{script.name}: {module} has no {name}"
        assert not name.startswith("_"), f"{script.name} imports the private {module}.{name}"


def cited_commands() -> list[tuple[str, str, list[str]]]:
    """(document, script path, options) of every `python benchmarks/...py` command in README.md and docs/."""
    commands = []
    for document in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        text = document.read_text(encoding="utf-8")
        for match in re.finditer(r"python (benchmarks/[\w/]+\.py)([^`\n]*)", text):
            options = re.findall(r"(?<!\S)--[\w-]+", match.group(2))
            commands.append((document.relative_to(ROOT).as_posix(), match.group(1), options))
    return commands


def test_the_commands_the_docs_cite_exist():
    cited = cited_commands()
    assert any(path == "benchmarks/homedepot.py" for _, path, _ in cited)
    for document, path, options in cited:
        if path == "benchmarks/NAME.py":  # the placeholder of docs/architecture.md
            continue
        script = ROOT / path
        assert script in SCRIPTS, f"{document} cites {path}, which is not a benchmark script"
        unknown = set(options) - set(declared_options(script)) - {"--help"}
        assert not unknown, f"{document} runs {path} with {sorted(unknown)}, which it does not declare"


def test_every_script_path_in_the_docs_exists():
    for document in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        for path in set(re.findall(r"benchmarks/[\w/]+\.py", document.read_text(encoding="utf-8"))):
            assert path == "benchmarks/NAME.py" or (ROOT / path).is_file(), f"{document.name} names {path}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_script_edits_sys_path(script):
    assert "sys.path" not in script.read_text(encoding="utf-8")
