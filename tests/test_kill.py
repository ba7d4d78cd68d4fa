"""kill -9 at seeded points of SFT, CoT (teaching and training), DPO and distillation (teacher labelling and student
training), then run again: nothing finished is redone, no teacher answer is asked twice or lost, and the final
outputs equal those of an uninterrupted run.

The runs are `lref run` pipelines (`run_pipeline`, as `python -m lref.cli run CONFIG` calls it) in forked processes
that a watcher kills with SIGKILL when a marker appears (a checkpoint folder, a teacher cache file with enough
lines), after a seeded random delay. Forking the test process, which has imported torch and transformers already,
instead of starting `python -m lref.cli run` saves the ~20 s of imports per process that would put the file far over
its time budget; nothing in the parent runs torch (the tiny models are built in a child too), so the children start
from a clean state, and every run uses one thread.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import tqdm.std

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from lref.pipeline import parse_config, run_pipeline  # noqa: E402
from lref.teachers.cache import read_rows  # noqa: E402

TRAIN = {"max_steps": 2, "batch_size": 4, "save_steps": 1, "progress": False, "threads": 1}
SEED = 20261203
STAGES = ("sft", "cot", "dpo", "distill")


def preload() -> None:
    """Import what the stages import lazily once, in the test process, rather than in every forked run (~15 s each
    on a busy machine); importing runs no torch code."""
    import importlib

    for module in ("lref.stages.sft", "lref.stages.cot", "lref.stages.dpo", "lref.stages.distill",
                   "lref.training.lora", "lref.training.cross_encoder", "lref.pipeline.evaluation", "peft", "trl",
                   "trl.trainer.utils"):
        importlib.import_module(module)
    transformers, trl = importlib.import_module("transformers"), importlib.import_module("trl")
    for name in ("Trainer", "TrainingArguments", "TrainerCallback", "AutoModelForCausalLM", "AutoTokenizer",
                 "AutoModelForSequenceClassification", "set_seed"):
        getattr(transformers, name)  # transformers and trl load their submodules on first access
    for name in ("DPOTrainer", "DPOConfig"):
        getattr(trl, name)


def in_child(work: Callable[[], None], kill_when: Callable[[], bool] | None = None, delay: float = 0.0,
             timeout: float = 240.0) -> str:
    """Run `work` in a forked process; 'finished' when it returns, 'failed' when it raises, 'killed' when
    `kill_when()` became true (checked every 10 ms) and the process was sent SIGKILL `delay` seconds later."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            # tqdm's default lock is a multiprocessing semaphore shared with this test process: a child killed while
            # holding it would leave every later progress bar of the test process waiting forever
            tqdm.std.tqdm.set_lock(threading.RLock())
            torch.set_num_threads(1)
            work()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "finished" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        if kill_when is not None and kill_when():
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            # it may have finished in the delay; it was killed unless it exited on its own
            return "killed" if os.waitstatus_to_exitcode(status) == -signal.SIGKILL else "finished"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the run did not finish within {timeout} s")


def test_a_child_killed_inside_a_progress_bar_leaves_the_test_process_free_to_draw_bars():
    import io

    tqdm.std.tqdm.get_lock()  # the test process's lock exists before the fork, as it does after any earlier bar

    def hold_the_lock() -> None:
        tqdm.std.tqdm.get_lock().acquire()
        time.sleep(60)

    assert in_child(hold_the_lock, kill_when=lambda: True, delay=1.0) == "killed"
    drawn = threading.Event()

    def draw() -> None:
        list(tqdm.std.tqdm(range(3), file=io.StringIO()))
        drawn.set()

    threading.Thread(target=draw, daemon=True).start()
    assert drawn.wait(10), "a progress bar of the test process waited on the lock the killed child held"


def make_models(root: Path) -> dict[str, str]:
    def build():
        from lref.testing import build_tiny_causal_lm, build_tiny_encoder

        build_tiny_causal_lm(root / "lm", embedding_scale=10.0)
        build_tiny_encoder(root / "enc")

    assert in_child(build) == "finished"
    return {"lm": str(root / "lm"), "encoder": str(root / "enc")}


