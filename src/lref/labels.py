"""Ordered relevance label schemes.

A scheme lists its grades from most to least relevant. Index 0 is the most relevant grade, so a prediction
*over-estimates* relevance when its index is smaller than the gold index.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

CLASS_BALANCE = ("none", "sqrt", "inverse")
"""Ways to weight a training example by its label's frequency (`class_weights`)."""


class LabelError(ValueError):
    """A label that is not part of the scheme in use."""


@dataclass(frozen=True)
class LabelScheme:
    """Ordered grades, most relevant first, each with a one-line definition and a numeric rating."""

    name: str
    labels: tuple[str, ...]
    definitions: tuple[str, ...]
    ratings: tuple[float, ...] = ()
    """Numeric value of each grade (used for expected ratings and RMSE); defaults to n, n-1, ..., 1."""
    words: tuple[str, ...] = ()
    """The word an LLM writes for each grade in prompts and answers; defaults to the label names. Numeric labels
    need words, because digits share their first token in many tokenizers."""

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise ValueError(f"label scheme {self.name!r} needs at least two labels")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"label scheme {self.name!r} has duplicate labels: {self.labels}")
        if len(self.definitions) != len(self.labels):
            raise ValueError(f"label scheme {self.name!r}: {len(self.labels)} labels but "
                             f"{len(self.definitions)} definitions")
        if not self.ratings:
            object.__setattr__(self, "ratings", tuple(float(len(self.labels) - i) for i in range(len(self.labels))))
        if len(self.ratings) != len(self.labels):
            raise ValueError(f"label scheme {self.name!r}: {len(self.labels)} labels but {len(self.ratings)} ratings")
        if not self.words:
            object.__setattr__(self, "words", self.labels)
        if len(self.words) != len(self.labels) or len(set(self.words)) != len(self.words):
            raise ValueError(f"label scheme {self.name!r}: needs {len(self.labels)} distinct words, got {self.words}")

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        """Grade index of `label` (0 = most relevant); raises LabelError for unknown labels."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise LabelError(f"label {label!r} is not in scheme {self.name!r} "
                             f"(expected one of {', '.join(self.labels)})") from None

    def parse(self, value: object) -> str:
        """Map a raw label value to its canonical name, accepting names case-insensitively."""
        text = str(value).strip()
        for label in self.labels:
            if text.lower() == label.lower():
                return label
        raise LabelError(f"label {text!r} is not in scheme {self.name!r} (expected one of {', '.join(self.labels)})")

    def rating(self, label: str) -> float:
        return self.ratings[self.index(label)]

    def rating_split(self, rating: float) -> dict[str, float]:
        """`rating` as weights on the two grades whose ratings bracket it, each by its closeness (so they sum to 1
        and average back to `rating`): on graded3, 2.67 is 0.67 Exact and 0.33 Partial. A rating at or beyond the
        scale's end is all that end's grade."""
        ladder = sorted(zip(self.ratings, self.labels))
        if rating <= ladder[0][0]:
            return {ladder[0][1]: 1.0}
        for (low, low_label), (high, high_label) in zip(ladder, ladder[1:]):
            if rating <= high:
                upper = (rating - low) / (high - low)
                return {label: weight for label, weight in ((low_label, 1.0 - upper), (high_label, upper)) if weight}
        return {ladder[-1][1]: 1.0}

    def word(self, label: str) -> str:
        return self.words[self.index(label)]

    def describe(self) -> str:
        """One line per grade, in the words an LLM is asked to answer with."""
        return "\n".join(
            f"- {word}{f' ({name})' if word != name else ''}: {definition}"
            for name, word, definition in zip(self.labels, self.words, self.definitions)
        )


PRESETS: dict[str, LabelScheme] = {
    "lref5": LabelScheme(
        "lref5",
        ("Exact", "Significant", "Marginal", "Trivial", "Irrelevant"),
        (
            "the product is exactly what the query asks for, in type and every stated attribute",
            "the right product type; a minor attribute differs or is unstated",
            "the right product type, but an important attribute (brand, size, model) differs",
            "only loosely related: an accessory, part or a different product used with it",
            "unrelated to what the query asks for",
        ),
    ),
    "esci4": LabelScheme(
        "esci4",
        ("Exact", "Substitute", "Complement", "Irrelevant"),
        (
            "the product is relevant and satisfies every stated requirement of the query",
            "the product is somewhat relevant and could serve as a functional substitute",
            "the product does not fulfil the query but could be used together with an exact item",
            "the product is irrelevant to the query",
        ),
    ),
    "graded3": LabelScheme(
        "graded3",
        ("Exact", "Partial", "Irrelevant"),
        (
            "the product matches the query intent: the right product, brand and specifications",
            "the same kind of product but another brand, size, colour or specification, or an ambiguous match",
            "not what the query asks for, including accessories, parts or tools used with the searched item",
        ),
        ratings=(3.0, 2.0, 1.0),
    ),
    "crowdflower4": LabelScheme(
        "crowdflower4",
        ("4", "3", "2", "1"),
        (
            "completely satisfies the search query",
            "mostly satisfies the search query",
            "partially satisfies the search query",
            "does not satisfy the search query",
        ),
        ratings=(4.0, 3.0, 2.0, 1.0),
        words=("Excellent", "Good", "Fair", "Poor"),
    ),
}


def get_scheme(name: str | LabelScheme) -> LabelScheme:
    """Look up a preset scheme by name (or pass a scheme through)."""
    if isinstance(name, LabelScheme):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise LabelError(f"unknown label scheme {name!r} (presets: {', '.join(PRESETS)})") from None


def class_weights(labels: Sequence[str], scheme: LabelScheme, mode: str = "none") -> dict[str, float]:
    """Per-label loss weights. 'sqrt' and 'inverse' up-weight rare labels; the weights average 1 over `labels`."""
    if mode not in CLASS_BALANCE:
        raise ValueError(f"class_balance must be one of {', '.join(CLASS_BALANCE)}, not {mode!r}")
    counts = Counter(labels)
    if mode == "none" or not counts:
        return {label: 1.0 for label in scheme.labels}
    power = 0.5 if mode == "sqrt" else 1.0
    raw = {label: (len(labels) / (len(counts) * counts[label])) ** power for label in counts}
    mean = sum(raw[label] for label in labels) / len(labels)
    return {label: raw.get(label, 0.0) / mean for label in scheme.labels}
