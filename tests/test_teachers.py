"""The offline rules teacher (extraction, comparison, EE/RA/DR/confusable), rule files, and answer parsing."""

from __future__ import annotations

import pytest

from lref.data.records import DataError, Record
from lref.data.text import word_stem
from lref.labels import PRESETS, get_scheme
from lref.prompts.rules import CHECKS, shipped_rulesets
from lref.teachers import (
    Explanation,
    RuleFileError,
    RulesTeacher,
    Teacher,
    default_rules,
    extract_facts,
    extract_measures,
    load_rules,
    parse_label,
    parse_rules,
)
from lref.teachers.base import cited_rule_ids, strip_answer

G3 = get_scheme("graded3")
BRANDS = ["dewalt", "ryobi", "behr", "flexzilla", "kohler", "delta", "lg"]


# ---------------------------------------------------------------------------------------------------------------------
# Extraction

@pytest.mark.parametrize("text, value, unit", [
    ("50 ft. garden hose", 600.0, "in"),
    ("50 feet hose", 600.0, "in"),
    ("50' hose", 600.0, "in"),
    ("6ft h bamboo fencing", 72.0, "in"),
    ("50-ft hose", 600.0, "in"),
    ('12" shelf', 12.0, "in"),
    ("12 in. shelf", 12.0, "in"),
    ("12-inch shelf", 12.0, "in"),
    ("12 inches shelf", 12.0, "in"),
    ("3-1/2 in. hinge", 3.5, "in"),
    ("1 1/2 in. pipe", 1.5, "in"),
    ("1/2 in. pipe", 0.5, "in"),
    ("25.4 mm bolt", 1.0, "in"),
    ("1 yd. roll", 36.0, "in"),
    ("5 gal. bucket", 5.0, "gal"),
    ("1-gal. paint", 1.0, "gal"),
    ("2 qt. paint", 0.5, "gal"),
    ("40 lb. bag", 40.0, "lb"),
    ("40 lbs concrete", 40.0, "lb"),
    ("16 oz. hammer", 16.0, "oz"),
    ("18v drill", 18.0, "V"),
    ("20-Volt drill", 20.0, "V"),
    ("60W bulb", 60.0, "W"),
    ("60 watt bulb", 60.0, "W"),
    ("15 amp outlet", 15.0, "A"),
    ("15A breaker", 15.0, "A"),
    ("12-Gauge angle", 12.0, "gauge"),
    ("300 sq. ft. flooring", 300.0, "sq ft"),
    ("4.5 cu. ft. washer", 4.5, "cu ft"),
    ("5000 BTU air conditioner", 5000.0, "BTU"),
])
def test_measures_are_parsed_and_normalised(text, value, unit):
    measures = extract_measures(text)
    assert len(measures) == 1, measures
    assert measures[0].unit == unit
    assert measures[0].value == pytest.approx(value, rel=1e-3)


def test_feet_and_inches_compare_equal_and_2_in_1_is_no_size():
    assert extract_measures("50 ft.")[0].same(extract_measures("600 in.")[0])
    assert extract_measures("4 feet")[0].same(extract_measures("48\"")[0])
    assert not extract_measures("4 ft.")[0].same(extract_measures("4 in.")[0])
    assert extract_measures("2-in-1 screwdriver") == []
    assert extract_measures("inside corner") == []


@pytest.mark.parametrize("text, quantity", [
    ("3-1/2 in. Hinge (10-Pack)", 10), ("wood screws 6 pk", 6), ("coffee filters 50 count", 50),
    ("box of 100 nails", 100), ("3 pcs set", 3), ("cordless drill", None),
])
def test_quantity(text, quantity):
    assert extract_facts(text).quantity == quantity


@pytest.mark.parametrize("text, models", [
    ("DeWalt DW7480 table saw", ["DW7480"]),
    ("BEHR Premium 1-gal. #SC-141 Tugboat Coating", ["SC141"]),
    ("ryobi 18v cordless drill", []),
    ("2x4 lumber", []),
    ("Delta 1-Handle Faucet", []),
    ("Milwaukee M18 FUEL 2767-20 impact wrench", ["M18", "276720"]),
])
def test_model_numbers(text, models):
    assert extract_facts(text).models == models


