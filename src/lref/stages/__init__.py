"""Training stages. One module per stage, each with one config dataclass and one entry point:

- `lref.stages.select`: Stage 1 data selection with IM, CI and MS (`SelectConfig`, `select`).
- `lref.stages.sft`: LoRA supervised fine-tuning on the direct prompt (`SFTStageConfig`, `train_sft`).
- `lref.stages.cot`: Stage 2 Multi-CoT tuning, EE -> RA -> DR (`CoTConfig`, `train_cot`).
- `lref.stages.dpo`: Stage 3 DPO de-biasing on mined near-miss pairs (`DPOStageConfig`, `train_dpo`, `mine_pairs`).
- `lref.stages.distill`: distillation into a cross-encoder student (`DistillConfig`, `distill`).

No stage imports another: what several share (training settings, examples, losses, the run guard, the LoRA loop,
teachers and their caches, CoT generation) lives in `lref.training`, `lref.teachers` and `lref.models`. Modules are
imported on use, so importing one stage never pulls in the others (or torch) by accident.
"""
