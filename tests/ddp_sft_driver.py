"""Run by tests/test_scale.py and benchmarks/scale.py under `accelerate launch`: a short LoRA SFT through the
library entry point, unchanged, plus a callback that records what each process saw, to check the DDP run."""

import json
import os
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from lref.data import load_records
from lref.stages.sft import SFTStageConfig, train_sft


class RankReport(TrainerCallback):
    """Writes rank, world size, steps, batches per epoch, the checksum of the trainable weights and the step rate."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 1:  # time from the end of step 1: the first step pays for warm-up
            self.started = time.perf_counter()

    def on_train_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        elapsed = time.perf_counter() - self.started if self.started else None
        checksum = sum(float(p.detach().double().abs().sum()) for p in model.parameters() if p.requires_grad)
        report = {
            "rank": args.process_index,
            "world_size": args.world_size,
            "steps": state.global_step,
            "batches_per_epoch": len(train_dataloader) if train_dataloader is not None else None,
            "trainable_checksum": checksum,
            "steps_per_s": (state.global_step - 1) / elapsed if elapsed else None,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{args.process_index}.json").write_text(json.dumps(report))


def main(model: str, train: str, out: str, max_steps: int, batch_size: int) -> None:
    config = SFTStageConfig(
        model=model, output_dir=out, max_steps=max_steps, batch_size=batch_size, save_steps=1000, lora_dropout=0.0,
        progress=False, logging_steps=1,
    )
    train_sft(config, load_records(train), callbacks=[RankReport(Path(out) / "ranks")])


if __name__ == "__main__":
    model, train, out, max_steps, batch_size = sys.argv[1:6]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(model, train, out, int(max_steps), int(batch_size))
