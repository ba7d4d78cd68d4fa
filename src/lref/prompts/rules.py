"""Business rules: a YAML file of rules, each a condition in words that implies a grade of a label scheme.

Format::

    scheme: graded3            # the label scheme whose grades the rules use
    name: homedepot            # optional
    description: ...           # optional
    rules:
      - id: HD-ACCESSORY       # unique; cited by rule-adherence (RA) analyses
        level: product         # product: decides what the item is; modifier: an attribute lowers the grade
        condition: The result is an item used with the searched product (tool, accessory, part, cover or case).
        grade: Irrelevant      # a label of the scheme
        check: accessory       # optional: the finding that lets the offline rules teacher apply the rule

Errors name the file and the line (from yaml's node marks). Shipped sets live in ``lref/rulesets/*.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from lref.data.records import DataError
from lref.labels import LabelError, LabelScheme, get_scheme

LEVELS = ("product", "modifier")

CHECKS: dict[str, str] = {
    # product level: what the item is, relative to what the query asks for
    "exact": "same product type and every attribute the query states matches",
    "kit_contains": "the product is a kit or set that includes the searched item",
    "brand_match": "the query names only a brand and the product is made by that brand",
    "accessory": "the product is a part, accessory, cover, case or tool used with the searched item",
    "multi_product": "the query asks for several products and the product is one of them",
    "type_related": "the product type only partly matches the query (ambiguous or synonym)",
    "type_mismatch": "the product type is unrelated to the query",
    # modifier level: an attribute differs
    "brand_mismatch": "the query names a brand and the product is another brand",
    "model_mismatch": "the query names a model or part number the product does not carry",
    "size_mismatch": "a dimension, capacity, voltage or other measure differs",
    "colour_mismatch": "the colour or finish differs",
    "material_mismatch": "the material differs",
    "quantity_mismatch": "the pack size or count differs",
    "attribute_unstated": "the query states an attribute the product does not mention",
}
"""Findings the offline rules teacher can detect; a rule's optional `check` names one of them."""

_TOP_FIELDS = ("scheme", "name", "description", "rules")
_RULE_FIELDS = ("id", "level", "condition", "grade", "check")


