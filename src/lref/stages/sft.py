"""Stage SFT: LoRA supervised fine-tuning on the direct prompt, (query, product) -> " Label" <eos>.

Each example is the prompt exactly as the scorer sees it (`encode_prompt`: the instruction prefix and the pair part
tokenized separately) followed by the completion, `label_completion(scheme, label)` plus EOS; the loss covers the
completion tokens only. The loop, its loss and its examples are library code (`lref.training.lora`,
`lref.training.losses`, `lref.training.examples`), shared with the CoT stages and the selector backbones; this
module is the stage's config and entry point.

    >>> from lref.stages.sft import SFTStageConfig
    >>> SFTStageConfig(model="gemma-3-270m", output_dir="runs/sft").lora_r
    16
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lref.data.records import Record
from lref.training.lora import LoraTrainingConfig, train_direct_sft


@dataclass
class SFTStageConfig(LoraTrainingConfig):
    """Settings of the LoRA SFT stage. Every field's help text also feeds the command line (`lref train sft`)."""


def train_sft(
    config: SFTStageConfig,
    train_records: Sequence[Record],
    eval_records: Sequence[Record] | None = None,
    *,
    callbacks: list | None = None,
) -> Path:
    """Fine-tune `config.model` with LoRA on labelled records (direct prompt -> label) and return the adapter folder.

    The folder holds the PEFT adapter, the tokenizer and `lref_manifest.json`; `lref.models.loading.load_causal_lm`
    loads it back (base model plus adapter). `callbacks` are extra `transformers.TrainerCallback`s.
    """
    return train_direct_sft(config, train_records, eval_records, callbacks=callbacks, stage="sft")


__all__ = ["SFTStageConfig", "train_sft"]
