"""The one run guard every trainer uses: which checkpoint to resume, whether the run may resume, and whole final saves.

A trainer's output folder holds its final model and, under ``checkpoints/``, the Trainer's resumable checkpoints and
the run file (``lref_run.json``) with the fingerprint of what the run trains on. `RunGuard`:

* finds the newest checkpoint that can be resumed (`last_checkpoint`: one with a whole ``trainer_state.json``, which
  the Trainer writes last; a folder a killed save left without it, or with it cut off, is passed over);
* refuses a folder holding checkpoints unless the run resumes, and refuses to resume a run whose fingerprint (data
  hash, and whatever else the trainer names) differs from the run file's;
* writes the run file when a run starts;
* saves the final model whole (`save_atomically`: into a scratch folder, then each file moved into place), so a crash
  never leaves a half-written model beside its manifest, which is written last.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lref.data.records import DataError
from lref.device import is_main_process
from lref.io import write_json

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
RUN_FILE = "lref_run.json"
"""Written into the checkpoint folder when a run starts; resuming checks it against the new run's fingerprint."""
TRAINER_STATE = "trainer_state.json"
SCRATCH_DIR = ".saving"

_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_folder(output_dir: str | Path) -> Path:
    """Where a run in `output_dir` keeps its checkpoints and run file."""
    return Path(output_dir) / CHECKPOINT_DIR


