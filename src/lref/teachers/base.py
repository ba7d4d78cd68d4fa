"""The teacher interface, the explanation it returns, and the chat teacher shared by the LLM-backed teachers.

A teacher writes the reasoning that Multi-CoT tuning trains on:

* ``explain`` (EE, Expert Explaining): a multi-perspective analysis (product type, brand, model, attributes) ending
  in a label;
* ``apply_rules`` (RA, Rule Adherence): an analysis that applies business rules and cites their ids;
* ``reflect`` (DR, Decision Reflection): why a wrong decision is wrong, ending in the correct (human) label;
* ``confusable``: for each pair, the label its human label is most easily confused with (for data selection).

Every method returns one item per input record, in input order. An LLM answer without a parsable label is retried
and, failing that, returned as an :class:`Explanation` with ``label=None`` and ``error`` set, so a run never crashes
on one bad answer; CoT example builders skip those.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from lref.data.records import DataError, Record
from lref.labels import LabelScheme
from lref.prompts import ANSWER_CUE, label_completion, product_fields
from lref.prompts.cot import parse_label, strip_answer
from lref.prompts.rules import RuleSet

KINDS = ("ee", "ra", "dr")


class TeacherError(RuntimeError):
    """A teacher that cannot go on (e.g. its endpoint is down after every retry); finished answers stay cached."""


class TeacherRefusal(TeacherError):
    """The teacher refused this request for good, and asking again would fail the same way: a non-retryable error
    about the request itself (e.g. HTTP 400 for a prompt over the context length, 413, 422), not about the endpoint
    or the credentials (connection errors, 401/403, 429, 5xx stay plain TeacherError). `lref.teachers.cache.teach`
    asks a refused batch pair by pair and skips the pairs refused on their own (bounded: many refusals stop the
    run)."""


@dataclass
class Explanation:
    """One teacher answer: the reasoning, the label it ends in, and the business rules it cites."""

    id: str
    kind: str
    """ee, ra or dr."""
    analysis: str
    """The reasoning, without the final label line."""
    label: str | None
    """The label the reasoning ends in (canonical scheme name); None when the answer had no parsable label."""
    rule_ids: list[str] = field(default_factory=list)
    wrong_label: str | None = None
    """DR only: the wrong decision that the analysis refutes."""
    teacher: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.label is not None

    def text(self, scheme: LabelScheme) -> str:
        """The full CoT target: the analysis, then the answer cue and the label word."""
        if self.label is None:
            raise ValueError(f"explanation {self.id!r} has no label ({self.error})")
        return f"{self.analysis}\n{ANSWER_CUE}{label_completion(scheme, self.label)}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Explanation":
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})


@runtime_checkable
class Teacher(Protocol):
    name: str

    def explain(self, records: Sequence[Record], scheme: LabelScheme) -> list[Explanation]: ...

    def apply_rules(self, records: Sequence[Record], rules: RuleSet) -> list[Explanation]: ...

    def reflect(
        self, records: Sequence[Record], wrong_labels: Sequence[str], scheme: LabelScheme
    ) -> list[Explanation]: ...

    def confusable(self, records: Sequence[Record], scheme: LabelScheme) -> list[str]: ...


def check_wrong_labels(records: Sequence[Record], wrong_labels: Sequence[str], scheme: LabelScheme) -> list[str]:
    """Canonical wrong labels, one per record, each differing from the record's human label."""
    if len(wrong_labels) != len(records):
        raise ValueError(f"reflect needs one wrong label per record: {len(records)} records, "
                         f"{len(wrong_labels)} labels")
    out = []
    for row, (record, wrong) in enumerate(zip(records, wrong_labels)):
        gold = human_label(record, scheme, row)
        wrong = scheme.parse(wrong)
        if wrong == gold:
            raise DataError(f"pair {record.id!r}: the 'wrong' label {wrong!r} is its human label", row=row)
        out.append(wrong)
    return out


def human_label(record: Record, scheme: LabelScheme, row: int | None = None) -> str:
    if record.label is None:
        raise DataError(f"pair {record.id!r} has no human label", row=row, column="label")
    return scheme.parse(record.label)


