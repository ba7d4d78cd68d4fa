"""`lref run CONFIG.yaml`: baselines and the LREF chain from one YAML config into one resumable run directory.

The config names the data, the models, the settings of each stage and the seed::

    run_dir: runs/demo
    seed: 0
    model: gemma-3-270m          # the LLM of llm-base and of the LREF chain
    data: {format: homedepot, train: data/train.csv, eval: data/dev.csv, scheme: graded3}
    eval: {bootstrap: 1000}
    stages:                      # a stage runs when it is listed; its keys are its config dataclass's fields
      lexical: {}
      bert: {model: minilm-l6, epochs: 1}
      select: {im_sample: 2000}
      sft: {learning_rate: 2.0e-4}
      dpo: {beta: 0.1}

Stages, in run order (`STAGES`): the baselines `lexical`, `zero-shot`, `bert` (a cross-encoder on all training
data), `llm-base` (LoRA SFT on all training data), then the chain `select` -> `sft` (on the selected pairs, or all
pairs without `select`) -> `cot` (EE, RA, DR) -> `dpo` -> `distill`. Each chain stage starts from the model the
previous chain stage wrote; the first chain stage listed (usually `sft`) starts from the base `model`, or, with
`start_from: llm-base`, continues training the llm-base adapter (`sft` on the selected pairs; `cot` without `sft`
on CoT examples of the selected pairs). Besides its dataclass fields every trained stage takes
`pairs` (train on a seeded sample of that many of its input pairs). `scheme`, `output_dir` and `resume` are set by
the pipeline, and so is `model` (`teacher` for distill) of the chain stages; `seed` defaults to the top-level seed.

Validation happens before anything runs: unknown keys and bad values are refused with the key's path
(`stages.sft.learning_rate: expected a number, got 'fast'`). Data paths are relative to the config file;
`run_dir` is relative to the working directory.

Run directory::

    run.log                       everything logged, every run appended
    config.yaml                   the config as loaded (resolved paths)
    results.json                  every evaluated system's metrics on the held-out split
    stages/<stage>/manifest.json  status, config hash, input hashes, versions, metrics, wall time, peak memory
    stages/<stage>/model/         what the stage trained (adapters, encoder, lexical model, selection files)
    stages/<stage>/predictions[_<system>].jsonl, metrics[_<system>].json

Resuming: a stage whose manifest is `done` with the same config and input hashes is skipped (its evaluation is
redone alone when only the `eval` settings changed). A changed stage runs again, and so does every stage
downstream of it, since their inputs carry its hash. A stage that failed or was killed restarts from its
trained checkpoints (the stages' own `resume`). `--from STAGE` forces that stage and every later one to run
afresh; `--only` runs the named stages (their upstream must have finished).

Every evaluation scores the same held-out split (`data.eval`, or a by-query split of `data.train`), never training
pairs; ids shared with the training data are refused.

Modules: `config` (the dataclasses, the YAML type checker, `config_reference`), `data` (the run's pairs), `runners`
(one function per stage), `evaluation` (score, calibrate, metrics of one system), `run` (`Pipeline`, manifests,
resuming).
"""

from lref.pipeline.config import (
    CHAIN,
    STAGES,
    ConfigError,
    DataConfig,
    EvalSettings,
    PipelineConfig,
    ZeroShotConfig,
    config_reference,
    load_config,
    parse_config,
)
from lref.pipeline.data import RunData, load_data, sample
from lref.pipeline.evaluation import evaluate_system, score_calibrated
from lref.pipeline.run import Pipeline, read_manifest, run_pipeline

__all__ = [
    "CHAIN", "ConfigError", "DataConfig", "EvalSettings", "Pipeline", "PipelineConfig", "RunData", "STAGES",
    "ZeroShotConfig", "config_reference", "evaluate_system", "load_config", "load_data", "parse_config",
    "read_manifest", "run_pipeline", "sample", "score_calibrated",
]
