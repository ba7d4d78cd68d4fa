"""Every command-line option that stands for a config dataclass field has that field's default, so `lref train sft`
and `SFTStageConfig()` (and the pipeline's YAML) never drift apart.

Each command is paired with its config class; an option maps to the field of its own name, or of the name in
`ALIASES` (`--lr` is `learning_rate`). An option whose help text is a field's help text must map to that field."""

import dataclasses
import inspect

import pytest
import typer.main

from lref.calibration import CalibrationConfig
from lref.cli import app
from lref.config import field_default
from lref.data.synthetic import SyntheticCatalogConfig
from lref.demo import DemoConfig
from lref.judge import JudgeConfig
from lref.models.generation import generate_predictions
from lref.models.onnx import ExportConfig
from lref.models.scorer import ScorerConfig
from lref.serve.llm import LLMServerConfig
from lref.serve.student import ServeStudentConfig
from lref.stages.cot import CoTConfig
from lref.stages.distill import DistillConfig
from lref.stages.dpo import DPOStageConfig
from lref.stages.select import SelectConfig
from lref.stages.sft import SFTStageConfig

ALIASES = {"lr": "learning_rate", "out": "output_dir", "out_dir": "output_dir", "alpha": "sft_weight"}
COMMANDS = [
    # (command path, config class, options set elsewhere: the scheme comes from the model or the data format)
    (("train", "sft"), SFTStageConfig, {"scheme"}),
    (("train", "dpo"), DPOStageConfig, {"scheme"}),
    (("select",), SelectConfig, {"scheme"}),
    (("distill",), DistillConfig, {"scheme"}),
    (("cot",), CoTConfig, {"scheme"}),
    (("teach",), CoTConfig, {"scheme", "seed"}),  # --seed: only the DR wrong decisions' seed
    (("export",), ExportConfig, set()),
    (("serve", "llm"), LLMServerConfig, set()),
    (("serve", "student"), ServeStudentConfig, set()),
    (("calibrate",), CalibrationConfig, set()),
    (("demo",), DemoConfig, set()),
    (("predict",), ScorerConfig, set()),
    (("judge",), JudgeConfig, set()),
    # --noise 0.1: the command writes a benchmark-like file with noisy labels; the generator's own default is clean
    (("data", "synth"), SyntheticCatalogConfig, {"noise"}),
]
FIELD_ALIASES = {
    ("predict",): {"threads": "num_threads"},
    ("judge",): {"model": "models", "weight": "weights"},
    ("data", "synth"): {"pairs": "n_pairs", "noise": "label_noise", "queries": "n_queries", "products": "n_products",
                        "out": None},
}


ROOT = typer.main.get_command(app)


def command(path: tuple[str, ...]):
    group = ROOT
    for name in path:
        group = group.commands[name]
    return group


def options(path: tuple[str, ...]) -> list:
    # typer may vendor its own click, so options are told by their kind, not by click's class
    return [param for param in command(path).params if param.param_type_name == "option"]


def field_for(path: tuple[str, ...], cls: type, name: str) -> str | None:
    """The field an option stands for, or None when it is a command-line-only option."""
    names = {f.name for f in dataclasses.fields(cls)}
    specific = FIELD_ALIASES.get(path, {})
    if name in specific:
        return specific[name]
    if name in names:
        return name
    name = ALIASES.get(name, name)
    return name if name in names else None


def as_field_value(value, expected):
    """A command-line default in the field's form: a comma-separated list option is the field's list."""
    if isinstance(expected, (list, tuple)) and isinstance(value, str):
        return type(expected)(item.strip() for item in value.split(",") if item.strip())
    return value


def mismatches(path: tuple[str, ...], cls: type, exempt: set[str]) -> tuple[list[str], int]:
    """The options of `path` whose default differs from their field's, and how many options were compared."""
    helps = {f.metadata.get("help"): f.name for f in dataclasses.fields(cls) if f.metadata.get("help")}
    wrong, compared = [], 0
    for option in options(path):
        field_name = field_for(path, cls, option.name)
        if option.help in helps and option.name not in exempt:
            assert field_name == helps[option.help], (
                f"lref {' '.join(path)} {option.opts[0]} has the help of {cls.__name__}.{helps[option.help]} but maps "
                f"to {field_name!r}: add it to ALIASES"
            )
        if field_name is None or option.name in exempt or option.required:
            continue
        try:
            expected = field_default(cls, field_name)
        except KeyError:  # a required field: the option must be required too
            wrong.append(f"{option.opts[0]}: optional, but {cls.__name__}.{field_name} has no default")
            continue
        compared += 1
        value = as_field_value(option.default, expected)
        if value != expected or type(value) is not type(expected):
            wrong.append(f"{option.opts[0]}: {option.default!r}, but {cls.__name__}.{field_name} = {expected!r}")
    return wrong, compared


@pytest.mark.parametrize(("path", "cls", "exempt"), COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS])
def test_cli_option_defaults_equal_the_config_defaults(path, cls, exempt):
    wrong, compared = mismatches(path, cls, exempt)
    assert not wrong, f"lref {' '.join(path)}: " + "; ".join(wrong)
    assert compared >= 2  # the command's options were found and compared


def test_the_check_covers_the_commands_options():
    compared = sum(mismatches(path, cls, exempt)[1] for path, cls, exempt in COMMANDS)
    assert compared >= 120  # nearly every option that copies a dataclass default


def test_cot_predict_defaults_equal_the_library_function():
    signature = inspect.signature(generate_predictions).parameters
    for option in options(("cot-predict",)):
        if option.name in ("task", "rules", "max_new_tokens", "batch_size"):
            assert option.default == signature[option.name].default, option.opts[0]
