"""Library code every trainer shares: settings (`settings`), examples (`examples`), losses (`losses`), the run guard
(`run_guard`), the LoRA completion loop (`lora`), cross-encoder training (`cross_encoder`) and the selector
backbones (`backbones`). The stages (`lref.stages`) are thin configs and entry points over these.

Importing this package stays light: torch, transformers and peft are imported by the functions that use them.
"""

from lref.training.settings import (
    BF16_HELP,
    LoraSettings,
    TrainingSettings,
    check_training_fields,
    settings_values,
    training_arguments,
    with_default,
)

__all__ = ["BF16_HELP", "LoraSettings", "TrainingSettings", "check_training_fields", "settings_values",
           "training_arguments", "with_default"]