def test_colours_materials_and_spelling():
    facts = extract_facts("Faucet in Brushed Nickel with Stainless Steel handle, grey hose")
    assert facts.colours == ["brushed nickel", "gray"]
    assert facts.materials == ["stainless steel"]


@pytest.mark.parametrize("text, head", [
    ("Flexzilla 50 ft. garden hose, green", "hose"),
    ("microwaves", "microwave"),
    ("Delta Vero 1-Handle Shower Only Faucet Trim Kit in Chrome (Valve Not Included)", "kit"),
    ("Replacement light kit for ceiling fan", "kit"),
    ("white paint", "paint"),
])
def test_head_noun(text, head):
    assert extract_facts(text, BRANDS, is_title=True).head == head


def test_stem():
    assert [word_stem(w) for w in ["boxes", "batteries", "glass", "tiles", "brushes", "pavers", "bus"]] == [
        "box", "battery", "glass", "tile", "brush", "paver", "bus"]


def test_accessory_relations_are_detected():
    facts = extract_facts("Replacement Light Kit for Ceiling Fan", is_title=True)
    assert facts.accessory_phrase == "replacement"
    assert facts.for_target == ["ceiling", "fan"]


def test_fit_learns_brands_from_title_starts_but_not_generic_words():
    titles = ["DeWalt 20V drill", "DeWalt circular saw", "Ryobi cordless drill", "Ryobi leaf blower",
              "Cordless drill by Makita", "Cordless hammer drill", "DeWalt cordless saw"]
    teacher = RulesTeacher().fit(Record(str(i), "q", t) for i, t in enumerate(titles))
    assert {"dewalt", "ryobi"} <= teacher.brands
    assert "cordless" not in teacher.brands  # first in 2 of the 4 titles holding it
    assert "makita" not in teacher.brands  # never first


# ---------------------------------------------------------------------------------------------------------------------
# Verdicts

@pytest.mark.parametrize("query, title, label, check", [
    ("cordless drill", "DeWalt 20V MAX cordless drill driver kit", "Exact", "kit_contains"),
    ("ryobi cordless drill", "DeWalt 20V MAX Cordless Drill", "Partial", "brand_mismatch"),
    ("dewalt cordless drill", "DeWalt 20V MAX Cordless Drill", "Exact", "exact"),
    ("ceiling fan", "Replacement Light Kit for Ceiling Fan", "Irrelevant", "accessory"),
    ("grill", "Grill Cover for 4-Burner Grill", "Irrelevant", "accessory"),
    ("drill", "DeWalt Drill Bit Set", "Irrelevant", "accessory"),
    ("garden hose 50 ft", "Flexzilla 50 ft. garden hose, green", "Exact", "exact"),
    ("garden hose 600 in", "Flexzilla 50 ft. garden hose, green", "Exact", "exact"),
    ("garden hose 100 ft", "Flexzilla 50 ft. garden hose, green", "Partial", "size_mismatch"),
    ("white toilet", "Kohler Toilet in Black", "Partial", "colour_mismatch"),
    ("washer and dryer", "LG 4.5 cu. ft. Front Load Washer in White", "Partial", "multi_product"),
    ("behr", "BEHR Premium Plus 1-gal. Interior Paint", "Exact", "brand_match"),
    ("lawn mower", "Kohler bathroom sink faucet", "Irrelevant", "type_mismatch"),
    ("hinges 10 pack", "3-1/2 in. Hinge (10-Pack)", "Exact", "exact"),
    ("hinges 4 pack", "3-1/2 in. Hinge (10-Pack)", "Partial", "quantity_mismatch"),
    ("brass hinge", "3-1/2 in. Steel Hinge", "Partial", "material_mismatch"),
    ("dewalt dw7480", "DeWalt DW745 Table Saw", "Partial", "model_mismatch"),
])
def test_rules_teacher_verdicts(query, title, label, check):
    teacher = RulesTeacher(brands=BRANDS)
    comparison, fired, verdict = teacher.judge(Record("1", query, title), default_rules(G3))
    assert check in comparison.checks
    assert verdict == label, comparison.perspectives


