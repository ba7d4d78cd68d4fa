"""The Multi-CoT prompts: EE (expert analysis), RA (rule adherence) and DR (decision reflection).

Every CoT prompt starts with its own task marker, never with the direct prompt's instruction, and every CoT
completion ends with the direct format's answer cue and label, so the fast direct scorer keeps working on a model
trained on both.
"""

from __future__ import annotations

import re
from typing import Any

from lref.data.records import Record
from lref.labels import LabelScheme
from lref.prompts.direct import ANSWER_CUE, Prompt, product_fields
from lref.prompts.rules import RuleSet

TASKS = ("ee", "ra", "dr")
COT_PROMPT_VERSION = "cot-v1"
ANALYSIS_CUE = "Analysis:"
REFLECTION_CUE = "Reflection:"
TASK_MARKERS = {
    "ee": "Task: expert analysis of a search result.\n",
    "ra": "Task: apply the business rules to a search result.\n",
    "dr": "Task: reflect on a wrong relevance decision.\n",
}


def cot_instruction(task: str, scheme: LabelScheme, rules: RuleSet | None = None) -> str:
    """The pair-independent instruction of a CoT task; it starts with the task's marker, unlike the direct prompt."""
    if task == "ee":
        body = ("Analyse the query and the product from several perspectives, one line each: product type, brand, "
                "model, attributes (size, colour, material, quantity). Then give the grade.")
    elif task == "ra":
        if rules is None:
            raise ValueError("the RA prompt needs a rule set")
        body = ("Business rules (product-level rules decide what the item is; modifier-level rules lower the grade "
                f"when an attribute differs):\n{rules.describe()}\nApply the rules to the pair, cite each rule you "
                "apply by its id in square brackets, then give the grade.")
    elif task == "dr":
        body = "A model graded the pair wrongly. Explain why its decision is wrong, then give the correct grade."
    else:
        raise ValueError(f"unknown CoT task {task!r}: choose one of {', '.join(TASKS)}")
    return (f"{TASK_MARKERS[task]}Grades, from most to least relevant:\n{scheme.describe()}\n{body}\n"
            f"Finish with the line '{ANSWER_CUE} <grade>', where <grade> is one of: {', '.join(scheme.words)}.\n\n")


def cot_prompt(task: str, record: Record, scheme: LabelScheme, rules: RuleSet | None = None,
               wrong_label: str | None = None) -> Prompt:
    """The prompt of a CoT task; the model continues with the reasoning, the answer cue and the label."""
    pair = f"Query: {record.query}\n{product_fields(record)}\n"
    if task == "dr":
        if wrong_label is None:
            raise ValueError("the DR prompt needs the wrong decision")
        pair += f"Model's decision: {scheme.word(wrong_label)}\n{REFLECTION_CUE}"
    else:
        pair += ANALYSIS_CUE
    return Prompt(prefix=cot_instruction(task, scheme, rules), pair=pair)


def cot_completion(explanation: Any, scheme: LabelScheme) -> str:
    """What the model learns to write after a CoT prompt: the reasoning, then the answer cue and the label."""
    return " " + explanation.text(scheme)


ANSWER_PATTERN = re.compile(r"(?:relevance|grade|label|answer)\s*[:=]\s*\**\s*([\w'-]+)", re.IGNORECASE)
"""An answer line: "Relevance: X" (or grade, label, answer)."""


def parse_label(text: str | None, scheme: LabelScheme) -> str | None:
    """The grade an answer ends in: the last 'Relevance: X' (or grade/label/answer), else a last line that is only a
    grade word. Accepts words and label names, case-insensitively. None when there is none."""
    if not text:
        return None
    lookup = {word.lower(): label for label, word in zip(scheme.labels, scheme.words)}
    lookup.update({label.lower(): label for label in scheme.labels})
    for match in reversed(list(ANSWER_PATTERN.finditer(text))):
        label = lookup.get(match.group(1).strip("*'\".").lower())
        if label is not None:
            return label
    lines = [line.strip(" *.\"'`") for line in text.strip().splitlines() if line.strip()]
    return lookup.get(lines[-1].lower()) if lines else None


def strip_answer(text: str) -> str:
    """The reasoning without its trailing answer line(s)."""
    lines = text.strip().splitlines()
    while lines and (ANSWER_PATTERN.search(lines[-1]) or not lines[-1].strip()):
        lines.pop()
    return "\n".join(lines).strip()



__all__ = ["ANALYSIS_CUE", "ANSWER_PATTERN", "COT_PROMPT_VERSION", "REFLECTION_CUE", "TASKS", "TASK_MARKERS",
           "cot_completion", "cot_instruction", "cot_prompt", "parse_label", "strip_answer"]
