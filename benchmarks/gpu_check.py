"""The GPU paths on a CUDA machine: SFT, DPO, LLM scoring and CoT generation on the GPU, float32 against bf16, with
speeds next to the same work on the CPU of that machine. What auto precision (`lref.device.use_bf16`) chooses on GPUs
rests on these measurements (bf16 is named explicitly, so both precisions are measured).

The model is Gemma-3-270M's architecture and tokenizer with *random* weights (`--model-dir` holds the real
config.json and tokenizer files), so the figures are speeds and code-path checks, not quality. Data: the synthetic
catalog (graded3). Writes JSON to `--out`.

    python benchmarks/gpu_check.py --model-dir DIR_WITH_CONFIG_AND_TOKENIZER --out benchmarks/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import utc_now

from lref.io import write_json


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="folder with Gemma-3-270M's config.json and tokenizer")
    parser.add_argument("--pairs", type=int, default=2000, help="synthetic pairs to score")
    parser.add_argument("--sft-steps", type=int, default=40)
    parser.add_argument("--dpo-pool", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    return parser.parse_args()


def random_gemma(model_dir: Path, out: Path) -> Path:
    """Gemma-3-270M's architecture with seeded random weights, saved beside its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def score_speed(model, tokenizer, records, bf16: bool | None) -> tuple[float, np.ndarray]:
    import torch

    from lref.models.scorer import LabelScorer, ScorerConfig

    scorer = LabelScorer(model, tokenizer, "graded3", ScorerConfig(batch_size=64, bf16=bf16))
    scorer.score(records[:64])  # warm-up
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    probs = scorer.score(records).probs
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return round(len(records) / (time.perf_counter() - started), 1), probs


def main() -> None:
    args = parse_args()
    import torch

    from lref.data.synthetic import SyntheticCatalogConfig, generate_catalog
    from lref.device import resolve_precision
    from lref.models.generation import generate_predictions
    from lref.models.loading import load_causal_lm
    from lref.stages.dpo import DPOStageConfig, train_dpo
    from lref.stages.sft import SFTStageConfig, train_sft

    if not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA GPU")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lref_gpu_"))
    model_dir = random_gemma(Path(args.model_dir), work / "gemma-random")
    records = generate_catalog(SyntheticCatalogConfig(n_pairs=max(args.pairs, 1200), scheme="graded3", seed=0))
    result: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                    "precision_auto_gpu": resolve_precision(SFTStageConfig(output_dir="unused"), use_cpu=False)}

    # SFT on the GPU in float32 and in bf16 mixed precision, same pairs
    result["sft"] = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        sft = SFTStageConfig(model=str(model_dir), output_dir=str(work / f"sft_{name}"), max_steps=args.sft_steps,
                             batch_size=16, save_steps=10_000, progress=False, bf16=bf16)
        t = time.perf_counter()
        adapter = train_sft(sft, records[: 16 * args.sft_steps])
        manifest = json.loads((adapter / "lref_manifest.json").read_text())
        result["sft"][name] = {"steps": args.sft_steps, "batch_size": 16, "wall_s": round(time.perf_counter() - t, 1),
                               "s_per_step": manifest["train_metrics"].get("s_per_step"),
                               "final_loss": manifest["train_metrics"].get("final_loss"),
                               "precision": manifest.get("precision")}

    # scoring: GPU bf16 autocast, fp32 and bf16 weights, and the machine's CPU, same pairs
    model, tokenizer, _ = load_causal_lm(adapter, device="auto")
    assert model.device.type == "cuda", model.device
    pairs = records[: args.pairs]
    gpu_bf16, probs_bf16 = score_speed(model, tokenizer, pairs, True)
    gpu_fp32, probs_fp32 = score_speed(model, tokenizer, pairs, False)
    weights_bf16, _, _ = load_causal_lm(adapter, device="auto", dtype=torch.bfloat16)
    gpu_weights_bf16, probs_weights_bf16 = score_speed(weights_bf16, tokenizer, pairs, False)
    cpu_model, _, _ = load_causal_lm(adapter)
    cpu_fp32, probs_cpu = score_speed(cpu_model, tokenizer, pairs[:256], False)
    result["scoring_pairs_per_s"] = {
        "gpu_bf16_autocast": gpu_bf16, "gpu_fp32": gpu_fp32, "gpu_bf16_weights": gpu_weights_bf16,
        "cpu_fp32": cpu_fp32, "cpu_threads": torch.get_num_threads(), "batch_size": 64, "pairs": len(pairs),
    }
    result["scoring_agreement"] = {
        "gpu_fp32_vs_cpu_fp32_max_prob_diff": float(np.abs(probs_fp32[:256] - probs_cpu).max()),
        "gpu_bf16_autocast_vs_fp32_max_prob_diff": float(np.abs(probs_bf16 - probs_fp32).max()),
        "gpu_bf16_weights_vs_fp32_max_prob_diff": float(np.abs(probs_weights_bf16 - probs_fp32).max()),
        "gpu_bf16_weights_vs_fp32_argmax_agreement":
            float((probs_weights_bf16.argmax(1) == probs_fp32.argmax(1)).mean()),
    }

    # CoT generation on the GPU (random weights: the text is noise; this checks the device path)
    t = time.perf_counter()
    predictions, info = generate_predictions(adapter, pairs[:32], "graded3", max_new_tokens=32, batch_size=16,
                                             progress=False, model=model, tokenizer=tokenizer)
    result["cot_generate"] = {"pairs": len(predictions), "wall_s": round(time.perf_counter() - t, 1),
                              "parse_failures": info.get("parse_failures", info.get("fallbacks"))}

    # DPO on the GPU (TRL), automatic precision
    dpo = DPOStageConfig(model=str(adapter), output_dir=str(work / "dpo"), epochs=1, max_steps=6, min_pairs=1,
                         guard_fraction=0.0, progress=False)
    t = time.perf_counter()
    out = train_dpo(dpo, records[: args.dpo_pool])
    dpo_manifest = json.loads((Path(out) / "lref_manifest.json").read_text()) if Path(out).is_dir() else {}
    result["dpo"] = {"wall_s": round(time.perf_counter() - t, 1), "kind": dpo_manifest.get("kind"),
                     "precision": dpo_manifest.get("precision"),
                     "pairs": (dpo_manifest.get("mining") or {}).get("pairs")}
    result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {result['device']}"
    result["date"] = utc_now()
    result["command"] = "python " + " ".join(sys.argv)
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