def make_config(models: dict[str, str], run_dir: Path) -> dict:
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "model": models["lm"],
        "data": {"format": "synthetic", "synthetic": {"n_pairs": 200, "label_noise": 0.05}, "eval_fraction": 0.25,
                 "eval_pairs": 8},
        "eval": {"bootstrap": 0, "batch_size": 8, "max_length": 256, "progress": False},
        "stages": {
            "sft": {"pairs": 24, "max_length": 256, **TRAIN},
            "cot": {"stages": ["ee", "dr"], "ee_samples": 4, "dr_samples": 4, "max_length": 1024, **TRAIN},
            "dpo": {"pairs": 24, "min_pairs": 1, "top_k": 3, "max_length": 256, "scorer_batch_size": 8, **TRAIN},
            # one pair per teacher batch: the teacher labels in chunks of 8, appended one chunk at a time; the tiny
            # random teacher is collapsed (lref.collapse), so distilling from it has to be forced
            "distill": {"student": models["encoder"], "pairs": 24, "max_length": 64, "max_steps": 2, "batch_size": 8,
                        "save_steps": 1, "teacher_batch_size": 1, "progress": False, "threads": 1,
                        "allow_collapsed_teacher": True},
        },
    }


def run(config: dict, log: Path, only: list[str] | None = None, **kill) -> str:
    """One `lref run` in a child; its status lines are written to `log` (one file per attempt)."""
    def work():
        with open(log, "w", encoding="utf-8") as handle:
            def echo(line: str) -> None:
                handle.write(line + "\n")
                handle.flush()

            run_pipeline(parse_config(json.loads(json.dumps(config))), echo=echo, only=only)

    return in_child(work, **kill)


def status(log: Path) -> dict[str, str]:
    """stage -> first word of its status line ('unchanged,', 'running', 'resuming')."""
    out = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        if line.startswith("["):
            stage, rest = line.split("] ", 1)[1].split(": ", 1)
            out.setdefault(stage, rest.split()[0])
    return out


def lines(pattern: str, run_dir: Path) -> int:
    """Whole lines in the teacher cache files matching `pattern` under RUN/teacher_cache."""
    return sum(path.read_bytes().count(b"\n") for path in (run_dir / "teacher_cache").glob(pattern))


def checkpoint(stage: str, run_dir: Path) -> Callable[[], bool]:
    return lambda: any((run_dir / "stages" / stage / "model").glob("**/checkpoints/checkpoint-1"))


def cache_rows(run_dir: Path) -> dict[str, list[str]]:
    """Every teacher cache file under RUN/teacher_cache (by name) as the keys of its rows, in file order."""
    out = {}
    for path in sorted((run_dir / "teacher_cache").glob("*/*.jsonl")):
        rows, _ = read_rows(path)  # a line the kill cut off is left out
        out[path.name] = [row.get("key") or f"{row['id']}:{row['pair']}" for _, row in rows]
    return out


