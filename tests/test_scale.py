"""Scale-out on existing engines: SFT under `accelerate launch` (2 CPU processes, gloo), precision selection."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from lref.device import prepare_device, resolve_precision

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("ddp_sft_driver.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sft_under_accelerate_launch_two_cpu_processes(tmp_path):
    from lref.data import load_records, write_records
    from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog
    from lref.models.loading import MANIFEST_NAME, load_causal_lm
    from lref.models.scorer import LabelScorer
    from lref.testing import build_tiny_causal_lm

    model = build_tiny_causal_lm(tmp_path / "model", embedding_scale=10)
    train = tmp_path / "train.jsonl"
    write_records(train, generate_catalog(SyntheticCatalogConfig(n_pairs=64, seed=1)))
    out = tmp_path / "adapter"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--config_file", str(REPO / "configs/accelerate/ddp_cpu.yaml"),
        "--main_process_port", str(_free_port()),
        str(DRIVER), str(model), str(train), str(out), "4", "4",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]

    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["steps"] for r in ranks] == [4, 4]
    # The Trainer shards the data: 64 examples / (batch 4 x 2 processes) = 8 batches per process and epoch.
    assert [r["batches_per_epoch"] for r in ranks] == [8, 8]
    # Gradients are all-reduced (the custom loss runs inside the DDP forward), so the replicas stay identical.
    assert ranks[0]["trainable_checksum"] == pytest.approx(ranks[1]["trainable_checksum"], rel=1e-9)

    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["train_metrics"]["steps"] == 4
    records = load_records(train)[:12]
    tuned_lm, tokenizer, _ = load_causal_lm(out)
    base_lm, _, _ = load_causal_lm(model)
    tuned = LabelScorer(tuned_lm, tokenizer, manifest["scheme"]["name"]).score(records)
    base = LabelScorer(base_lm, tokenizer, manifest["scheme"]["name"]).score(records)
    assert tuned.probs.shape == (12, 3)
    assert np.allclose(tuned.probs.sum(axis=1), 1.0)
    assert np.abs(tuned.probs - base.probs).max() > 1e-3  # the saved adapter carries the trained weights


EXIT_CHECK = """
import atexit, os, tempfile
import torch.distributed as dist
from types import SimpleNamespace
from lref.device import prepare_device

# Registered first, so it runs last: after the handler prepare_device registers.
atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))
store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
dist.init_process_group("gloo", store=store, rank=0, world_size=1)
prepare_device(SimpleNamespace(use_cpu=True, threads=None))
print("initialized after prepare_device:", dist.is_initialized())
"""


@pytest.mark.parametrize("world_size, destroyed", [("2", True), ("1", False)])
def test_distributed_training_destroys_the_process_group_before_interpreter_exit(world_size, destroyed):
    # Left to interpreter teardown, gloo can abort a finished rank, and the launcher kills the others.
    env = {**os.environ, "WORLD_SIZE": world_size, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", EXIT_CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "initialized after prepare_device: True" in done.stdout
    assert f"initialized at exit: {not destroyed}" in done.stdout


def _config(**fields):
    return SimpleNamespace(**{"use_cpu": None, "threads": None, **fields})


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_on_cpu_follows_native_bf16_and_can_be_forced(monkeypatch, native):
    import lref.device

    monkeypatch.setattr(lref.device, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setenv(lref.device.CPU_BF16_VARIABLE, "auto")
    auto_cpu = "bf16" if native else "fp32"
    assert resolve_precision(_config(bf16=None), use_cpu=True) == auto_cpu
    assert resolve_precision(_config(bf16=False), use_cpu=False) == "fp32"
    assert resolve_precision(_config(bf16=True), use_cpu=False) == "bf16"
    assert resolve_precision(_config(), use_cpu=True) == "fp32"  # configs without the field
    assert resolve_precision(_config(bf16=None), use_cpu=False) == "fp32"  # GPUs: measured faster in fp32
    if not torch.cuda.is_available():
        assert prepare_device(_config(bf16=None)) is True
    monkeypatch.setenv(lref.device.CPU_BF16_VARIABLE, "0")
    assert resolve_precision(_config(bf16=None), use_cpu=True) == "fp32"
    if native:
        assert prepare_device(_config(bf16=True, use_cpu=True)) is True
    else:
        with pytest.raises(ValueError, match="no native bf16"):
            prepare_device(_config(bf16=True, use_cpu=True))


def test_training_arguments_follow_the_resolved_precision():
    from lref.stages.sft import SFTStageConfig
    from lref.training.settings import training_arguments

    config = SFTStageConfig(output_dir="unused")
    assert config.bf16 is None
    arguments = training_arguments(config, "unused", use_cpu=True)
    assert (arguments["bf16"], arguments["fp16"], arguments["use_cpu"]) == (False, False, True)


def test_every_trainer_config_composes_the_shared_training_settings():
    from dataclasses import fields

    from lref.fingerprint import neutral_names
    from lref.stages.cot import CoTConfig
    from lref.stages.distill import DistillConfig
    from lref.stages.dpo import DPOStageConfig
    from lref.stages.sft import SFTStageConfig
    from lref.training.cross_encoder import CrossEncoderConfig
    from lref.training.settings import LoraSettings, TrainingSettings, training_arguments

    shared = {f.name: f.metadata["help"] for f in fields(TrainingSettings)}
    for cls in (SFTStageConfig, CoTConfig, DPOStageConfig, CrossEncoderConfig, DistillConfig):
        assert issubclass(cls, TrainingSettings)
        assert set(neutral_names(cls)) >= {"resume", "progress", "threads", "logging_steps"}
        assert set(neutral_names(cls)) <= {"resume", "progress", "threads", "logging_steps"}
        assert all(f.metadata.get("help") for f in fields(cls))
    for cls in (SFTStageConfig, CoTConfig, DPOStageConfig):
        assert issubclass(cls, LoraSettings)
    # a redeclared default keeps the shared help text unless the config words its own
    assert {f.name: f.metadata["help"] for f in fields(CrossEncoderConfig)}["weight_decay"] == shared["weight_decay"]
    student = DistillConfig(teacher="t")
    assert (CrossEncoderConfig().weight_decay, DPOStageConfig().lora_dropout, student.logging_steps) == (0.01, 0.0, 20)
    arguments = training_arguments(DistillConfig(teacher="t", grad_accum=2), "unused", use_cpu=True)
    assert (arguments["gradient_accumulation_steps"], arguments["weight_decay"]) == (2, 0.01)
