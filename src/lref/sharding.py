"""Scale-out for scoring and labelling: deterministic shards any scheduler can fan out, a merge step, and a
process-pool runner for one machine.

Partition
    The input is cut into blocks of `block_size` consecutive records (the last one may be shorter). Shard ``i/N``
    (0-based) holds blocks ``i, i + N, i + 2N, ...``; with ``block_size=1`` that is plain ``records[i::N]``. It
    depends only on the input order, never on the process, the machine or a hash seed, so N independent jobs (a
    Slurm array, a shell loop, a Kubernetes indexed job) split the work with no coordination. Round-robin rather
    than contiguous halves keeps shards balanced when the input is sorted (e.g. by query or length).

Why blocks for scoring
    The scorer sorts pairs by length and batches them, and a pair's float32 logits change in the last bits with
    the batch it lands in. Scoring block by block (:func:`score_blocks`) makes every pair's batch depend only on
    its block, so sharded, multi-worker and single-process runs give byte-identical predictions.

Merge
    Each shard job writes its output file plus a small sidecar ``OUTPUT.shard.json`` (:func:`write_shard_info`):
    the shard spec, the block size, the number of input records and a fingerprint of all input ids in order.
    :func:`merge_shard_files` checks that every shard of the same split is present exactly once with the expected
    number of rows and no id twice, interleaves the rows back into input order (copying the lines verbatim) and
    checks the merged ids against the fingerprint, so the result is byte-for-byte the unsharded output.

Example (any scheduler)::

    for i in 0 1 2; do lref predict -m MODEL -d pairs.jsonl -o preds.$i.jsonl --shard $i/3 & done; wait
    lref merge preds.jsonl preds.0.jsonl preds.1.jsonl preds.2.jsonl
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lref.data.records import DataError, Record
from lref.io import atomic_write, write_json
from lref.predictions import ScoreResult

T = TypeVar("T")

SHARD_INFO_SUFFIX = ".shard.json"
DEFAULT_BLOCK_SIZE = 256
"""Records per scoring block: big enough for length-sorted batches to pad little, small enough to spread work."""


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with 0 <= i < N; ValueError naming the spec otherwise."""
    text = str(spec).strip()
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError
        i, n = int(index), int(count)
    except ValueError:
        raise ValueError(f"shard spec {spec!r} must look like i/N, e.g. 0/4 (0-based index i, N shards)") from None
    if n < 1:
        raise ValueError(f"shard spec {spec!r}: the number of shards N must be at least 1")
    if not 0 <= i < n:
        raise ValueError(f"shard spec {spec!r}: the index must lie in 0..{n - 1} (0-based)")
    return i, n


def _check_block_size(block_size: int) -> None:
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")


def shard_positions(total: int, spec: str | None, block_size: int = 1) -> list[int]:
    """Input positions of shard `spec` among `total` records, in input order (all of them when `spec` is None)."""
    _check_block_size(block_size)
    if spec is None:
        return list(range(total))
    i, n = parse_shard(spec)
    return [
        position
        for start in range(i * block_size, total, n * block_size)
        for position in range(start, min(start + block_size, total))
    ]


def select_shard(records: Sequence[T], spec: str | None, block_size: int = 1) -> list[T]:
    """The records of shard ``spec`` in input order: blocks ``i, i+N, ...`` of `block_size` records, i.e.
    ``records[i::N]`` for the default block size 1. All records when `spec` is None."""
    return [records[position] for position in shard_positions(len(records), spec, block_size)]


def iter_blocks(items: Sequence[T], block_size: int) -> Iterator[Sequence[T]]:
    """Consecutive blocks of `block_size` items. A shard's records re-cut this way give exactly the input's blocks."""
    _check_block_size(block_size)
    for start in range(0, len(items), block_size):
        yield items[start : start + block_size]


def ids_fingerprint(ids: Sequence[str]) -> str:
    """sha1 of the ids in order: equal iff the same ids in the same order."""
    digest = hashlib.sha1()
    for record_id in ids:
        digest.update(str(record_id).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def shard_info_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + SHARD_INFO_SUFFIX)


