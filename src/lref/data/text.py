"""Text normalisation shared by the lexical features, the match hints and the rules teacher: tokens, a crude
stemmer, numbers with their units, and the product text a query is matched against.

    >>> tokenize('18v Hoses 50"')
    ['18', 'v', 'hoses', '50', 'in']
    >>> [stem(t) for t in ("hoses", "batteries", "glass")]
    ['hose', 'battery', 'glass']
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from lref.data.records import Record

TOKEN_RE = re.compile(r"\d+(?:[./]\d+)*|[a-z]+")
NUMBER_RE = re.compile(r"\d+(?:[./]\d+)*$")
UNITS = {
    "in": "in", "inch": "in", "inches": "in", '"': "in",
    "ft": "ft", "foot": "ft", "feet": "ft", "'": "ft",
    "v": "v", "volt": "v", "volts": "v",
    "w": "w", "watt": "w", "watts": "w",
    "a": "amp", "amp": "amp", "amps": "amp", "ampere": "amp",
    "gal": "gal", "gallon": "gal", "gallons": "gal",
    "lb": "lb", "lbs": "lb", "pound": "lb", "pounds": "lb",
    "oz": "oz", "ounce": "oz", "ounces": "oz",
    "qt": "qt", "quart": "qt", "quarts": "qt",
    "mm": "mm", "cm": "cm", "m": "m", "btu": "btu", "psi": "psi", "cu": "cu", "sq": "sq", "yd": "yd",
    "gauge": "gauge", "ga": "gauge", "pack": "pack", "pk": "pack", "piece": "piece", "pc": "piece", "count": "count",
    "ct": "count", "k": "k", "mah": "mah", "ah": "ah", "hp": "hp", "rpm": "rpm", "cfm": "cfm", "gpm": "gpm",
}
STOPWORDS = frozenset("a an and the of for with in on to by x or".split())

def normalise_text(text: str) -> str:
    """Lower case, digits split from letters (`18v` -> `18 v`), inch/foot marks spelled out."""
    text = text.lower().replace('"', " in ").replace("''", " in ").replace("'", " ft ")
    text = re.sub(r"(\d)([a-z])", r"\1 \2", text)
    return re.sub(r"([a-z])(\d)", r"\1 \2", text)


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(normalise_text(text))


@functools.lru_cache(maxsize=200_000)
def stem(token: str) -> str:
    """A crude plural/suffix stripper: enough to match `hoses`/`hose`, `batteries`/`battery`."""
    if len(token) <= 3 or token[0].isdigit():
        return token
    if token.endswith("ies"):
        return token[:-3] + "y"
    if token.endswith(("ches", "shes", "xes", "sses")):
        return token[:-2]
    if token.endswith("s") and not token.endswith("ss"):
        return token[:-1]
    return token


def canonical_number(token: str) -> str:
    return token.rstrip("0").rstrip(".") if "." in token else token


def numbers_and_units(tokens: Sequence[str]) -> tuple[set[str], set[str]]:
    """The numbers of a token list, and its number+unit pairs with units normalised (`50 feet` -> `50 ft`)."""
    numbers, units = set(), set()
    for i, token in enumerate(tokens):
        if NUMBER_RE.match(token):
            number = canonical_number(token)
            numbers.add(number)
            if i + 1 < len(tokens) and tokens[i + 1] in UNITS:
                units.add(f"{number} {UNITS[tokens[i + 1]]}")
    return numbers, units


def product_text(record: Record) -> str:
    return f"{record.brand} {record.title}" if record.brand and record.brand.lower() not in record.title.lower() \
        else record.title


SPELLING = {"grey": "gray", "aluminium": "aluminum", "colour": "color", "fibreglass": "fiberglass"}
"""British spellings the rules teacher reads as their American form."""


def normalise_quotes(text: str) -> str:
    """Typographic quotes and primes as ASCII, runs of white space as one space (case and digits kept, unlike
    `normalise_text`): the form the rules teacher reads measures and attributes from."""
    text = text.replace("’", "'").replace("”", '"').replace("″", '"').replace("′", "'")
    return re.sub(r"\s+", " ", text).strip()


def word_stem(word: str) -> str:
    """Light plural stemming of a whole word, British spellings made American: microwaves -> microwave, boxes -> box,
    batteries -> battery; glass stays glass. The rules teacher compares product types and attributes with it; `stem`
    is the faster, cruder one of the lexical features and match hints, kept apart so their outputs stay as trained."""
    word = SPELLING.get(word.lower(), word.lower())
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[:-2].endswith(("ch", "sh", "x", "ss", "z")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


__all__ = ["NUMBER_RE", "SPELLING", "STOPWORDS", "TOKEN_RE", "UNITS", "canonical_number", "normalise_quotes",
           "normalise_text", "numbers_and_units", "product_text", "stem", "tokenize", "word_stem"]
