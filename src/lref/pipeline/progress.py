"""Run progress: stage k of N, the time spent and an estimate of the time left, measured on this run.

Every stage gets an estimated amount of work in one unit, "LLM scorings" (one forward pass of the run's LLM over
one pair), from its config and the run's sizes (`stage_work`). The estimate of the time left is the remaining work
times the seconds per unit this run has measured so far on the stages it actually ran (kept stages cost nothing and
are not counted, nor are stages too short to time), so it adapts to the machine: a slow CPU's first stages make the
estimate longer. Before such a stage has finished there is no estimate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

LLM_TRAIN_EXAMPLE = 4.0
"""A LoRA training example costs about four scorings of the same pair: forward and backward over the whole prompt,
where scoring reuses the cached instruction prefix."""
COT_TRAIN_EXAMPLE = 24.0
"""A Multi-CoT training example (half chain-of-thought, half direct) costs several direct ones: the explanation is
the completion, and RA's prompts carry the rules."""
ENCODER_EXAMPLE = 0.3
"""A MiniLM-class cross-encoder training example, relative to an LLM scoring."""
ENCODER_SCORING = 0.03
LEXICAL_PAIR = 0.015
MIN_MEASURED_WORK = 20.0
"""Stages with less estimated work than this are too short to time the machine by (their fixed costs, such as
loading a model, dominate); they do not count towards the measured speed."""
SELECTED_SHARE = 0.1
"""Expected share of the pool that selection keeps (the paper's ~10%), to size the stages after it before it ran."""


def duration(seconds: float) -> str:
    """`95.2` -> '1m35s'; under a minute '42s'; over an hour '1h02m'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _epochs(config: Any, default: float = 1.0) -> float:
    epochs = getattr(config, "epochs", None)
    return float(epochs) if isinstance(epochs, (int, float)) and epochs > 0 else default


MPNET_SIZE = 109.5 / 22.7
"""MPNet-base's cost against MiniLM-L6's, taken as the ratio of their parameter counts."""


def stage_work(name: str, config: Any, n_train: int, n_scored: int, cached_teacher: bool = False) -> float:
    """Estimated work of stage `name` in LLM scorings: `n_train` its training pairs, `n_scored` the pairs each of its
    systems is scored on (held-out plus calibration); `cached_teacher`: a student stage whose teacher labels another
    student stage of the run scores first."""
    epochs = _epochs(config)
    if name == "lexical":
        return LEXICAL_PAIR * (n_train + n_scored)
    if name == "zero-shot":
        return float(n_scored)
    if name in ("bert", "mpnet-base", "distill", "distill-hybrid"):
        # distillation first labels its pairs with the LLM teacher; a second student finds them cached
        teacher = n_train if name in ("distill", "distill-hybrid") and not cached_teacher else 0
        size = MPNET_SIZE if name == "mpnet-base" else 1.0
        return teacher + size * (ENCODER_EXAMPLE * n_train * epochs + ENCODER_SCORING * n_scored)
    if name in ("llm-base", "sft"):
        return LLM_TRAIN_EXAMPLE * n_train * epochs + n_scored
    if name == "select":
        backbone = getattr(config, "backbone", "llm")
        roles = ("im", "ci") if getattr(config, "ms_method", "supervisor") == "cleanlab" else ("im", "ci", "ms")
        samples = sum(getattr(config, f"{role}_sample", 0) or 0 for role in roles)  # cleanlab trains no MS model
        if backbone == "lexical":
            return LEXICAL_PAIR * (samples + 3 * n_train)
        if backbone == "encoder":
            return ENCODER_EXAMPLE * samples * epochs + 3 * ENCODER_SCORING * n_train
        return LLM_TRAIN_EXAMPLE * samples * epochs + 3 * n_train
    if name == "cot":
        tasks = list(getattr(config, "stages", None) or ("ee", "ra", "dr"))
        direct = min(getattr(config, "direct_share", 0.5) or 0.0, 0.9)
        work = 0.0
        for task in tasks:
            samples = min(getattr(config, f"{task}_samples", n_train) or 0, n_train)
            examples = samples / (1 - direct)
            work += COT_TRAIN_EXAMPLE * examples * float(getattr(config, f"{task}_epochs", 1.0) or 1.0) + n_scored
        return work
    if name == "dpo":
        # mining scores and samples every pair; training runs chosen and rejected through policy and reference
        return n_train * (1 + 2 * LLM_TRAIN_EXAMPLE * epochs) + n_scored
    return float(n_train + n_scored)


@dataclass
class RunClock:
    """Times a run's stages and estimates the time left from the work done so far."""

    work: dict[str, float]
    """Estimated work of every stage this run will run (`stage_work`)."""
    started: float = field(default_factory=lambda: time.perf_counter())
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each stage that ran in this run."""
    measured_work: float = 0.0
    measured_seconds: float = 0.0

    def finish(self, name: str, seconds: float, ran: bool) -> None:
        """Stage `name` ended after `seconds`; `ran` is False when it was kept from an earlier run."""
        self.seconds[name] = seconds if ran else 0.0
        if ran and self.work.get(name, 0.0) >= MIN_MEASURED_WORK:
            self.measured_work += self.work.get(name, 0.0)
            self.measured_seconds += seconds

    def remaining_s(self) -> float | None:
        """Estimated seconds left, or None before any measured work."""
        left = sum(work for name, work in self.work.items() if name not in self.seconds)
        if left == 0:
            return 0.0
        if self.measured_work <= 0 or self.measured_seconds <= 0:
            return None
        return left * self.measured_seconds / self.measured_work

    def status(self) -> str:
        """'4m10s so far, about 9m left' (no estimate yet: '4m10s so far')."""
        text = f"{duration(time.perf_counter() - self.started)} so far"
        left = self.remaining_s()
        if left:
            text += f", about {duration(left)} left"
        return text

    def summary(self) -> str:
        """'total 12m31s; slowest stage: cot (3m02s)'."""
        text = f"total {duration(time.perf_counter() - self.started)}"
        if any(self.seconds.values()):
            slowest = max(self.seconds, key=self.seconds.get)
            text += f"; slowest stage: {slowest} ({duration(self.seconds[slowest])})"
        return text


__all__ = ["RunClock", "duration", "stage_work"]