def write_shard_info(output: str | os.PathLike, spec: str, all_ids: Sequence[str], block_size: int = 1) -> Path:
    """Write the sidecar ``OUTPUT.shard.json`` that :func:`merge_shard_files` needs. `all_ids` are the ids of
    the *whole* input (before sharding), in input order; `block_size` is the one the shard was selected with."""
    i, n = parse_shard(spec)
    path = shard_info_path(output)
    write_json(
        path,
        {
            "shard": i,
            "num_shards": n,
            "block_size": block_size,
            "total": len(all_ids),
            "rows": len(shard_positions(len(all_ids), spec, block_size)),
            "ids_sha1": ids_fingerprint(all_ids),
        },
    )
    return path


def _read_shard_info(output: Path) -> dict:
    path = shard_info_path(output)
    if not path.is_file():
        raise DataError(f"no shard sidecar {path.name} beside it; write shard outputs with --shard", path=str(output))
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return {key: info[key] for key in ("shard", "num_shards", "block_size", "total", "ids_sha1")}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"unreadable shard sidecar ({error})", path=str(path)) from None


def _read_rows(path: Path, id_field: str) -> list[tuple[str, str]]:
    """(id, raw line) per non-empty line; the line is kept verbatim so the merge is byte-exact."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for row, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"invalid JSON: {error.msg}", path=str(path), row=row) from None
            if not isinstance(item, dict) or item.get(id_field) in (None, ""):
                raise DataError("missing or empty id", path=str(path), row=row, column=id_field)
            rows.append((str(item[id_field]), line if line.endswith("\n") else line + "\n"))
    return rows


def merge_shard_files(
    paths: Sequence[str | os.PathLike], output: str | os.PathLike, *, id_field: str = "id"
) -> int:
    """Merge per-shard JSONL outputs (each with its ``.shard.json`` sidecar) back into the unsharded order and
    write `output` atomically.

    Raises DataError when a shard is missing, given twice, from another split (N, block size, input size or ids
    differ), has the wrong number of rows, or when an id appears twice or out of place. Returns the rows written.
    """
    if not paths:
        raise DataError("no shard files to merge")
    shards: dict[int, tuple[Path, list[tuple[str, str]]]] = {}
    first: dict | None = None
    first_path: Path | None = None
    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_file():
            raise DataError("shard file not found", path=str(path))
        info = _read_shard_info(path)
        if first is None:
            first, first_path = info, path
        for key in ("num_shards", "block_size", "total", "ids_sha1"):
            if info[key] != first[key]:
                raise DataError(
                    f"shard {info['shard']}/{info['num_shards']} comes from another split than {first_path} "
                    f"({key} {info[key]!r} != {first[key]!r})",
                    path=str(path),
                )
        index = info["shard"]
        if index in shards:
            raise DataError(f"shard {index}/{info['num_shards']} given twice (also {shards[index][0]})", path=str(path))
        shards[index] = (path, _read_rows(path, id_field))
    num_shards, block_size, total = first["num_shards"], first["block_size"], first["total"]
    missing = sorted(set(range(num_shards)) - set(shards))
    if missing:
        raise DataError(
            f"incomplete merge: shard(s) {', '.join(f'{m}/{num_shards}' for m in missing)} missing "
            f"({len(shards)} of {num_shards} given)"
        )
    merged: list[tuple[str, str] | None] = [None] * total
    seen: dict[str, Path] = {}
    for index in range(num_shards):
        path, rows = shards[index]
        positions = shard_positions(total, f"{index}/{num_shards}", block_size)
        if len(rows) != len(positions):
            raise DataError(
                f"shard {index}/{num_shards} has {len(rows)} rows, expected {len(positions)} of {total} input "
                "records (an unfinished or failed shard job?)",
                path=str(path),
            )
        for position, (record_id, line) in zip(positions, rows):
            if record_id in seen:
                raise DataError(f"duplicate id {record_id!r} (also in {seen[record_id]})", path=str(path))
            seen[record_id] = path
            merged[position] = (record_id, line)
    if ids_fingerprint([record_id for record_id, _ in merged]) != first["ids_sha1"]:
        raise DataError(
            "the merged ids differ from the input the shards were cut from (rows reordered, or other data?)"
        )
    with atomic_write(output) as handle:
        for _, line in merged:
            handle.write(line)
    return total


# ---------------------------------------------------------------------------------------------- scoring runners
def score_blocks(scorer, records: Sequence[Record], block_size: int = DEFAULT_BLOCK_SIZE, progress: bool = False):
    """`scorer.score` block by block, so each pair's batch (and so its bits) depends only on its block."""
    import numpy as np
    from tqdm.auto import tqdm

    parts = []
    with tqdm(total=len(records), unit="pair", desc="scoring", file=sys.stderr, disable=not progress) as bar:
        for block in iter_blocks(records, block_size):
            parts.append(scorer.score(block).logits)
            bar.update(len(block))
    logits = np.concatenate(parts) if parts else np.zeros((0, len(scorer.scheme)), dtype=np.float32)
    # the blocks' logits already hold the scorer's label bias: no bias here
    return ScoreResult([r.id for r in records], scorer.scheme.labels, logits, scorer.config.top_k)


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class ScoringWorker:
    """The scorer of one pool process, built once by the pool's initializer."""

    scorer = None

    @classmethod
    def start(cls, build_scorer: Callable[[], Any], threads: int | None) -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        cls.scorer = build_scorer()

    @classmethod
    def score(cls, block: list[Record]) -> ScoreResult:
        return cls.scorer.score(block)

    @classmethod
    def stop(cls) -> None:
        cls.scorer = None


