"""The pipeline configs shipped in configs/ load and validate (they name the Home Depot files in ../shared)."""

from pathlib import Path

import pytest

from lref.pipeline import load_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
HOMEDEPOT = REPO.parent / "shared" / "datasets" / "homedepot"


@pytest.mark.skipif(not HOMEDEPOT.is_dir(), reason="needs ../shared/datasets/homedepot (the configs name its files)")
@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_pipeline_configs_are_valid(path):
    config = load_config(path)
    assert config.stages and Path(config.data.train).is_file()
    assert config.calibration is not None and config.calibration_pairs == 2000


def test_there_are_configs_to_check():
    assert {p.name for p in CONFIGS} >= {"homedepot.yaml", "homedepot_qwen_probe.yaml"}
