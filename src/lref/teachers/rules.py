"""The offline rules teacher: a deterministic domain expert that compares what the query asks for with what the
product is, then applies business rules.

Extraction (:func:`extract_facts`) reads from a query or a product title:

* product type: the head noun of the main noun phrase (text before "in <colour>", "with", "for", commas and
  parentheses), with light plural stemming;
* brand: ``Record.brand``, or a title's first word when it is a known brand (brands are learnt from the data by
  :meth:`RulesTeacher.fit`: words that mostly occur first in titles), and known brand words in the query;
* model and part numbers: tokens mixing letters and digits (``DW7480``, ``#SC-141``), normalised;
* measures: numbers (``3-1/2``, ``1/2``, ``2.5``) with units, normalised so ft/feet/foot/' and in/inch/" compare (both
  to inches), likewise mm/cm/m/yd, gal/qt/pt/l, lb, oz, V, W, A, Ah, gauge, sq ft, cu ft, BTU; and unit-less sizes
  like ``2x4``;
* quantity: ``10-Pack``, ``6 pk``, ``50 count``, ``box of 100``;
* colours and finishes, materials;
* accessory relations: "cover for ...", "replacement ...", "... for <searched item>", accessory head nouns, and kits.

The findings (:data:`~lref.prompts.rules.CHECKS`) fire the rules of a :class:`RuleSet` whose ``check`` names
them; the grade is the least relevant grade among the fired rules (product-level rules say what the item is,
modifier-level rules lower it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from lref.data.records import Record
from lref.data.text import SPELLING, normalise_quotes, word_stem
from lref.labels import LabelScheme
from lref.prompts.rules import LEVELS, Rule, RuleSet, default_rules
from lref.teachers.base import (
    Explanation,
    adjacent_label,
    check_wrong_labels,
    human_label,
)

# ---------------------------------------------------------------------------------------------------------------------
# Vocabulary

_NUMBER = r"(?:\d+(?:\.\d+)?(?:\s*-\s*|\s+)\d+/\d+|\d+/\d+|\d*\.\d+|\d+)"
# (pattern, canonical unit, factor to the canonical unit); order matters: longer patterns first.
_UNITS: list[tuple[str, str, float]] = [
    (r"sq\.?\s*ft\.?|square\s+f(?:ee|oo)t", "sq ft", 1.0),
    (r"cu\.?\s*ft\.?|cubic\s+f(?:ee|oo)t", "cu ft", 1.0),
    (r"ft\.?|feet|foot|'|’", "in", 12.0),
    (r"in\.?(?!\s*-?\s*1\b)|inch(?:es)?|\"|”|''", "in", 1.0),
    (r"mm|millimet(?:er|re)s?", "in", 1 / 25.4),
    (r"cm|centimet(?:er|re)s?", "in", 1 / 2.54),
    (r"yd\.?|yards?", "in", 36.0),
    (r"m|met(?:er|re)s?", "in", 39.3701),
    (r"gal\.?|gallons?", "gal", 1.0),
    (r"qt\.?|quarts?", "gal", 0.25),
    (r"pt\.?|pints?", "gal", 0.125),
    (r"l|lit(?:er|re)s?", "gal", 0.264172),
    (r"lbs?\.?|pounds?", "lb", 1.0),
    (r"(?:fl\.?\s*)?oz\.?|ounces?", "oz", 1.0),
    (r"v|volts?|vac|vdc", "V", 1.0),
    (r"w|watts?", "W", 1.0),
    (r"ah|amp[\s-]?hours?", "Ah", 1.0),
    (r"a|amps?|amperes?", "A", 1.0),
    (r"ga\.?|gauge", "gauge", 1.0),
    (r"btus?", "BTU", 1.0),
]
_UNIT_NAMES = {"in": "length", "gal": "volume", "lb": "weight", "oz": "ounces", "V": "voltage", "W": "wattage",
               "A": "current", "Ah": "battery capacity", "gauge": "gauge", "BTU": "BTU", "sq ft": "area",
               "cu ft": "capacity"}
_MEASURE_RE = re.compile(
    rf"(?<![\w.])(?P<num>{_NUMBER})\s*-?\s*(?P<unit>" + "|".join(f"(?:{p})" for p, _, _ in _UNITS) + r")(?![a-z0-9])",
    re.IGNORECASE,
)
_UNIT_MATCHERS = [(re.compile(rf"^(?:{p})$", re.IGNORECASE), unit, factor) for p, unit, factor in _UNITS]
_DIMS_RE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*[x*×]\s*(\d+(?:\.\d+)?)(?:\s*[x*×]\s*(\d+(?:\.\d+)?))?(?![\w.])",
                      re.IGNORECASE)
_QUANTITY_RES = [
    re.compile(r"(?<![\w.])(\d+)\s*-?\s*(?:pack|pk|packs|count|ct|pc|pcs|pieces?)(?![a-z])", re.IGNORECASE),
    re.compile(r"\b(?:pack|box|set|case|bag|pkg|carton|bundle)\s+of\s+(\d+)\b", re.IGNORECASE),
]
# '#SC-141', letter-digit mixes ('DW7480', 'M18'), and digit part numbers with a dash ('2767-20')
_MODEL_RE = re.compile(r"#\s*[a-z0-9][a-z0-9-]*|\b(?=[a-z0-9-]*\d)(?=[a-z0-9-]*[a-z])[a-z0-9][a-z0-9-]{1,}[a-z0-9]\b"
                       r"|\b\d{3,}-\d{2,}\b", re.IGNORECASE)

COLOURS = (
    "oil rubbed bronze", "brushed nickel", "satin nickel", "polished nickel", "polished brass", "antique brass",
    "stainless", "white", "black", "brown", "red", "blue", "green", "yellow", "gray", "silver", "chrome",
    "nickel", "bronze", "almond", "bisque", "beige", "tan", "ivory", "gold", "orange", "pink", "purple", "clear",
    "espresso", "walnut", "cherry", "mahogany", "natural", "navy", "teal", "charcoal", "cream",
)
MATERIALS = (
    "stainless steel", "cast iron", "galvanized steel", "steel", "aluminum", "wood", "plastic", "vinyl", "pvc",
    "copper", "brass", "iron", "ceramic", "porcelain", "glass", "concrete", "fiberglass", "rubber", "cedar", "oak",
    "pine", "resin", "composite", "granite", "marble", "polypropylene", "nylon", "cotton", "bamboo", "mdf",
    "plywood", "cpvc", "pex", "abs", "poly", "polyester", "stone", "slate", "travertine", "wicker", "leather",
)
STOPWORDS = frozenset(
    "a an and the of for with in on to by or at from per into & + - x w/ is it its this that as no not only "
    "set up new".split()
)
ACCESSORY_NOUNS = frozenset(
    "cover covers case bag bags blade blades bit bits replacement part parts mount mounts bracket brackets hardware "
    "adapter adapters cartridge cartridges refill refills attachment attachments accessory accessories holder "
    "holders hook hooks knob knobs pad pads liner liners cap caps guard guards strap straps nozzle nozzles "
    "filter filters gasket gaskets seal seals spring springs battery batteries charger chargers cord lid lids "
    "skirt skins shade tray trays".split()
)
KIT_NOUNS = frozenset("kit kits combo combos bundle bundles set sets system systems package".split())
_ACCESSORY_PHRASES = re.compile(r"\b(replacement|cover for|case for|parts? for|accessory for|accessories for|"
                                r"compatible with|fits)\b", re.IGNORECASE)
_CUT_RE = re.compile(r"\s(?:in|with|for|w/|featuring|includes?|including)\s|,|\s[-–|]\s|\(|\[", re.IGNORECASE)
_WORD_RE = re.compile(r"[a-z][a-z'-]*[a-z]|[a-z]", re.IGNORECASE)


def parse_number(text: str) -> float:
    """'3-1/2' -> 3.5, '1 1/2' -> 1.5, '5/8' -> 0.625, '.75' -> 0.75."""
    text = text.strip()
    whole = re.fullmatch(r"(\d+(?:\.\d+)?)(?:\s*-\s*|\s+)(\d+)/(\d+)", text)
    if whole:
        return float(whole.group(1)) + int(whole.group(2)) / max(int(whole.group(3)), 1)
    fraction = re.fullmatch(r"(\d+)/(\d+)", text)
    if fraction:
        return int(fraction.group(1)) / max(int(fraction.group(2)), 1)
    return float(text)


def canonical_unit(unit_text: str) -> tuple[str, float]:
    cleaned = unit_text.strip()
    for matcher, unit, factor in _UNIT_MATCHERS:
        if matcher.match(cleaned):
            return unit, factor
    raise ValueError(f"unknown unit {unit_text!r}")


@dataclass(frozen=True)
class Measure:
    value: float
    """In the canonical unit (inches for lengths, gallons for volumes, ...)."""
    unit: str
    text: str

    def same(self, other: "Measure", tolerance: float = 0.02) -> bool:
        limit = tolerance * max(abs(self.value), 1e-9) + 1e-9
        return self.unit == other.unit and abs(self.value - other.value) <= limit


def extract_measures(text: str) -> list[Measure]:
    measures = []
    for match in _MEASURE_RE.finditer(normalise_quotes(text)):
        unit, factor = canonical_unit(match.group("unit"))
        measures.append(Measure(round(parse_number(match.group("num")) * factor, 6), unit, match.group(0).strip()))
    return measures


def _find_phrases(text: str, vocabulary: Iterable[str]) -> list[str]:
    lowered = " " + re.sub(r"[^a-z0-9]+", " ", text.lower()) + " "
    for spelling, canonical in SPELLING.items():
        lowered = lowered.replace(f" {spelling} ", f" {canonical} ")
    found = []
    for phrase in vocabulary:  # longest phrases come first in the vocabularies, and they swallow their parts
        if f" {phrase} " in lowered:
            found.append(phrase)
            lowered = lowered.replace(f" {phrase} ", " ")
    return found


@dataclass
class Facts:
    """What a query or a product title says."""

    text: str
    words: list[str]
    """Stemmed content words (no stopwords, numbers, units)."""
    head: str | None
    """Stemmed head noun of the main phrase: the product type."""
    type_phrase: str
    main_words: list[str]
    """Stemmed content words of the main phrase (before 'in', 'with', 'for', commas, parentheses)."""
    for_target: list[str]
    """Stemmed words after 'for' / 'compatible with' / 'fits': what the product is used with."""
    brands: list[str]
    models: list[str]
    measures: list[Measure]
    dims: list[tuple[float, ...]]
    numbers: set[float]
    quantity: int | None
    colours: list[str]
    materials: list[str]
    accessory_phrase: str | None


def _content_words(text: str, drop: frozenset[str] = frozenset()) -> list[str]:
    words = []
    for word in _WORD_RE.findall(text):
        lowered = word.lower().strip("'-")
        if lowered and lowered not in STOPWORDS and lowered not in drop and len(lowered) > 1:
            words.append(word_stem(lowered))
    return words


def extract_facts(text: str, brands: Iterable[str] = (), record_brand: str | None = None,
                  is_title: bool = False) -> Facts:
    """Extract the comparable facts of a query (``is_title=False``) or a product title."""
    text = normalise_quotes(text)
    known_brands = {b.lower() for b in brands}
    lowered = text.lower()
    measures = extract_measures(text)
    dims = [tuple(float(g) for g in match.groups() if g) for match in _DIMS_RE.finditer(text)]
    numbers = {float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)}
    quantity = None
    for pattern in _QUANTITY_RES:
        match = pattern.search(text)
        if match:
            quantity = int(match.group(1))
            break
    # Models: strip measures, sizes and quantities first, so '18v' or '2x4' are not model numbers.
    stripped = _MEASURE_RE.sub(" ", text)
    stripped = _DIMS_RE.sub(" ", stripped)
    for pattern in _QUANTITY_RES:
        stripped = pattern.sub(" ", stripped)
    models = []
    for token in _MODEL_RE.findall(stripped):
        normalised = re.sub(r"[#\s-]", "", token).upper()
        if len(normalised) >= 3 and re.search(r"\d", normalised) and normalised not in models:
            # ordinals and counted words ('2nd', '1-Handle', '3-Light') are not model numbers
            if re.fullmatch(r"\d+(?:ST|ND|RD|TH)", normalised) or re.fullmatch(r"#?\d+-[a-z]+", token, re.I):
                continue
            models.append(normalised)
    brand_words = set()
    if record_brand:
        brand_words |= {w.lower() for w in _WORD_RE.findall(record_brand)}
    tokens = [w.lower() for w in _WORD_RE.findall(stripped)]
    if is_title:
        first = tokens[0] if tokens else None
        if record_brand:
            found_brands = [record_brand.lower()]
        elif first in known_brands:
            found_brands = [first]
        else:
            found_brands = []
    else:
        found_brands = [t for t in tokens if t in known_brands or t in brand_words]
    drop = frozenset(brand_words | set(found_brands) | {t for t in tokens if t in known_brands and not is_title})
    # Measures, models and quantities are not content words.
    content_text = stripped
    for token in _MODEL_RE.findall(stripped):
        content_text = content_text.replace(token, " ")
    words = _content_words(content_text, drop)
    cut = _CUT_RE.search(" " + content_text + " ")
    main_text = (" " + content_text + " ")[: cut.start()] if cut else content_text
    main_words = _content_words(main_text, drop) or words
    materials = _find_phrases(text, MATERIALS)
    colour_text = text.lower()
    for phrase in materials:  # 'stainless steel' is a material, not the finish 'stainless'
        colour_text = colour_text.replace(phrase, " ")
    colours = _find_phrases(colour_text, COLOURS)
    attribute_words = {word_stem(w) for phrase in colours + materials for w in phrase.split()}
    head_candidates = [w for w in main_words if w not in attribute_words] or main_words
    head = head_candidates[-1] if head_candidates else None
    for_match = re.search(r"\b(?:for|compatible with|fits)\s+(.*)$", content_text, re.IGNORECASE)
    for_target = _content_words(_CUT_RE.split(for_match.group(1))[0], drop) if for_match else []
    accessory = _ACCESSORY_PHRASES.search(lowered)
    return Facts(
        text=text, words=words, head=head, type_phrase=" ".join(head_candidates[-3:]), main_words=main_words,
        for_target=for_target, brands=found_brands, models=models, measures=measures, dims=dims, numbers=numbers,
        quantity=quantity, colours=colours, materials=materials,
        accessory_phrase=accessory.group(1).lower() if accessory else None,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Comparison


@dataclass
class Comparison:
    """The findings for one pair: each check name with a short reason, plus the facts of both sides."""

    query: Facts
    product: Facts
    product_finding: str
    product_reason: str
    modifiers: dict[str, str] = field(default_factory=dict)
    perspectives: dict[str, str] = field(default_factory=dict)
    """One line per perspective: product type, brand, model, attributes."""

    @property
    def checks(self) -> list[str]:
        return [self.product_finding, *self.modifiers]


def _split_query_products(query: str, brands: set[str]) -> list[list[str]]:
    parts = re.split(r"\s(?:and|&|\+|or)\s|,|/", " " + query.lower() + " ")
    products = []
    for part in parts:
        words = [w for w in _content_words(part) if w not in brands]
        if words:
            products.append(words)
    return products


def similar(a: str, b: str) -> bool:
    """Same stemmed word, one a prefix of the other (paint/painted), or a likely typo (sprinkler/sprkinler)."""
    if a == b:
        return True
    if min(len(a), len(b)) >= 4 and (a.startswith(b) or b.startswith(a)):
        return True
    return min(len(a), len(b)) >= 5 and SequenceMatcher(None, a, b).ratio() >= 0.8


def _among(word: str | None, words: Iterable[str]) -> bool:
    return word is not None and any(similar(word, other) for other in words)


def _product_type(q: Facts, p: Facts, query_text: str, brands: set[str]) -> tuple[str, str]:
    qhead, phead = q.head, p.head
    asked, offered = f"'{q.type_phrase}'", f"'{p.type_phrase or p.text}'"
    if qhead is None:
        if q.brands and not q.words:
            if set(q.brands) & (set(p.brands) | set(p.words)):
                return "brand_match", f"the query names only the brand {q.brands[0]}, and the product is by it"
            return "type_mismatch", f"the query names only the brand {q.brands[0]}; the product is another brand"
        return "type_related", "the query names no product type"
    parts = _split_query_products(query_text, brands)
    if len(parts) >= 2:
        heads = [part[-1] for part in parts]
        present = [h for h in heads if _among(h, p.words)]
        if present and len(present) < len(heads):
            return "multi_product", f"the query asks for {' and '.join(heads)}; the product is only the {present[0]}"
    if _among(qhead, p.for_target) and not _among(qhead, p.main_words):
        return "accessory", f"the product, {offered}, is for a {qhead}, not the {qhead} itself"
    if p.accessory_phrase and p.accessory_phrase not in q.text.lower() and not similar(qhead, phead or ""):
        return "accessory", f"the product is a {p.accessory_phrase} item, {offered}, used with a {qhead}"
    if similar(qhead, phead or ""):
        return "exact", f"both are a {phead}"
    if phead in ACCESSORY_NOUNS and _among(qhead, p.words) and not _among(phead, q.words):
        return "accessory", f"the product is a {phead} used with a {qhead}, not a {qhead}"
    inner = p.main_words[-2] if phead in KIT_NOUNS and len(p.main_words) >= 2 else None
    if inner in ACCESSORY_NOUNS and not _among(inner, q.words) and _among(qhead, p.words):  # 'drill bit set'
        return "accessory", f"the product, {offered}, is used with a {qhead}, not a {qhead}"
    if phead in KIT_NOUNS and _among(qhead, p.main_words):
        return "kit_contains", f"the product, {offered}, includes a {qhead}"
    if _among(qhead, p.words) or _among(phead, q.words):
        return "type_related", f"the query asks for {asked}; the product is {offered}, a related item"
    shared = sorted({w for w in q.words if _among(w, p.words)})
    if shared:
        return "type_related", f"the query asks for {asked}; the product is {offered}, sharing '{' '.join(shared)}'"
    return "type_mismatch", f"the query asks for {asked}; the product is {offered}, a different product"


def _measure_text(measures: Sequence[Measure]) -> str:
    return ", ".join(m.text for m in measures)


def compare(record: Record, brands: Iterable[str] = ()) -> Comparison:
    """Extract both sides of a pair and compare them perspective by perspective."""
    brand_set = {b.lower() for b in brands}
    if record.brand:
        brand_set |= {w.lower() for w in _WORD_RE.findall(record.brand)}
    title = record.title
    q = extract_facts(record.query, brand_set, record_brand=None, is_title=False)
    p = extract_facts(title, brand_set, record_brand=record.brand, is_title=True)
    product_finding, product_reason = _product_type(q, p, record.query, brand_set)
    modifiers: dict[str, str] = {}
    perspectives = {"product type": f"query asks for '{q.type_phrase or record.query}'; product is "
                                    f"'{p.type_phrase or title}': {product_reason}."}
    # Brand
    product_brand = record.brand or (p.brands[0] if p.brands else None)
    if q.brands and product_finding != "brand_match":
        p_brand_words = {w.lower() for w in _WORD_RE.findall(product_brand or "")} | set(p.brands)
        title_words = {w.lower() for w in _WORD_RE.findall(title)}
        if set(q.brands) & (p_brand_words | title_words):
            perspectives["brand"] = (f"the query names {q.brands[0]}, and the product is by "
                                     f"{product_brand or q.brands[0]}.")
        else:
            other = product_brand or "another brand"
            modifiers["brand_mismatch"] = f"the query names {q.brands[0]}, the product is by {other}"
            perspectives["brand"] = f"the query names {q.brands[0]}, but the product is by {other}."
    elif product_finding != "brand_match":
        perspectives["brand"] = f"the query names no brand; the product is by {product_brand or 'an unnamed brand'}."
    else:
        perspectives["brand"] = f"the product is by {product_brand}, the brand searched for."
    # Model and part numbers
    if q.models:
        matched = [m for m in q.models if any(m == pm or (len(m) >= 4 and (pm.startswith(m) or m.startswith(pm)))
                                              for pm in p.models)]
        if matched:
            perspectives["model"] = f"the product carries the model number {matched[0]} asked for."
        elif p.models:
            modifiers["model_mismatch"] = f"the query asks for {q.models[0]}, the product is {p.models[0]}"
            perspectives["model"] = f"the query asks for model {q.models[0]}, the product is {p.models[0]}."
        else:
            modifiers["attribute_unstated"] = f"the product title gives no model number ({q.models[0]} asked)"
            perspectives["model"] = f"the query asks for model {q.models[0]}; the product states no model number."
    else:
        perspectives["model"] = "the query names no model or part number."
    # Attributes
    notes = []
    for unit in dict.fromkeys(m.unit for m in q.measures):
        asked = [m for m in q.measures if m.unit == unit]
        offered = [m for m in p.measures if m.unit == unit]
        name = _UNIT_NAMES.get(unit, unit)
        if not offered:
            modifiers.setdefault("attribute_unstated", f"the product states no {name} ({_measure_text(asked)} asked)")
            notes.append(f"{name} {_measure_text(asked)} asked, not stated by the product")
        elif any(a.same(o) for a in asked for o in offered):
            notes.append(f"{name} {_measure_text(asked)} matches")
        else:
            modifiers.setdefault("size_mismatch",
                                 f"{name}: {_measure_text(asked)} asked, {_measure_text(offered)} offered")
            notes.append(f"{name} {_measure_text(asked)} asked, the product has {_measure_text(offered)}")
    for dims in q.dims:
        if all(value in p.numbers for value in dims):
            notes.append(f"size {'x'.join(f'{v:g}' for v in dims)} matches")
        elif p.dims or p.measures:
            modifiers.setdefault("size_mismatch", f"size {'x'.join(f'{v:g}' for v in dims)} asked, not offered")
            notes.append(f"size {'x'.join(f'{v:g}' for v in dims)} asked, the product is another size")
    for check, name, asked, offered in (("colour_mismatch", "colour", q.colours, p.colours),
                                        ("material_mismatch", "material", q.materials, p.materials)):
        if not asked:
            continue
        if set(asked) & set(offered) or any(a in p.text.lower() for a in asked):
            notes.append(f"{name} {', '.join(asked)} matches")
        elif offered:
            modifiers[check] = f"{', '.join(asked)} asked, the product is {', '.join(offered)}"
            notes.append(f"{name} {', '.join(asked)} asked, the product is {', '.join(offered)}")
        else:
            modifiers.setdefault("attribute_unstated", f"the product states no {name} ({', '.join(asked)} asked)")
            notes.append(f"{name} {', '.join(asked)} asked, not stated by the product")
    if q.quantity is not None:
        if p.quantity == q.quantity:
            notes.append(f"pack of {q.quantity} matches")
        elif p.quantity is not None:
            modifiers["quantity_mismatch"] = f"pack of {q.quantity} asked, the product is a pack of {p.quantity}"
            notes.append(f"pack of {q.quantity} asked, the product is a pack of {p.quantity}")
        else:
            notes.append(f"pack of {q.quantity} asked, the product states no pack size")
    perspectives["attributes"] = (
        "; ".join(notes) + "." if notes else "the query states no size, colour, material or quantity.")
    return Comparison(q, p, product_finding, product_reason, modifiers, perspectives)


def _fallback_label(scheme: LabelScheme) -> str:
    return scheme.labels[len(scheme.labels) // 2]


# ---------------------------------------------------------------------------------------------------------------------
# The teacher


class RulesTeacher:
    """Offline, deterministic teacher. ``fit(records)`` learns brand words from titles (optional: ``explain`` and
    friends also learn from the pairs they are given); ``brands`` adds known brands up front."""

    name = "rules"

    def __init__(self, brands: Iterable[str] = (), min_brand_titles: int = 2, min_first_share: float = 0.6):
        self.brands: set[str] = {b.lower() for b in brands}
        self.min_brand_titles = min_brand_titles
        self.min_first_share = min_first_share

    def fit(self, records: Iterable[Record]) -> "RulesTeacher":
        """Learn brand words: a title's first word that starts at least ``min_brand_titles`` titles and stands first
        in at least ``min_first_share`` of the titles that contain it (generic words appear anywhere)."""
        first, anywhere = Counter(), Counter()
        for record in records:
            if record.brand:
                self.brands.add(record.brand.lower().split()[0])
            words = [w.lower() for w in _WORD_RE.findall(record.title)]
            if words and record.title.strip()[:1].isalpha():
                first[words[0]] += 1
            anywhere.update(set(words))
        for word, count in first.items():
            if (count >= self.min_brand_titles and count / anywhere[word] >= self.min_first_share
                    and word not in STOPWORDS and len(word) > 1):
                self.brands.add(word)
        return self

    # -- verdicts ------------------------------------------------------------------------------------------------
    def judge(self, record: Record, rules: RuleSet) -> tuple[Comparison, list[Rule], str]:
        """The comparison, the rules it fires (product level first) and the implied grade."""
        comparison = compare(record, self.brands)
        exact_with_modifiers = comparison.product_finding == "exact" and comparison.modifiers
        checks = [] if exact_with_modifiers else [comparison.product_finding]
        checks += list(comparison.modifiers)
        fired = [rule for check in checks for rule in rules.by_check(check)]
        fired.sort(key=lambda rule: LEVELS.index(rule.level))
        scheme = rules.scheme
        label = max((rule.grade for rule in fired), key=scheme.index) if fired else _fallback_label(scheme)
        return comparison, fired, label

    def _analysis(self, comparison: Comparison, fired: list[Rule], label: str, scheme: LabelScheme,
                  cite: bool) -> str:
        lines = [f"{name.capitalize()}: {text}" for name, text in comparison.perspectives.items()]
        if cite:
            for rule in fired:
                lines.append(f"Rule [{rule.id}] ({rule.level}) applies: {rule.condition} -> {scheme.word(rule.grade)}.")
            if not fired:
                lines.append(f"No rule applies; the middle grade {scheme.word(label)} is the safest call.")
            elif len({rule.grade for rule in fired}) > 1:
                lines.append(f"The least relevant grade of the rules that apply wins: {scheme.word(label)}.")
        reasons = [comparison.product_reason] + list(comparison.modifiers.values())
        lines.append(f"Verdict: {'; '.join(reasons)}.")
        return "\n".join(lines)

    def _learn(self, records: Sequence[Record]) -> None:
        if records:
            self.fit(records)

    def explain(self, records: Sequence[Record], scheme: LabelScheme) -> list[Explanation]:
        self._learn(records)
        rules = default_rules(scheme)
        out = []
        for record in records:
            comparison, fired, label = self.judge(record, rules)
            out.append(Explanation(record.id, "ee", self._analysis(comparison, fired, label, scheme, cite=False),
                                   label, [rule.id for rule in fired], teacher=self.name))
        return out

    def apply_rules(self, records: Sequence[Record], rules: RuleSet) -> list[Explanation]:
        self._learn(records)
        out = []
        for record in records:
            comparison, fired, label = self.judge(record, rules)
            out.append(Explanation(record.id, "ra", self._analysis(comparison, fired, label, rules.scheme, cite=True),
                                   label, [rule.id for rule in fired], teacher=self.name))
        return out

    def reflect(self, records: Sequence[Record], wrong_labels: Sequence[str], scheme: LabelScheme) -> list[Explanation]:
        wrong = check_wrong_labels(records, wrong_labels, scheme)
        self._learn(records)
        rules = default_rules(scheme)
        out = []
        for row, (record, wrong_label) in enumerate(zip(records, wrong)):
            gold = human_label(record, scheme, row)
            comparison, fired, _ = self.judge(record, rules)
            over = scheme.index(wrong_label) < scheme.index(gold)
            supporting = [rule for rule in fired if rule.grade == gold]
            facts = [comparison.product_reason] + list(comparison.modifiers.values())
            lines = [f"The decision {scheme.word(wrong_label)} is wrong: it "
                     f"{'over' if over else 'under'}-estimates how relevant the product is."]
            lines.append(f"Facts: {'; '.join(facts)}.")
            if supporting:
                lines.append(f"Rule [{supporting[0].id}] applies: {supporting[0].condition}")
            definition = scheme.definitions[scheme.index(gold)]
            lines.append(f"{scheme.word(gold)} fits better: {definition}.")
            out.append(Explanation(record.id, "dr", "\n".join(lines), gold, [r.id for r in supporting],
                                   wrong_label=wrong_label, teacher=self.name))
        return out

    def confusable(self, records: Sequence[Record], scheme: LabelScheme) -> list[str]:
        """The fired rule grade nearest to the human label (the teacher's own verdict when it disagrees), else the
        neighbouring, more relevant grade."""
        self._learn(records)
        rules = default_rules(scheme)
        out = []
        for row, record in enumerate(records):
            gold = human_label(record, scheme, row)
            _, fired, verdict = self.judge(record, rules)
            if verdict != gold:
                out.append(verdict)
                continue
            others = [rule.grade for rule in fired if rule.grade != gold]
            if others:
                out.append(min(others, key=lambda g: (abs(scheme.index(g) - scheme.index(gold)), scheme.index(g))))
            else:
                out.append(adjacent_label(gold, scheme))
        return out