def run_file(output_dir: str | Path) -> Path:
    """The run file of a run in `output_dir`."""
    return checkpoint_folder(output_dir) / RUN_FILE


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest resumable checkpoint of a run in `output_dir`: the highest-numbered ``checkpoint-N`` folder that
    holds a whole ``trainer_state.json`` (the Trainer writes it last; a kill can cut it off). None when there is
    none."""
    folder = checkpoint_folder(output_dir)
    if not folder.is_dir():
        return None
    numbered = []
    for path in folder.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir():
            numbered.append((int(match.group(1)), path))
    for _, path in sorted(numbered, reverse=True):
        if _readable_state(path / TRAINER_STATE):
            return path
        logger.warning("%s has no whole %s (an interrupted save): not resumable, passed over", path, TRAINER_STATE)
    return None


def _readable_state(path: Path) -> bool:
    """Whether a checkpoint's trainer state is there and whole: the Trainer writes it last, but not atomically, so a
    kill during that write leaves a cut-off file, which would make every resume fail."""
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")).get("global_step"), int)
    except (OSError, ValueError, AttributeError):
        return False


def trainer_state_step(checkpoint: str | Path) -> int:
    """The optimizer step a checkpoint was written at."""
    state = Path(checkpoint) / TRAINER_STATE
    if state.is_file():
        return int(json.loads(state.read_text()).get("global_step", 0))
    suffix = Path(checkpoint).name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def read_run_file(output_dir: str | Path) -> dict[str, Any]:
    """The run file of `output_dir` as a dict ({} when there is none)."""
    path = run_file(output_dir)
    return json.loads(path.read_text()) if path.is_file() else {}


def update_run_file(output_dir: str | Path, **entries: Any) -> None:
    """Add `entries` to the run file of `output_dir`, when there is one."""
    path = run_file(output_dir)
    if path.is_file():
        write_json(path, {**json.loads(path.read_text()), **entries})


def run_matches(output_dir: str | Path, fingerprint: Mapping[str, Any]) -> bool:
    """Whether the run file of `output_dir` records exactly this fingerprint (every key equal)."""
    stored = read_run_file(output_dir)
    return bool(stored) and all(stored.get(key) == value for key, value in fingerprint.items())


def save_atomically(output_dir: str | Path, *parts: Any) -> None:
    """`part.save_pretrained` for each part (model, tokenizer) into a scratch folder inside `output_dir`, then each
    file moved into place, so `output_dir` never holds a half-written model."""
    output_dir = Path(output_dir)
    scratch = output_dir / SCRATCH_DIR
    shutil.rmtree(scratch, ignore_errors=True)
    for part in parts:
        part.save_pretrained(str(scratch))
    for item in scratch.iterdir():
        target = output_dir / item.name
        if target.is_dir():  # os.replace cannot replace a folder
            shutil.rmtree(target)
        os.replace(item, target)
    scratch.rmdir()


class RunGuard:
    """What may happen to one trainer's output folder; see the module docs.

    `resume`: the config's resume flag. Raises FileExistsError when the folder holds a checkpoint and `resume` is
    off; warns when `resume` is on and there is nothing to resume."""

    def __init__(self, output_dir: str | Path, resume: bool):
        self.output_dir = Path(output_dir)
        self.checkpoint = last_checkpoint(self.output_dir)
        if self.checkpoint is not None and not resume:
            raise FileExistsError(
                f"{self.output_dir} already holds checkpoints of a run ({self.checkpoint.name}); resume it (--resume) "
                "or choose another output folder"
            )
        if resume and self.checkpoint is None:
            logger.warning("resume asked for, but %s holds no checkpoint: starting from scratch", self.output_dir)

    @property
    def resuming(self) -> bool:
        """Whether the run continues from a checkpoint."""
        return self.checkpoint is not None

    @property
    def resume_from(self) -> str | None:
        """The checkpoint for `Trainer.train(resume_from_checkpoint=...)`."""
        return str(self.checkpoint) if self.checkpoint is not None else None

    @property
    def checkpoint_dir(self) -> Path:
        """The Trainer's `output_dir`: where checkpoints and the run file go."""
        return checkpoint_folder(self.output_dir)

    @property
    def resumed_step(self) -> int:
        """The step the run resumes from (0 for a fresh run)."""
        return trainer_state_step(self.checkpoint) if self.checkpoint is not None else 0

    def previous_run(self) -> dict[str, Any]:
        """The run file of the checkpoints being resumed ({} for a fresh run or a run file that is missing)."""
        return read_run_file(self.output_dir) if self.resuming else {}

    def check(self, fingerprint: Mapping[str, Any], *, strict: bool = False,
              reason: str = "were trained on other data") -> None:
        """When resuming, refuse (DataError: "its checkpoints <reason>") a run file whose entries differ from
        `fingerprint`. An entry the run file lacks passes, unless `strict`, which also refuses a missing run file."""
        if not self.resuming:
            return
        stored = read_run_file(self.output_dir)
        if strict and not stored:
            raise DataError(f"cannot resume {self.output_dir}: its checkpoints have no run file ({RUN_FILE})")
        for key, value in fingerprint.items():
            if (strict or key in stored) and stored.get(key) != value:
                raise DataError(
                    f"cannot resume {self.output_dir}: its checkpoints {reason} ({key} "
                    f"{_short(stored.get(key))}, this run {_short(value)}); use another output folder"
                )

    def start(self, fingerprint: Mapping[str, Any], **details: Any) -> None:
        """Write the run file of a fresh run (`fingerprint` plus `details`; on the main process only)."""
        if not self.resuming and is_main_process():
            write_json(run_file(self.output_dir), {**fingerprint, **details})

    def begin(self, fingerprint: Mapping[str, Any], **details: Any) -> None:
        """`check` then `start`: what most trainers do before training."""
        self.check(fingerprint)
        self.start(fingerprint, **details)

    def save(self, *parts: Any) -> None:
        """Save the final model (`save_atomically`)."""
        save_atomically(self.output_dir, *parts)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:12] if isinstance(value, str) and len(text) == 64 else text


__all__ = [
    "CHECKPOINT_DIR",
    "RUN_FILE",
    "RunGuard",
    "checkpoint_folder",
    "last_checkpoint",
    "read_run_file",
    "run_file",
    "run_matches",
    "save_atomically",
    "trainer_state_step",
    "update_run_file",
]
