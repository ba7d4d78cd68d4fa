"""Where and in which precision to run: CPU or CUDA, bf16 or float32, threads, and the distributed rank."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

CPU_BF16_VARIABLE = "LREF_CPU_BF16"
"""Set to 0 to keep automatic precision at float32 on the CPU (results identical across machines)."""


SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")
"""CPU flags that decide how fast the models run here, reported beside timings (`machine_info`)."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX, read from /proc/cpuinfo). Elsewhere
    bf16 on the CPU is emulated: slower than float32, not faster."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def machine_info() -> dict[str, Any]:
    """The CPU model, logical CPUs, the speed-relevant CPU flags and the precision the models run in on the CPU."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": name, "logical_cpus": os.cpu_count(), "flags": [f for f in SPEED_FLAGS if f in cpu_flags()],
            "precision": "bf16" if use_bf16(None, use_cpu=True) else "float32"}


def prepare_device(config: Any) -> bool:
    """Apply `config.threads` and return whether to train on the CPU (default: unless CUDA is available). Under a
    distributed launch, also arranges a clean shutdown (`release_process_group_at_exit`).

    Refuses forced bf16 on a CPU without native bf16 (`cpu_has_native_bf16`), where it would only be slower.
    """
    import torch

    if getattr(config, "threads", None):
        torch.set_num_threads(config.threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        release_process_group_at_exit()
    use_cpu = config.use_cpu if config.use_cpu is not None else not torch.cuda.is_available()
    if getattr(config, "bf16", False) and use_cpu and not cpu_has_native_bf16():
        raise ValueError("bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 mixed precision would be "
                         "slower than float32; set bf16 to false or null (auto)")
    return use_cpu


@functools.cache
def release_process_group_at_exit() -> None:
    """Destroy the distributed process group before the interpreter shuts down (registered once, under
    `accelerate launch` / torchrun). Left to interpreter teardown, gloo's worker threads can abort a finished rank
    (SIGABRT, "terminate called without an active exception"), and the launcher then kills the other ranks."""
    import atexit

    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def use_bf16(choice: bool | None, use_cpu: bool) -> bool:
    """Whether to run in bf16: `choice` when set; auto (None) = on a CPU with native bf16 (`cpu_has_native_bf16`)
    unless the environment sets LREF_CPU_BF16=0, float32 elsewhere. That includes GPUs: on an H200, Gemma-3-270M
    LoRA steps of 16 pairs took 0.29 s in fp32 and 0.60 s in bf16, and scoring ran 1,358 vs 362 pairs/s
    (benchmarks/gpu_check.py); models this small leave the GPU waiting on kernel launches, and bf16 only adds casts.
    fp16 is never chosen: it overflows in Gemma."""
    if choice is not None:
        return choice
    return use_cpu and cpu_has_native_bf16() and os.environ.get(CPU_BF16_VARIABLE) != "0"


def resolve_precision(config: Any, use_cpu: bool) -> str:
    """Training precision, "bf16" (mixed) or "fp32", from a stage config's `bf16` field (`use_bf16`); configs
    without the field train in fp32."""
    return "bf16" if use_bf16(getattr(config, "bf16", False), use_cpu) else "fp32"


def is_main_process() -> bool:
    """True on the process that writes shared outputs: rank 0 under `accelerate launch` / torchrun, else always."""
    return int(os.environ.get("RANK", "0")) == 0


__all__ = ["CPU_BF16_VARIABLE", "SPEED_FLAGS", "cpu_flags", "cpu_has_native_bf16", "is_main_process", "machine_info",
           "prepare_device", "release_process_group_at_exit", "resolve_precision", "use_bf16"]