def adjacent_label(label: str, scheme: LabelScheme) -> str:
    """The neighbouring grade on the more relevant side (LLMs over-estimate), or the next one for the top grade."""
    index = scheme.index(label)
    return scheme.labels[index - 1] if index > 0 else scheme.labels[1]


# ---------------------------------------------------------------------------------------------------------------------
# Chat prompts and answer parsing, shared by the openai and local teachers

# Part of every cached teacher text's key: bump it when a teacher's prompts or the rules teacher's texts change.
TEACHER_PROMPT_VERSION = "teacher-v1"



def system_message(scheme: LabelScheme) -> str:
    return (
        "You are an expert rater of e-commerce search relevance. Grades, from most to least relevant:\n"
        f"{scheme.describe()}\n"
        f"Always finish with a last line of the form '{ANSWER_CUE} <grade>', where <grade> is one of: "
        f"{', '.join(scheme.words)}."
    )


def _pair(record: Record) -> str:
    return f"Query: {record.query}\n{product_fields(record)}"


def explain_messages(record: Record, scheme: LabelScheme, hint_label: bool = True) -> list[dict[str, str]]:
    hint = (f"\nThe human raters' grade is {scheme.word(scheme.parse(record.label))}; explain the evidence for it."
            if hint_label and record.label is not None else "")
    user = (
        f"{_pair(record)}\n\nAnalyse the pair from several perspectives, one short line each: product type "
        f"(what the query asks for, what the product is), brand, model, attributes (size, colour, material, "
        f"quantity). Then give a one-line verdict.{hint}"
    )
    return [{"role": "system", "content": system_message(scheme)}, {"role": "user", "content": user}]


def rules_messages(record: Record, rules: RuleSet, hint_label: bool = True) -> list[dict[str, str]]:
    scheme = rules.scheme
    hint = (f"\nThe human raters' grade is {scheme.word(scheme.parse(record.label))}; show which rules lead to it."
            if hint_label and record.label is not None else "")
    user = (
        f"Business rules (product-level rules decide what the item is; modifier-level rules lower the grade when an "
        f"attribute differs):\n{rules.describe()}\n\n{_pair(record)}\n\nApply the rules to the pair step by step and "
        f"cite each rule you apply by its id in square brackets, e.g. [{rules.rules[0].id}].{hint}"
    )
    return [{"role": "system", "content": system_message(scheme)}, {"role": "user", "content": user}]


def reflect_messages(record: Record, wrong_label: str, scheme: LabelScheme) -> list[dict[str, str]]:
    gold = scheme.parse(record.label)
    direction = "more" if scheme.index(wrong_label) < scheme.index(gold) else "less"
    user = (
        f"{_pair(record)}\n\nA model graded this pair {scheme.word(wrong_label)}, which is wrong: it judged the "
        f"product {direction} relevant than it is. The correct grade is {scheme.word(gold)}. Explain briefly why "
        f"{scheme.word(wrong_label)} is wrong and why {scheme.word(gold)} is right."
    )
    return [{"role": "system", "content": system_message(scheme)}, {"role": "user", "content": user}]


def confusable_messages(record: Record, scheme: LabelScheme) -> list[dict[str, str]]:
    gold = scheme.parse(record.label)
    others = ", ".join(scheme.word(label) for label in scheme.labels if label != gold)
    user = (
        f"{_pair(record)}\n\nThe human raters graded this pair {scheme.word(gold)}. Which other grade ({others}) "
        f"would a careful rater most easily confuse it with? Answer with that grade only."
    )
    return [{"role": "system", "content": system_message(scheme)}, {"role": "user", "content": user}]


