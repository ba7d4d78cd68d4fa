"""Teachers that write the reasoning chains of Multi-CoT tuning (EE, RA, DR) and name confusable labels.

* :class:`RulesTeacher` (``rules``): offline and deterministic, the default;
* :class:`~lref.teachers.openai.OpenAITeacher` (``openai``): any OpenAI-compatible chat endpoint;
* :class:`~lref.teachers.local.LocalTeacher` (``local``): generation with a local HF causal LM.

All follow the :class:`Teacher` protocol and return :class:`Explanation` objects.
"""

from lref.prompts.rules import (
    Rule,
    RuleFileError,
    RuleSet,
    default_rules,
    load_rules,
    parse_rules,
)
from lref.teachers.base import (
    ChatTeacher,
    Explanation,
    Teacher,
    TeacherError,
    parse_label,
)
from lref.teachers.rules import RulesTeacher, compare, extract_facts, extract_measures

__all__ = [
    "ChatTeacher", "Explanation", "Rule", "RuleFileError", "RuleSet", "RulesTeacher", "Teacher", "TeacherError",
    "compare", "default_rules", "extract_facts", "extract_measures", "load_rules", "parse_label", "parse_rules",
]