def test_record_brand_field_is_used():
    teacher = RulesTeacher()
    record = Record("1", "ryobi drill", "Cordless Drill 20V", brand="DeWalt")
    comparison = teacher.judge(record, default_rules(G3))[0]
    assert "brand_mismatch" not in comparison.checks  # ryobi is not known as a brand here
    teacher = RulesTeacher(brands=["ryobi"])
    comparison, _, verdict = teacher.judge(record, default_rules(G3))
    assert "dewalt" in comparison.modifiers["brand_mismatch"].lower() and verdict == "Partial"


def test_explain_is_multi_perspective_and_ends_in_label():
    teacher = RulesTeacher(brands=BRANDS)
    assert isinstance(teacher, Teacher)
    records = [Record("a", "ryobi cordless drill 18v", "DeWalt 20V MAX Cordless Drill", label="Partial")]
    (explanation,) = teacher.explain(records, G3)
    assert explanation.kind == "ee" and explanation.label == "Partial" and explanation.teacher == "rules"
    for perspective in ("Product type:", "Brand:", "Model:", "Attributes:", "Verdict:"):
        assert perspective in explanation.analysis
    assert "18v asked, the product has 20V" in explanation.analysis
    assert explanation.text(G3).endswith("\nRelevance: Partial")
    assert teacher.explain(records, G3) == [explanation]  # deterministic
    assert Explanation.from_dict(explanation.to_dict()) == explanation


@pytest.mark.parametrize("scheme_name", list(PRESETS))
def test_every_preset_has_a_default_rule_set_covering_the_checks(scheme_name):
    rules = default_rules(scheme_name)
    assert rules.scheme.name == scheme_name
    covered = {rule.check for rule in rules.rules}
    assert set(CHECKS) - covered <= {"attribute_unstated"}
    (explanation,) = RulesTeacher(brands=BRANDS).explain(
        [Record("1", "ceiling fan", "Replacement Light Kit for Ceiling Fan")], rules.scheme)
    assert explanation.label == rules.by_check("accessory")[0].grade


def test_apply_rules_cites_homedepot_rule_ids():
    rules = load_rules("homedepot")
    teacher = RulesTeacher(brands=BRANDS)
    records = [
        Record("1", "ryobi cordless drill", "DeWalt 20V MAX Cordless Drill"),
        Record("2", "ceiling fan", "Replacement Light Kit for Ceiling Fan"),
        Record("3", "cordless drill", "DeWalt 20V MAX cordless drill driver kit"),
    ]
    out = teacher.apply_rules(records, rules)
    assert [e.label for e in out] == ["Partial", "Irrelevant", "Exact"]
    assert [e.rule_ids for e in out] == [["HD-BRAND"], ["HD-ACCESSORY"], ["HD-KIT"]]
    assert "[HD-BRAND]" in out[0].analysis and "Brand is as important as functionality" in out[0].analysis
    assert all(e.kind == "ra" for e in out)


def test_reflect_explains_the_wrong_decision_and_ends_in_the_human_label():
    teacher = RulesTeacher(brands=BRANDS)
    records = [Record("1", "ceiling fan", "Replacement Light Kit for Ceiling Fan", label="Irrelevant"),
               Record("2", "garden hose 50 ft", "Flexzilla 50 ft. garden hose", label="Exact")]
    over, under = teacher.reflect(records, ["Exact", "Partial"], G3)
    assert over.kind == "dr" and over.label == "Irrelevant" and over.wrong_label == "Exact"
    assert "over-estimates" in over.analysis and over.rule_ids == ["G3-ACCESSORY"]
    assert under.label == "Exact" and "under-estimates" in under.analysis
    with pytest.raises(DataError, match="is its human label"):
        teacher.reflect(records[:1], ["Irrelevant"], G3)
    with pytest.raises(DataError, match="no human label"):
        teacher.reflect([Record("3", "q", "t")], ["Exact"], G3)
    with pytest.raises(ValueError, match="one wrong label per record"):
        teacher.reflect(records, ["Exact"], G3)


