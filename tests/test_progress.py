"""Run progress: durations, the work estimate of each stage and the time-left estimate from measured stages."""

import pytest

from lref.demo import default_config_path
from lref.pipeline import load_config
from lref.pipeline.progress import RunClock, duration, stage_work


def test_duration_reads_like_a_clock():
    assert [duration(s) for s in (0, 42.4, 95.2, 3600 + 125)] == ["0s", "42s", "1m35s", "1h02m"]


def test_stage_work_grows_with_what_a_stage_does():
    config = load_config(default_config_path())
    stages = config.stages
    base = stage_work("llm-base", stages["llm-base"], 96, 280)
    assert stage_work("llm-base", stages["llm-base"], 192, 280) > base  # more training pairs
    assert stage_work("zero-shot", stages["zero-shot"], 3000, 280) == 280  # scoring only, whatever the pool
    assert stage_work("lexical", stages["lexical"], 3000, 280) < 280 / 4  # seconds, not minutes
    # the lexical selector backbone costs a small fraction of an encoder one on the same samples
    from dataclasses import replace

    encoder = replace(stages["select"], backbone="encoder")
    assert stage_work("select", stages["select"], 1200, 280) < stage_work("select", encoder, 1200, 280) / 3
    # CoT scores one system per task
    two_tasks = replace(stages["cot"], stages=["ee", "dr"])
    assert stage_work("cot", two_tasks, 60, 280) < stage_work("cot", stages["cot"], 60, 280)


def test_clock_estimates_the_time_left_from_the_stages_it_measured(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("lref.pipeline.progress.time.perf_counter", lambda: now[0])
    clock = RunClock({"tiny": 1.0, "a": 100.0, "b": 300.0, "c": 600.0})
    clock.finish("tiny", 9.0, ran=True)  # too little work to time the machine by
    assert clock.remaining_s() is None
    assert clock.remaining_s() is None and clock.status() == "0s so far"
    clock.finish("a", 5.0, ran=False)  # kept from an earlier run: no measurement
    assert clock.remaining_s() is None
    now[0] += 20
    clock.finish("b", 20.0, ran=True)  # 300 units in 20 s
    assert clock.remaining_s() == pytest.approx(600 * 20 / 300)
    assert clock.status() == "20s so far, about 40s left"  # "tiny" counted in neither
    now[0] += 50
    clock.finish("c", 50.0, ran=True)
    assert clock.remaining_s() == 0
    assert clock.summary() == "total 1m10s; slowest stage: c (50s)"