class RuleFileError(DataError):
    """A rule file that cannot be used; the message names the file and the line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        super().__init__(message, path=path)
        self.line = line
        where = ", ".join(p for p in (f"file {path}" if path else "", f"line {line}" if line else "") if p)
        self.args = (f"{where}: {message}" if where else message,)

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class Rule:
    id: str
    level: str
    condition: str
    grade: str
    check: str | None = None
    line: int | None = None
    """Line of the rule in its file, for messages."""

    def describe(self, scheme: LabelScheme) -> str:
        """One line for prompts: ``[ID] (level) condition -> grade word``."""
        return f"[{self.id}] ({self.level}) {self.condition} -> {scheme.word(self.grade)}"


@dataclass(frozen=True)
class RuleSet:
    scheme: LabelScheme
    rules: tuple[Rule, ...]
    name: str = ""
    description: str = ""
    source: str | None = None

    def __post_init__(self) -> None:
        seen: dict[str, Rule] = {}
        for rule in self.rules:
            if rule.level not in LEVELS:
                raise RuleFileError(f"rule {rule.id!r}: level {rule.level!r} is not one of {', '.join(LEVELS)}",
                                    path=self.source, line=rule.line)
            try:
                self.scheme.index(rule.grade)
            except LabelError as error:
                raise RuleFileError(f"rule {rule.id!r}: {error}", path=self.source, line=rule.line) from None
            if rule.check is not None and rule.check not in CHECKS:
                raise RuleFileError(f"rule {rule.id!r}: unknown check {rule.check!r} (known: {', '.join(CHECKS)})",
                                    path=self.source, line=rule.line)
            if rule.id in seen:
                raise RuleFileError(f"duplicate rule id {rule.id!r} (first on line {seen[rule.id].line})",
                                    path=self.source, line=rule.line)
            seen[rule.id] = rule

    def by_check(self, check: str) -> list[Rule]:
        return [rule for rule in self.rules if rule.check == check]

    def get(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def describe(self) -> str:
        """The rules as prompt text, one per line, product-level first."""
        ordered = sorted(self.rules, key=lambda r: LEVELS.index(r.level))
        return "\n".join(rule.describe(self.scheme) for rule in ordered)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _scalar(node: yaml.Node, what: str, path: str | None) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.value == "" or node.tag == "tag:yaml.org,2002:null":
        raise RuleFileError(f"{what} must be a non-empty text", path=path, line=_line(node))
    return str(node.value).strip()


def _mapping(node: yaml.Node, what: str, allowed: tuple[str, ...], path: str | None) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        raise RuleFileError(f"{what} must be a mapping", path=path, line=_line(node))
    out: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if key not in allowed:
            raise RuleFileError(f"unknown field {key!r} in {what} (allowed: {', '.join(allowed)})",
                                path=path, line=_line(key_node))
        if key in out:
            raise RuleFileError(f"field {key!r} given twice in {what}", path=path, line=_line(key_node))
        out[key] = value_node
    return out


def parse_rules(text: str, path: str | None = None, scheme: LabelScheme | str | None = None) -> RuleSet:
    """Parse and validate rule-file text. `scheme` overrides (and must agree with) the file's `scheme` field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise RuleFileError(f"not valid YAML: {getattr(error, 'problem', error)}", path=path,
                            line=mark.line + 1 if mark else None) from None
    if root is None:
        raise RuleFileError("the rule file is empty", path=path)
    top = _mapping(root, "the rule file", _TOP_FIELDS, path)
    if "rules" not in top:
        raise RuleFileError("missing field 'rules'", path=path, line=_line(root))
    if "scheme" in top:
        name_node = top["scheme"]
        try:
            file_scheme = get_scheme(_scalar(name_node, "scheme", path))
        except LabelError as error:
            raise RuleFileError(str(error), path=path, line=_line(name_node)) from None
        if scheme is not None and get_scheme(scheme).name != file_scheme.name:
            raise RuleFileError(f"the rules are written for scheme {file_scheme.name!r}, "
                                f"not {get_scheme(scheme).name!r}",
                                path=path, line=_line(name_node))
    elif scheme is not None:
        file_scheme = get_scheme(scheme)
    else:
        raise RuleFileError("missing field 'scheme' (the label scheme whose grades the rules use)",
                            path=path, line=_line(root))
    rules_node = top["rules"]
    if not isinstance(rules_node, yaml.SequenceNode) or not rules_node.value:
        raise RuleFileError("'rules' must be a non-empty list", path=path, line=_line(rules_node))
    rules = []
    for position, rule_node in enumerate(rules_node.value, start=1):
        fields_ = _mapping(rule_node, f"rule {position}", _RULE_FIELDS, path)
        for required in ("id", "level", "condition", "grade"):
            if required not in fields_:
                raise RuleFileError(f"rule {position} has no {required!r}", path=path, line=_line(rule_node))
        values = {key: _scalar(node, f"rule {position} field {key!r}", path) for key, node in fields_.items()}
        grade_node = fields_["grade"]
        try:
            values["grade"] = file_scheme.parse(values["grade"])
        except LabelError as error:
            raise RuleFileError(f"rule {values['id']!r}: {error}", path=path, line=_line(grade_node)) from None
        if values["level"] not in LEVELS:
            raise RuleFileError(f"rule {values['id']!r}: level {values['level']!r} is not one of {', '.join(LEVELS)}",
                                path=path, line=_line(fields_["level"]))
        if "check" in values and values["check"] not in CHECKS:
            raise RuleFileError(f"rule {values['id']!r}: unknown check {values['check']!r} "
                                f"(known: {', '.join(CHECKS)})",
                                path=path, line=_line(fields_["check"]))
        rules.append(Rule(line=_line(rule_node), **values))
    return RuleSet(
        scheme=file_scheme,
        rules=tuple(rules),
        name=_scalar(top["name"], "name", path) if "name" in top else "",
        description=_scalar(top["description"], "description", path) if "description" in top else "",
        source=path,
    )


def shipped_rulesets() -> list[str]:
    """Names of the rule sets shipped in ``lref/rulesets``."""
    folder = resources.files("lref") / "rulesets"
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def load_rules(name_or_path: str | Path, scheme: LabelScheme | str | None = None) -> RuleSet:
    """Load a rule file by path, or a shipped rule set by name (``homedepot``, ``graded3``, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return parse_rules(path.read_text(encoding="utf-8"), str(path), scheme)
    name = str(name_or_path)
    if name in shipped_rulesets():
        shipped = resources.files("lref") / "rulesets" / f"{name}.yaml"
        return parse_rules(shipped.read_text(encoding="utf-8"), f"lref/rulesets/{name}.yaml", scheme)
    raise FileNotFoundError(f"rule file {name!r} not found (shipped rule sets: {', '.join(shipped_rulesets())})")


def default_rules(scheme: LabelScheme | str) -> RuleSet:
    """The shipped default rule set of a preset scheme."""
    return load_rules(get_scheme(scheme).name)


def load_rule_set(rules: str | Path | RuleSet | None, scheme: LabelScheme | str) -> RuleSet:
    """The RA rules: a RuleSet as given, a rule file or shipped set name (`load_rules`), or the scheme's default set
    (None)."""
    if isinstance(rules, RuleSet):
        return rules
    return default_rules(scheme) if rules is None else load_rules(rules, scheme)


def rules_reference(rules: RuleSet | None) -> str | None:
    """How a manifest names a rule set: its source file, else its name (None without rules)."""
    return None if rules is None else (rules.source or rules.name)