def cited_rule_ids(text: str, rules: RuleSet) -> list[str]:
    """Rule ids cited in the text (in order of first mention), restricted to the rule set's ids."""
    known = {rule.id.lower(): rule.id for rule in rules.rules}
    found: list[str] = []
    for token in re.findall(r"\[([^\[\]]+)\]", text) + re.findall(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+", text):
        rule_id = known.get(token.strip().lower())
        if rule_id and rule_id not in found:
            found.append(rule_id)
    return found


class ChatBackend(Protocol):
    """Answers chat conversations; ``None`` for a conversation that got no usable answer (counted as a failure)."""

    name: str

    def complete(self, conversations: Sequence[list[dict[str, str]]], attempt: int = 0) -> list[str | None]: ...

    def stats(self) -> dict[str, Any]: ...


class ChatTeacher:
    """A teacher over any chat backend: builds the EE/RA/DR/confusable prompts, parses the label, retries answers
    that have none (``attempt`` > 0 asks the backend for a fresh, non-cached sample) and drops them after
    ``malformed_retries``."""

    def __init__(self, backend: ChatBackend, malformed_retries: int = 1, hint_label: bool = True):
        self.backend = backend
        self.name = backend.name
        self.malformed_retries = malformed_retries
        self.hint_label = hint_label
        self.malformed = 0
        self.dropped = 0

    def stats(self) -> dict[str, Any]:
        return {**self.backend.stats(), "malformed_answers": self.malformed, "dropped": self.dropped}

    def _ask(self, conversations: list[list[dict[str, str]]],
             scheme: LabelScheme) -> list[tuple[str | None, str | None]]:
        """(answer text, parsed label) per conversation, retrying the unparsable ones."""
        answers: list[str | None] = [None] * len(conversations)
        labels: list[str | None] = [None] * len(conversations)
        pending = list(range(len(conversations)))
        for attempt in range(self.malformed_retries + 1):
            if not pending:
                break
            replies = self.backend.complete([conversations[i] for i in pending], attempt=attempt)
            still = []
            for index, reply in zip(pending, replies):
                label = parse_label(reply, scheme)
                if reply is not None:
                    answers[index] = reply
                if label is None:
                    if reply is not None:
                        self.malformed += 1
                    still.append(index)
                else:
                    labels[index] = label
            pending = still
        self.dropped += len(pending)
        return list(zip(answers, labels))

    def _explanations(self, kind, records, conversations, scheme, rules=None, wrong=None) -> list[Explanation]:
        out = []
        for position, (record, (answer, label)) in enumerate(zip(records, self._ask(conversations, scheme))):
            analysis = strip_answer(answer) if answer else ""
            out.append(Explanation(
                id=record.id, kind=kind, analysis=analysis, label=label,
                rule_ids=cited_rule_ids(answer, rules) if (rules is not None and answer) else [],
                wrong_label=wrong[position] if wrong else None, teacher=self.name,
                error=None if label else ("no answer" if answer is None else "no parsable label"),
            ))
        return out

    def explain(self, records: Sequence[Record], scheme: LabelScheme) -> list[Explanation]:
        conversations = [explain_messages(r, scheme, self.hint_label) for r in records]
        return self._explanations("ee", records, conversations, scheme)

    def apply_rules(self, records: Sequence[Record], rules: RuleSet) -> list[Explanation]:
        conversations = [rules_messages(r, rules, self.hint_label) for r in records]
        return self._explanations("ra", records, conversations, rules.scheme, rules=rules)

    def reflect(self, records: Sequence[Record], wrong_labels: Sequence[str], scheme: LabelScheme) -> list[Explanation]:
        wrong = check_wrong_labels(records, wrong_labels, scheme)
        conversations = [reflect_messages(r, w, scheme) for r, w in zip(records, wrong)]
        return self._explanations("dr", records, conversations, scheme, wrong=wrong)

    def confusable(self, records: Sequence[Record], scheme: LabelScheme) -> list[str]:
        """The named label, or the neighbouring grade when the answer names none or names the human label."""
        golds = [human_label(r, scheme, row) for row, r in enumerate(records)]
        replies = self._ask([confusable_messages(r, scheme) for r in records], scheme)
        return [label if label not in (None, gold) else adjacent_label(gold, scheme)
                for gold, (_, label) in zip(golds, replies)]
