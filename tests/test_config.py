import pytest

from lref.config import field_default, field_help
from lref.serve.llm import LLMServerConfig
from lref.stages.dpo import DPOStageConfig
from lref.stages.select import SelectConfig
from lref.stages.sft import SFTStageConfig
from lref.training.cross_encoder import CrossEncoderConfig


def test_help_and_defaults_come_from_the_dataclass():
    assert field_help(SFTStageConfig, "lora_r") == "LoRA rank."
    assert field_default(SFTStageConfig, "lora_r") == 16
    assert field_default(SFTStageConfig, "target_modules") == "all-linear"
    with pytest.raises(KeyError, match="no field 'nope'"):
        field_help(SFTStageConfig, "nope")


def test_every_stage_config_field_has_help_text():
    from dataclasses import fields

    for config in (SFTStageConfig, SelectConfig, DPOStageConfig, CrossEncoderConfig, LLMServerConfig):
        missing = [f.name for f in fields(config) if not f.metadata.get("help")]
        assert not missing, f"{config.__name__} fields without help: {missing}"


@pytest.mark.parametrize(
    "config_cls, field, value, message",
    [
        (SFTStageConfig, "batch_size", 0, "batch_size must be at least 1"),
        (SFTStageConfig, "warmup_ratio", 1.0, "warmup_ratio must lie in"),
        (DPOStageConfig, "min_pairs", 0, "min_pairs must be at least 1"),
        (CrossEncoderConfig, "max_length", 0, "max_length must be at least 1"),
    ],
)
def test_training_configs_refuse_bad_values(config_cls, field, value, message):
    with pytest.raises(ValueError, match=message):
        config_cls(**{field: value})