def test_confusable_names_another_label_of_the_scheme():
    teacher = RulesTeacher(brands=BRANDS)
    records = [
        Record("1", "ryobi cordless drill", "DeWalt 20V MAX Cordless Drill", label="Partial"),  # verdict agrees
        Record("2", "ceiling fan", "Replacement Light Kit for Ceiling Fan", label="Exact"),  # verdict disagrees
        Record("3", "garden hose", "Flexzilla garden hose", label="Exact"),
    ]
    assert teacher.confusable(records, G3) == ["Exact", "Irrelevant", "Partial"]
    lref5 = get_scheme("lref5")
    labels = teacher.confusable([Record("4", "grill", "Grill Cover for Grill", label="Trivial")], lref5)
    assert labels[0] in lref5.labels and labels[0] != "Trivial"


# ---------------------------------------------------------------------------------------------------------------------
# Rule files

GOOD = """scheme: graded3
rules:
  - id: R1
    level: product
    condition: accessories are irrelevant
    grade: Irrelevant
    check: accessory
"""


def test_shipped_rule_sets_load():
    assert {"homedepot", "graded3", "esci4", "lref5", "crowdflower4"} <= set(shipped_rulesets())
    rules = load_rules("homedepot")
    assert rules.get("HD-BRAND").grade == "Partial" and rules.get("HD-ACCESSORY").grade == "Irrelevant"
    assert rules.get("HD-KIT").grade == "Exact" and rules.get("HD-ONE-OF-MANY").grade == "Partial"
    assert rules.describe().splitlines()[0].startswith("[HD-PERFECT] (product)")


