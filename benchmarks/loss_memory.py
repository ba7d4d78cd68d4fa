"""Peak memory of one training step on CoT-length completions, with the LM head applied in chunks vs in one pass.

Each measurement runs in a fresh process: Gemma-3-270m with a LoRA, one batch of `--batch` examples whose
completions are `--completion-tokens` tokens long (as a CoT analysis is), `completion_loss` and its backward pass.
Reported: the process's peak RSS and the step's wall time, for `HEAD_CHUNK` = 256 (the default) and for one pass
(`HEAD_CHUNK` larger than the batch's label positions), plus the loss of each (they must agree).

    .venv/bin/python benchmarks/loss_memory.py            # writes benchmarks/results/loss_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

from common import RESULTS, utc_now

from lref.io import write_json


def measure(chunk: int, batch: int, completion_tokens: int, model: str) -> dict:
    """One training step in this process; returns its loss, time and the process's peak RSS."""
    import torch
    from peft import LoraConfig, get_peft_model

    from lref.models.loading import load_causal_lm
    from lref.training import losses

    losses.HEAD_CHUNK = chunk  # the module global `head_token_losses` reads
    lm, tokenizer, _ = load_causal_lm(model)
    lm = get_peft_model(lm, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    prompt_tokens = 60
    ids = torch.randint(10, tokenizer.vocab_size - 10, (batch, prompt_tokens + completion_tokens))
    labels = ids.clone()
    labels[:, :prompt_tokens] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
              "weights": torch.ones(batch)}
    started = time.perf_counter()
    loss, count = losses.completion_loss(lm, inputs, share_prefix=False)
    loss.backward()
    seconds = time.perf_counter() - started
    peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"head_chunk": chunk, "loss": round(loss.item(), 5), "label_positions": count,
            "step_s": round(seconds, 2), "peak_rss_mb": peak_rss_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--completion-tokens", type=int, default=200)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "loss_memory.json"))
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.batch, args.completion_tokens, args.model)))
        return
    runs = {}
    for name, chunk in (("chunked", 256), ("one_pass", 10**9)):
        command = [sys.executable, __file__, "--child", str(chunk), "--batch", str(args.batch),
                   "--completion-tokens", str(args.completion_tokens), "--model", args.model]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs[name] = json.loads(output.strip().splitlines()[-1])
        print(name, runs[name], flush=True)
    result = {
        "runs": runs,
        "peak_rss_saved_mb": runs["one_pass"]["peak_rss_mb"] - runs["chunked"]["peak_rss_mb"],
        "loss_difference": abs(runs["one_pass"]["loss"] - runs["chunked"]["loss"]),
        "sizes": {"batch": args.batch, "completion_tokens": args.completion_tokens, "model": args.model},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": utc_now(),
        "command": "python benchmarks/loss_memory.py",
    }
    write_json(args.out, result)
    print(json.dumps({key: result[key] for key in ("peak_rss_saved_mb", "loss_difference")}))


if __name__ == "__main__":
    main()