def outputs(run_dir: Path) -> dict[str, dict]:
    """Every evaluated system's metrics and per-pair probabilities."""
    out = {}
    for stage in STAGES:
        for path in sorted((run_dir / "stages" / stage).glob("predictions_*.jsonl")):
            system = path.stem.removeprefix("predictions_")
            metrics = json.loads((path.parent / f"metrics_{system}.json").read_text())
            probs = {row["id"]: row["probs"] for row in map(json.loads, path.read_text().splitlines())}
            out[system] = {"metrics": {k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1")},
                           "probs": probs}
    return out


def test_kill_9_anywhere_then_rerun_gives_the_uninterrupted_outputs(tmp_path):
    preload()
    models = make_models(tmp_path / "models")
    reference_dir = tmp_path / "reference"
    assert run(make_config(models, reference_dir), tmp_path / "reference.log") == "finished"
    reference = outputs(reference_dir)
    assert set(reference) == {"sft", "cot-ee", "cot-dr", "dpo", "distill"}

    # a changed training setting resets the CoT stage (its folder is deleted and it trains from scratch), but the
    # teacher answers live in RUN/teacher_cache: the teacher is asked for nothing (its cache files stay byte-equal)
    taught = {path: path.read_bytes() for path in (reference_dir / "teacher_cache").glob("rules-*/*.jsonl")}
    assert len(taught) == 2
    changed = make_config(models, reference_dir)
    changed["stages"]["cot"]["learning_rate"] = 5e-4
    assert run(changed, tmp_path / "changed.log", only=["cot"]) == "finished"
    assert status(tmp_path / "changed.log") == {"cot": "running"}
    assert {path: path.read_bytes() for path in taught} == taught
    report = json.loads((reference_dir / "stages/cot/model/cot_report.json").read_text())
    assert [stage["teacher"]["generated"] for stage in report["stages"].values()] == [0, 0], report["stages"]

    run_dir = tmp_path / "killed"
    config = make_config(models, run_dir)
    rng = random.Random(SEED)
    # (stage being killed, when); each attempt starts where the killed one stopped
    kills = [
        ("sft", checkpoint("sft", run_dir)),  # SFT training, at or just after its first checkpoint
        ("cot", lambda: lines("rules-*/ee.jsonl", run_dir) >= 1),  # CoT: EE taught, EE training under way
        ("cot", lambda: lines("rules-*/dr.jsonl", run_dir) >= 1),  # CoT: EE trained, DR taught, DR training
        ("dpo", checkpoint("dpo", run_dir)),  # DPO training
        ("distill", lambda: lines("scores-*/teacher_scores.jsonl", run_dir) >= 8),  # teacher labelling
        ("distill", checkpoint("distill", run_dir)),  # student training
    ]
    killed = []
    previous_started: set[str] = set()
    seen_scores: dict[str, list[str]] = {}
    for attempt, (stage, when) in enumerate(kills):
        finished = {name for name in STAGES if (run_dir / "stages" / name / "manifest.json").is_file() and json.loads(
            (run_dir / "stages" / name / "manifest.json").read_text())["status"] == "done"}
        log = tmp_path / f"attempt{attempt}.log"
        outcome = run(config, log, kill_when=when, delay=rng.uniform(0.0, 0.15))
        assert outcome in ("killed", "finished"), log.read_text()
        state = status(log)
        killed.append((stage, outcome, state))
        # nothing finished is redone: every stage an earlier attempt finished is kept as it is, and the stage an
        # earlier attempt was killed in resumes (it never starts afresh)
        for name in finished:
            assert state.get(name) == "unchanged,", (attempt, stage, state)
        assert "running" not in [state.get(name) for name in STAGES if name in previous_started], (attempt, state)
        previous_started = set(state)
        # every teacher answer paid for before the kill is still there, unchanged, and never asked again
        rows = cache_rows(run_dir)
        for name, keys in seen_scores.items():
            assert rows[name][: len(keys)] == keys, f"attempt {attempt}: {name} lost or rewrote answers"
        seen_scores = rows
    assert [k for k in killed if k[1] == "killed"], "no attempt was killed: the markers came too late"
    last = tmp_path / "final.log"
    assert run(config, last) == "finished", last.read_text()
    final_state = status(last)
    assert [final_state[name] for name in STAGES[:-1]] == ["unchanged,"] * 3, final_state
    assert final_state["distill"] in ("unchanged,", "resuming"), final_state

    # no teacher answer was asked for twice, none is missing: the caches hold exactly the uninterrupted run's keys
    final_rows, reference_rows = cache_rows(run_dir), cache_rows(reference_dir)
    assert final_rows.keys() == reference_rows.keys() == {"ee.jsonl", "dr.jsonl", "teacher_scores.jsonl"}
    for name, keys in final_rows.items():
        assert not [k for k, n in Counter(keys).items() if n > 1], f"{name}: a teacher answer was asked twice"
        assert sorted(keys) == sorted(reference_rows[name]), name

    # a resumed stage continued from its checkpoints rather than starting afresh
    resumed = {name for name in STAGES if json.loads((run_dir / "stages" / name / "manifest.json").read_text())
               ["resumed"]}
    assert resumed, killed

    # the final outputs equal the uninterrupted run's: the Trainer restores model, optimizer, scheduler, RNG state
    # and data order from the checkpoint, the teacher answers come from the cache, so only float noise may differ
    outputs_of = {name: json.loads((run_dir / "stages" / name / "manifest.json").read_text())["outputs"]
                  for name in ("cot", "distill")}
    for name, recorded in outputs_of.items():  # the manifests say where the answers are and that none was refused
        assert Path(recorded["teacher_cache"]).parent == run_dir / "teacher_cache", recorded
        assert recorded["teacher_skipped"] == 0, recorded

    final = outputs(run_dir)
    assert final.keys() == reference.keys()
    for system, expected in reference.items():
        got = final[system]
        assert got["metrics"] == pytest.approx(expected["metrics"], abs=1e-6), system
        assert got["probs"].keys() == expected["probs"].keys()
        for pair, probs in expected["probs"].items():
            assert got["probs"][pair] == pytest.approx(probs, abs=1e-4), (system, pair)


def test_a_checkpoint_whose_trainer_state_a_kill_cut_off_is_passed_over(tmp_path):
    """The Trainer writes trainer_state.json last but not atomically: a kill during that write leaves a cut-off file,
    and resuming from that checkpoint would fail on every rerun. The previous checkpoint is resumed instead."""
    from lref.training.run_guard import RunGuard, last_checkpoint

    out = tmp_path / "run"
    for step, text in ((2, '{"global_step": 2, "log_history": []}'), (3, '{"global_step": 3, "log_hi')):
        (out / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        (out / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").write_text(text)
    assert last_checkpoint(out).name == "checkpoint-2"
    assert RunGuard(out, resume=True).resumed_step == 2
