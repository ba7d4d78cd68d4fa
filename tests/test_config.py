import pytest

from lref.config import field_default, field_help
from lref.stages.select import SelectConfig
from lref.stages.sft import SFTStageConfig


def test_help_and_defaults_come_from_the_dataclass():
    assert field_help(SFTStageConfig, "lora_r") == "LoRA rank."
    assert field_default(SFTStageConfig, "lora_r") == 16
    assert field_default(SFTStageConfig, "target_modules") == "all-linear"
    with pytest.raises(KeyError, match="no field 'nope'"):
        field_help(SFTStageConfig, "nope")


def test_every_stage_config_field_has_help_text():
    from dataclasses import fields

    from lref.models.cross_encoder import CrossEncoderConfig
    from lref.serve.llm import LLMServerConfig
    from lref.stages.dpo import DPOStageConfig

    for config in (SFTStageConfig, SelectConfig, DPOStageConfig, CrossEncoderConfig, LLMServerConfig):
        missing = [f.name for f in fields(config) if not f.metadata.get("help")]
        assert not missing, f"{config.__name__} fields without help: {missing}"
