"""Training stages. One module per stage, each with one config dataclass and one entry point:

- `lref.stages.sft`: LoRA supervised fine-tuning on the direct prompt (`SFTStageConfig`, `train_sft`).
- `lref.stages.dpo`: Stage 3 DPO de-biasing on mined near-miss pairs (`DPOStageConfig`, `train_dpo`, `mine_pairs`).

Modules are imported on use, so importing one stage never pulls in the others (or torch) by accident.
"""