def test_rule_file_from_disk_and_scheme_override(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    rules = load_rules(path)
    assert rules.rules[0].line == 3 and rules.source == str(path)
    with pytest.raises(RuleFileError, match=r"line 1: the rules are written for scheme 'graded3', not 'esci4'"):
        load_rules(path, scheme="esci4")
    with pytest.raises(FileNotFoundError, match="shipped rule sets"):
        load_rules(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text, line, message", [
    (GOOD.replace("    check: accessory\n", "    chek: accessory\n"), 7, "unknown field 'chek'"),
    (GOOD.replace("grade: Irrelevant", "grade: Useless"), 6, "label 'Useless' is not in scheme 'graded3'"),
    (GOOD.replace("level: product", "level: item"), 4, "level 'item' is not one of product, modifier"),
    (GOOD.replace("check: accessory", "check: vibes"), 7, "unknown check 'vibes'"),
    (GOOD + "  - id: R1\n    level: modifier\n    condition: x\n    grade: Partial\n", 8, "duplicate rule id 'R1'"),
    (GOOD.replace("scheme: graded3", "scheme: graded9"), 1, "unknown label scheme 'graded9'"),
    (GOOD.replace("scheme: graded3", "schema: graded3"), 1, "unknown field 'schema'"),
    (GOOD.replace("    condition: accessories are irrelevant\n", ""), 3, "rule 1 has no 'condition'"),
    (GOOD.replace("rules:", "rules: [\n"), None, "not valid YAML"),
    ("scheme: graded3\nrules: []\n", 2, "'rules' must be a non-empty list"),
])
def test_rule_file_errors_name_the_line(tmp_path, text, line, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    if line is not None:
        assert caught.value.line == line and f"line {line}:" in str(caught.value)
    assert isinstance(caught.value, DataError)  # the CLI maps it to 'error: ...' exit 2


def test_rule_file_without_scheme_needs_one():
    with pytest.raises(RuleFileError, match="missing field 'scheme'"):
        parse_rules(GOOD.replace("scheme: graded3\n", ""))
    assert parse_rules(GOOD.replace("scheme: graded3\n", ""), scheme="graded3").scheme.name == "graded3"


# ---------------------------------------------------------------------------------------------------------------------
# Answer parsing (LLM teachers)

@pytest.mark.parametrize("text, label", [
    ("Product type matches.\nRelevance: Partial", "Partial"),
    ("relevance: **exact**", "Exact"),
    ("Grade: Irrelevant.", "Irrelevant"),
    ("Relevance: Exact at first sight, but the size differs.\nRelevance: Partial", "Partial"),
    ("blah\nPartial", "Partial"),
    ("I cannot tell.", None),
    ("Relevance: maybe", None),
    ("", None),
    (None, None),
])
def test_parse_label(text, label):
    assert parse_label(text, G3) == label


def test_parse_label_uses_scheme_words():
    crowdflower = get_scheme("crowdflower4")
    assert parse_label("Relevance: Good", crowdflower) == "3"
    assert parse_label("Relevance: 1", crowdflower) == "1"


def test_strip_answer_and_cited_rule_ids():
    assert strip_answer("line one\nline two\nRelevance: Exact\n") == "line one\nline two"
    rules = load_rules("homedepot")
    assert cited_rule_ids("By [HD-BRAND] and hd-kit, not [HD-NOPE].", rules) == ["HD-BRAND", "HD-KIT"]


# ------------------------------------------------------------------------------ the OpenAI client's API key


@pytest.mark.parametrize("url", ["http://example.com/v1", "http://10.0.0.5:8000/v1", "http://127.0.0.1.evil.com/v1",
                                 "http://localhost.example.com/v1", "http://[2001:db8::1]:8000/v1"])
def test_api_key_is_not_sent_over_plain_http_to_another_host(tmp_path, monkeypatch, url):
    import httpx

    from lref.teachers.base import TeacherError
    from lref.teachers.openai import INSECURE_KEY_ENV, OpenAIChatClient, OpenAITeacherConfig

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.delenv(INSECURE_KEY_ENV, raising=False)
    sent = []
    monkeypatch.setattr(httpx.Client, "send", lambda self, request, **kw: sent.append(request))
    config = OpenAITeacherConfig(base_url=url, model="m", cache_path=str(tmp_path / "c.sqlite"), progress=False)
    with pytest.raises(TeacherError, match="refusing to send \\$OPENAI_API_KEY to " + url.replace("[", "\\[")
                       .replace("]", "\\]").replace(".", "\\.") + "/chat/completions: plain http"):
        OpenAIChatClient(config)
    assert sent == [] and not (tmp_path / "c.sqlite").exists()


def sent_authorization(monkeypatch, config) -> str | None:
    """The Authorization header of the one request an OpenAIChatClient sends for one conversation."""
    import httpx

    from lref.teachers.openai import OpenAIChatClient

    seen = []

    def send(self, request, **kwargs):
        seen.append(request.headers.get("Authorization"))
        body = {"choices": [{"message": {"role": "assistant", "content": "Relevance: Exact"}}]}
        return httpx.Response(200, json=body, request=request)

    monkeypatch.setattr(httpx.Client, "send", send)
    client = OpenAIChatClient(config)
    try:
        assert client.complete([[{"role": "user", "content": "hi"}]]) == ["Relevance: Exact"]
    finally:
        client.close()
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("url", ["https://api.example.com/v1", "http://127.0.0.1:8000/v1", "http://127.8.9.10/v1",
                                 "http://localhost:8000/v1", "http://LOCALHOST/v1", "http://[::1]:8000/v1"])
def test_api_key_goes_over_https_and_to_loopback_hosts(monkeypatch, url):
    from lref.teachers.openai import INSECURE_KEY_ENV, OpenAITeacherConfig

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.delenv(INSECURE_KEY_ENV, raising=False)
    config = OpenAITeacherConfig(base_url=url, model="m", cache_path=None, progress=False)
    assert sent_authorization(monkeypatch, config) == "Bearer sk-secret"


def test_plain_http_key_is_sent_only_with_the_users_consent_and_no_key_needs_none(monkeypatch):
    from lref.teachers.openai import INSECURE_KEY_ENV, OpenAITeacherConfig

    def config(**overrides):
        return OpenAITeacherConfig(base_url="http://example.com/v1", model="m", cache_path=None, progress=False,
                                   **overrides)

    monkeypatch.delenv(INSECURE_KEY_ENV, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert sent_authorization(monkeypatch, config()) is None  # no key, nothing to leak
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    assert sent_authorization(monkeypatch, config(allow_insecure_key=True)) == "Bearer sk-secret"
    monkeypatch.setenv(INSECURE_KEY_ENV, "1")
    assert sent_authorization(monkeypatch, config()) == "Bearer sk-secret"