def useful_workers(workers: int, pairs: int, block_size: int) -> int:
    """At most `workers`, and no more than the blocks `pairs` pairs make (at least one): a worker without a block
    would only load the model."""
    return max(1, min(workers, math.ceil(pairs / block_size)))


class ScoringPool:
    """`workers` scoring processes that each build the scorer once (`build_scorer()`) and stay up across `score`
    calls, so a caller that scores in chunks (checkpointing between them) loads the model once per worker. One worker
    scores in this process. Use it as a context manager; the processes stop on exit."""

    def __init__(self, build_scorer: Callable[[], Any], workers: int = 1, threads: int | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.build_scorer, self.workers, self.threads = build_scorer, workers, threads
        self.executor = None

    def __enter__(self) -> "ScoringPool":
        if self.workers == 1:
            ScoringWorker.start(self.build_scorer, self.threads)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            threads = self.threads or max(1, available_cores() // self.workers)
            # spawn, not fork: a forked copy of a process that has run torch can deadlock in its thread pools.
            self.executor = ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"),
                                                ScoringWorker.start, (self.build_scorer, threads))
        return self

    def __exit__(self, *exc_info) -> None:
        if self.executor is not None:
            self.executor.shutdown()
            self.executor = None
        else:
            ScoringWorker.stop()

    def score(self, records: Sequence[Record], block_size: int = DEFAULT_BLOCK_SIZE, progress: bool = False,
              on_block: Callable[[int], Any] | None = None) -> ScoreResult:
        """`records` scored block by block (blocks go to whichever worker is free and come back in input order);
        `on_block(n)` is called as each block of n pairs is done."""
        import numpy as np
        from tqdm.auto import tqdm

        if not records:
            if self.executor is not None:
                raise ValueError("no records to score")
            return score_blocks(ScoringWorker.scorer, records, block_size)
        blocks = [list(block) for block in iter_blocks(records, block_size)]
        if self.executor is None:
            results = (ScoringWorker.score(block) for block in blocks)
        else:
            results = self.executor.map(ScoringWorker.score, blocks)
        parts = []
        desc = "scoring" if self.executor is None else f"scoring ({self.workers} workers)"
        with tqdm(total=len(records), unit="pair", desc=desc, file=sys.stderr, disable=not progress) as bar:
            for block, result in zip(blocks, results):
                parts.append(result)
                bar.update(len(block))
                if on_block is not None:
                    on_block(len(block))
        # the blocks' logits already hold the scorer's label bias: no bias here
        logits = np.concatenate([part.logits for part in parts])
        return ScoreResult([r.id for r in records], parts[0].labels, logits, parts[0].top_k)


def score_in_parallel(
    build_scorer: Callable[[], Any],
    records: Sequence[Record],
    *,
    workers: int = 1,
    block_size: int = DEFAULT_BLOCK_SIZE,
    threads: int | None = None,
    progress: bool = False,
) -> ScoreResult:
    """Score `records` block by block with the scorer `build_scorer()` returns, on a pool of `workers` processes.

    `build_scorer` must pickle (a module-level function, or a `functools.partial` of one such as
    `lref.models.factory.make_scorer`); each worker calls it once. Each worker runs `threads` torch threads (default
    ``cores // workers``; with one worker, torch's own); blocks go to whichever worker is free and come back in input
    order. The result is identical to ``workers=1`` (the same blocks, scored the same way)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    with ScoringPool(build_scorer, useful_workers(workers, len(records), block_size), threads) as pool:
        return pool.score(records, block_size, progress=progress)
