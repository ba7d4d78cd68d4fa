"""`lref review`: human review of judged labels in Label Studio, and the corrections it gives back to training.

The round trip (docs/review.md)::

    lref review export --source review.jsonl --data pool.jsonl --out review/   # label_config.xml + tasks.json
    (Label Studio: a project with label_config.xml, import tasks.json, annotate, export JSON)
    lref review import export.json --out corrections.jsonl --source review/
    lref run config.yaml --corrections corrections.jsonl

Sources of pairs to review (`SOURCE_KINDS`; `ReviewExportConfig.kind`, detected when "auto")
    ``judge``: the review file of `lref judge --budget` (JSON lines with id, label, probs, confidence and the flags);
    the pair's text comes from the row, or from `ReviewExportConfig.data` (the judged pool) joined by id.
    ``flagged``: `flagged.jsonl` of `lref select` (records whose ``meta["ms_label"]`` is the Mislabeled Supervisor's
    label). ``disagreements``: the pairs of a prediction file (`ReviewExportConfig.pred`) whose label differs from the
    gold label of `ReviewExportConfig.gold`.

A task
    ``data`` holds ``id`` (the pair's lref id), ``query``, ``title``, ``description``, ``match`` (the match line of
    `lref.data.hints.match_hint`, as prompts show it), ``label`` (the label under review: the gold label, or the
    judge's when the pair has none), ``scheme`` and ``source``. ``predictions`` pre-annotate the model's label with
    its probability as the score, and its explanation (a ``explanation``, ``rationale`` or ``analysis`` field of the
    source row or record meta) in the TextArea ``explanation``. The reviewer picks one <Choice> of ``label``.

Import
    `import_review` reads Label Studio's JSON export (a list of tasks with their annotations). Per task the latest
    annotation that was not cancelled and picks a label counts (by updated_at, then created_at); tasks without one
    are skipped and counted. The corrections are merged into the output file by id (`merge_corrections`: the later
    annotation wins), so importing the same export twice gives the same file.

lref never imports Label Studio: `LabelStudioClient` talks to its HTTP API with httpx.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import quoteattr

from lref.data import default_scheme, load_records
from lref.data.corrections import (
    Correction,
    merge_corrections,
    parse_time,
    read_corrections,
    write_corrections,
)
from lref.data.hints import MATCH_HINT, match_hint
from lref.data.readers import read_jsonl_rows
from lref.data.records import DataError, Record
from lref.io import atomic_write, write_json
from lref.labels import PRESETS, LabelError, LabelScheme, get_scheme
from lref.net import is_loopback_host
from lref.predictions import read_predictions

SOURCE_KINDS = ("auto", "judge", "flagged", "disagreements")
LABEL_CONFIG_NAME = "label_config.xml"
TASKS_NAME = "tasks.json"
EXPORT_INFO_NAME = "review_export.json"
CHOICES_NAME = "label"
"""The `name` of the <Choices> control: the `from_name` of a label result in Label Studio's export."""
EXPLANATION_NAME = "explanation"
TARGET_NAME = "title"
EXPLANATION_KEYS = ("explanation", "rationale", "analysis")


@dataclass
class ReviewExportConfig:
    """What `export_review` writes a Label Studio project folder from."""

    out_dir: str = field(metadata={"help": "Folder for label_config.xml, tasks.json and review_export.json."})
    source: str | None = field(
        default=None,
        metadata={"help": "Pairs to review: the --budget file of `lref judge`, or flagged.jsonl of `lref select`."},
    )
    kind: str = field(
        default="auto",
        metadata={"help": "What the source is: judge, flagged, disagreements (with --pred and --gold), or auto."},
    )
    data: str | None = field(
        default=None,
        metadata={"help": "The judged pool, for the text of judge rows that carry none (joined by id)."},
    )
    pred: str | None = field(default=None, metadata={"help": "Predictions (lref predict) to compare with --gold."})
    gold: str | None = field(default=None, metadata={"help": "Gold-labelled pairs for --pred."})
    format: str = field(default="auto", metadata={"help": "Reader of --data and --gold (see lref data)."})
    scheme: str | None = field(
        default=None,
        metadata={"help": "Label scheme; default: the one the source's probabilities name, else the format's."},
    )

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(SOURCE_KINDS)}, not {self.kind!r}")
        if self.kind == "disagreements" or self.pred or self.gold:
            if not (self.pred and self.gold):
                raise ValueError("pred and gold: disagreements need both --pred and --gold")
            if self.kind not in ("auto", "disagreements"):
                raise ValueError(f"kind {self.kind} takes --source, not --pred/--gold")
        elif not self.source:
            raise ValueError("source: give --source (or --pred and --gold)")


@dataclass
class ReviewItem:
    """One pair to review: its record (text and the label under review) and what a model said about it."""

    record: Record
    predicted: str | None = None
    score: float | None = None
    explanation: str | None = None
    model: str = ""


@dataclass
class ReviewExport:
    out_dir: Path
    kind: str
    scheme: str
    tasks: int


@dataclass
class ReviewImport:
    out: Path
    imported: int
    """Corrections read from this export."""
    changed: int
    """Of them, those whose new label differs from the label under review."""
    skipped: list[str]
    """Label Studio task ids with no usable annotation."""
    total: int
    """Rows of the corrections file after the merge."""


# ------------------------------------------------------------------------------------------------ the project
def label_config(scheme: LabelScheme | str) -> str:
    """Label Studio's labeling config: the pair's text, its match line and the label under review, one <Choice>
    per label of `scheme` (most relevant first, its definition as the hint) and a TextArea for the explanation."""
    scheme = get_scheme(scheme)
    hints = [f"{word}: {definition}" if word != label else definition
             for label, word, definition in zip(scheme.labels, scheme.words, scheme.definitions)]
    choices = "\n".join(f"    <Choice value={quoteattr(label)} hint={quoteattr(hint)}/>"
                         for label, hint in zip(scheme.labels, hints))
    return f"""<View>
  <Header value="Query"/>
  <Text name="query" value="$query"/>
  <Header value="Product"/>
  <Text name="{TARGET_NAME}" value="$title"/>
  <Text name="description" value="$description"/>
  <Header value="Query words in the product text"/>
  <Text name="match" value="$match"/>
  <Header value="Label under review"/>
  <Text name="current" value="$label"/>
  <Header value={quoteattr(f"Relevance ({scheme.name})")}/>
  <Choices name="{CHOICES_NAME}" toName="{TARGET_NAME}" choice="single-radio" showInLine="true" required="true">
{choices}
  </Choices>
  <Header value="Explanation"/>
  <TextArea name="{EXPLANATION_NAME}" toName="{TARGET_NAME}" rows="4" editable="true" maxSubmissions="1"/>
</View>
"""


def task(item: ReviewItem, scheme: LabelScheme, kind: str) -> dict[str, Any]:
    """One Label Studio task of `item` (module docs)."""
    record = item.record
    data = {"id": record.id, "query": record.query, "title": record.title, "description": record.description or "",
            "match": record.meta.get(MATCH_HINT) or match_hint(record),
            "label": record.label or item.predicted or "", "scheme": scheme.name, "source": kind}
    out: dict[str, Any] = {"data": data}
    if item.predicted:
        result = [{"from_name": CHOICES_NAME, "to_name": TARGET_NAME, "type": "choices",
                   "value": {"choices": [item.predicted]}}]
        if item.explanation:
            result.append({"from_name": EXPLANATION_NAME, "to_name": TARGET_NAME, "type": "textarea",
                           "value": {"text": [item.explanation]}})
        prediction: dict[str, Any] = {"model_version": item.model or kind, "result": result}
        if item.score is not None:
            prediction["score"] = round(float(item.score), 6)
        out["predictions"] = [prediction]
    return out


# ---------------------------------------------------------------------------------------------------- sources
def explanation_of(values: dict[str, Any]) -> str | None:
    for key in EXPLANATION_KEYS:
        if isinstance(values.get(key), str) and values[key].strip():
            return values[key].strip()
    return None


def scheme_of_labels(labels: Sequence[str]) -> LabelScheme | None:
    """The preset whose labels are exactly `labels` (in any order), if one is."""
    wanted = set(labels)
    return next((scheme for scheme in PRESETS.values() if set(scheme.labels) == wanted), None)


def read_rows(path: str) -> list[tuple[int, dict[str, Any]]]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return read_jsonl_rows(path)


def detect_kind(path: str) -> str:
    """judge or flagged, from the first row of `path`."""
    rows = read_rows(path)
    if not rows:
        raise DataError("no pairs to review", path=path)
    first = rows[0][1]
    if "confidence" in first and "probs" in first:
        return "judge"
    if isinstance(first.get("meta"), dict) and "ms_label" in first["meta"]:
        return "flagged"
    raise DataError("cannot tell what this file is: neither an `lref judge` review file (id, label, probs, "
                    "confidence) nor flagged.jsonl of `lref select` (meta.ms_label); give --kind", path=path, row=1)


def judge_items(path: str, pool: str | None, fmt: str, scheme: LabelScheme | None) -> tuple[list[ReviewItem],
                                                                                           LabelScheme]:
    rows = read_rows(path)
    if scheme is None:
        first_probs = next((item.get("probs") for _, item in rows if isinstance(item.get("probs"), dict)), None)
        scheme = scheme_of_labels(list(first_probs or {})) or default_scheme(fmt)
    by_id: dict[str, Record] = {}
    if pool:
        by_id = {record.id: record for record in load_records(pool, fmt, scheme=scheme)}
    items = []
    for row, item in rows:
        for key in ("id", "label"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise DataError("missing or empty field", path=path, row=row, column=key)
        try:
            predicted = scheme.parse(item["label"])
        except LabelError as error:
            raise DataError(str(error), path=path, row=row, column="label") from None
        if item["id"] in by_id:
            record = by_id[item["id"]]
        elif isinstance(item.get("query"), str) and isinstance(item.get("title"), str):
            record = Record(id=item["id"], query=item["query"], title=item["title"], brand=item.get("brand"),
                            description=item.get("description"))
        else:
            where = f"the pool {pool}" if pool else "the row (give --data POOL, the judged pool)"
            raise DataError(f"id {item['id']!r} has no query and title in {where}", path=path, row=row, column="id")
        score = item.get("confidence")
        items.append(ReviewItem(record, predicted, score if isinstance(score, (int, float)) else None,
                                explanation_of(item) or explanation_of(record.meta), "judge"))
    return items, scheme


def flagged_items(path: str, scheme: LabelScheme | None) -> tuple[list[ReviewItem], LabelScheme]:
    scheme = scheme or default_scheme("jsonl")
    items = []
    for row, record in enumerate(load_records(path, "jsonl", scheme=scheme), start=1):
        ms_label = record.meta.get("ms_label")
        if ms_label is None:
            raise DataError("no meta.ms_label (the Mislabeled Supervisor's label)", path=path, row=row,
                            column="meta")
        try:
            ms_label = scheme.parse(ms_label)
        except LabelError as error:
            raise DataError(str(error), path=path, row=row, column="meta.ms_label") from None
        score = record.meta.get("ms_prob")
        items.append(ReviewItem(record, ms_label, score if isinstance(score, (int, float)) else None,
                                explanation_of(record.meta), f"ms:{record.meta.get('flagged_by', 'select')}"))
    return items, scheme


def disagreement_items(pred: str, gold: str, fmt: str, scheme: LabelScheme | None) -> tuple[list[ReviewItem],
                                                                                            LabelScheme]:
    predictions = read_predictions(pred)
    if scheme is None:
        scheme = scheme_of_labels(list(next((p.probs for p in predictions if p.probs), {}))) or default_scheme(fmt)
    predictions = read_predictions(pred, scheme)
    records = {record.id: record for record in load_records(gold, fmt, scheme=scheme)}
    missing = [p.id for p in predictions if p.id not in records]
    if missing:
        raise DataError(f"{len(missing)} predicted ids are not in the gold file {gold} (e.g. "
                        f"{', '.join(repr(i) for i in missing[:5])})", path=pred)
    items = []
    for prediction in predictions:
        record = records[prediction.id]
        if record.label is None:
            raise DataError(f"pair {record.id!r} has no gold label", path=gold)
        if prediction.label != record.label:
            items.append(ReviewItem(record, prediction.label, prediction.probs.get(prediction.label),
                                    explanation_of(record.meta), Path(pred).stem))
    return items, scheme


def export_review(config: ReviewExportConfig) -> ReviewExport:
    """Write `label_config.xml`, `tasks.json` and `review_export.json` (what was exported) to `config.out_dir`."""
    scheme = get_scheme(config.scheme) if config.scheme else None
    kind = config.kind
    if config.pred:
        kind = "disagreements"
        items, scheme = disagreement_items(config.pred, config.gold, config.format, scheme)
    else:
        kind = detect_kind(config.source) if kind == "auto" else kind
        if kind == "judge":
            items, scheme = judge_items(config.source, config.data, config.format, scheme)
        else:
            items, scheme = flagged_items(config.source, scheme)
    ids = [item.record.id for item in items]
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise DataError(f"ids occur more than once: {', '.join(repr(i) for i in repeated[:5])}",
                        path=config.source or config.pred)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / LABEL_CONFIG_NAME) as handle:
        handle.write(label_config(scheme))
    write_json(out / TASKS_NAME, [task(item, scheme, kind) for item in items])
    write_json(out / EXPORT_INFO_NAME, {
        "kind": kind, "scheme": scheme.name, "tasks": len(items), "ids": ids,
        "source": config.source, "data": config.data, "pred": config.pred, "gold": config.gold,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return ReviewExport(out, kind, scheme.name, len(items))


# ----------------------------------------------------------------------------------------------------- import
def annotator_of(annotation: dict[str, Any]) -> str:
    """Who made an annotation: the email when the export carries it, else `user:<id>`."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("username") or f"user:{who.get('id')}")
    username = annotation.get("created_username")
    if isinstance(username, str) and username.strip(" ,"):
        return username.split(",")[0].strip()
    return f"user:{who}" if who is not None else ""


def chosen_label(annotation: dict[str, Any]) -> str | None:
    for result in annotation.get("result") or []:
        if result.get("from_name") == CHOICES_NAME and result.get("type") == "choices":
            choices = (result.get("value") or {}).get("choices") or []
            if choices:
                return choices[0]
    return None


def annotation_time(annotation: dict[str, Any]) -> datetime | None:
    """When an annotation was last changed, in UTC (None when the export has no time)."""
    stamp = annotation.get("updated_at") or annotation.get("created_at")
    return parse_time(stamp).astimezone(timezone.utc) if isinstance(stamp, str) and stamp else None


def corrections_from_export(export: Any, path: str, scheme: LabelScheme | None = None,
                            expected_ids: set[str] | None = None) -> tuple[list[Correction], list[str]]:
    """The corrections of a Label Studio JSON export, and the ids of the tasks skipped for want of an annotation."""
    if not isinstance(export, list):
        raise DataError("expected Label Studio's JSON export (a list of tasks); JSON_MIN and CSV exports lack the "
                        "annotations' authors and times", path=path)
    corrections, skipped = [], []
    for position, item in enumerate(export, start=1):
        name = f"task {item.get('id', f'#{position}')}" if isinstance(item, dict) else f"task #{position}"
        if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
            raise DataError(f"{name}: not a task with `data`; export the project as JSON", path=path)
        pair_id = item["data"].get("id")
        if not isinstance(pair_id, (str, int)) or pair_id == "":
            raise DataError(f"{name}: no lref pair id in data.id; was it imported from `lref review export`?",
                            path=path)
        pair_id = str(pair_id)
        if expected_ids is not None and pair_id not in expected_ids:
            raise DataError(f"{name}: pair id {pair_id!r} is not among the exported tasks", path=path)
        try:
            task_scheme = scheme or get_scheme(item["data"].get("scheme") or "")
        except LabelError:
            raise DataError(f"{name}: data.scheme {item['data'].get('scheme')!r} is not a label scheme; give "
                            "--scheme", path=path) from None
        done = [a for a in item.get("annotations") or []
                if isinstance(a, dict) and not a.get("was_cancelled") and chosen_label(a) is not None]
        if not done:
            skipped.append(str(item.get("id", f"#{position}")))
            continue
        earliest = datetime.min.replace(tzinfo=timezone.utc)
        latest = max(done, key=lambda a: (annotation_time(a) or earliest, a.get("id") or 0))
        choice = chosen_label(latest)
        try:
            new_label = task_scheme.parse(choice)
        except LabelError:
            raise DataError(f"{name} (pair {pair_id!r}): the choice {choice!r} is not a label of "
                            f"{task_scheme.name} ({', '.join(task_scheme.labels)})", path=path) from None
        old = item["data"].get("label") or None
        moment = annotation_time(latest)
        corrections.append(Correction(id=pair_id, new_label=new_label, old_label=old, annotator=annotator_of(latest),
                                      time=moment.isoformat() if moment else ""))
    return merge_corrections([], corrections), skipped


def import_review(export_path: str | os.PathLike, out: str | os.PathLike, *, source: str | None = None,
                  scheme: str | None = None) -> ReviewImport:
    """Read a Label Studio JSON export and merge its corrections into `out` (module docs); `source`: the folder
    `export_review` wrote, whose ids and scheme the export must match."""
    export_path = str(export_path)
    if not Path(export_path).is_file():
        raise FileNotFoundError(f"no such Label Studio export: {export_path}")
    try:
        export = json.loads(Path(export_path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"not a JSON file: {error}", path=export_path) from None
    expected = None
    label_scheme = get_scheme(scheme) if scheme else None
    if source:
        info_path = Path(source) / EXPORT_INFO_NAME
        if not info_path.is_file():
            raise FileNotFoundError(f"{source} is not a folder written by `lref review export` (no {EXPORT_INFO_NAME})")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        expected = set(info["ids"])
        label_scheme = label_scheme or get_scheme(info["scheme"])
    corrections, skipped = corrections_from_export(export, export_path, label_scheme, expected)
    earlier = read_corrections(out) if Path(out).is_file() else []
    merged = merge_corrections(earlier, corrections)
    write_corrections(out, merged)
    return ReviewImport(Path(out), len(corrections), sum(c.new_label != c.old_label for c in corrections), skipped,
                        len(merged))


# ------------------------------------------------------------------------------------------------ HTTP client
class LabelStudioClient:
    """The few calls of Label Studio's HTTP API the review loop needs. `token`: a legacy API token (sent as
    `Token ...`) or a personal access token (a JWT refresh token, exchanged at /api/token/refresh/ for an access
    token sent as `Bearer ...`)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0):
        import httpx

        self.url = url.rstrip("/")
        parsed = urlsplit(self.url)
        if parsed.scheme != "https" and not is_loopback_host(parsed.hostname or ""):
            raise ValueError(f"{url}: the API token would cross the network unencrypted; use https, or a server on "
                             "this machine (127.0.0.1)")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)
        if token.count(".") == 2:  # a JWT: a personal access token
            response = self.http.post("/api/token/refresh/", json={"refresh": token})
            self.check(response, "exchanging the personal access token")
            self.http.headers["Authorization"] = f"Bearer {response.json()['access']}"
        else:
            self.http.headers["Authorization"] = f"Token {token}"

    @staticmethod
    def check(response: Any, what: str) -> None:
        if response.status_code >= 400:
            raise RuntimeError(f"Label Studio: {what} failed ({response.status_code}): {response.text[:500]}")

    def create_project(self, title: str, config: str) -> int:
        response = self.http.post("/api/projects", json={"title": title, "label_config": config})
        self.check(response, "creating the project")
        return int(response.json()["id"])

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> int:
        response = self.http.post(f"/api/projects/{project}/import", json=tasks)
        self.check(response, "importing tasks")
        return int(response.json()["task_count"])

    def tasks(self, project: int) -> list[dict[str, Any]]:
        response = self.http.get("/api/tasks", params={"project": project, "page_size": 100_000})
        self.check(response, "listing tasks")
        body = response.json()
        return body["tasks"] if isinstance(body, dict) else body

    def annotate(self, task_id: int, label: str) -> dict[str, Any]:
        result = [{"from_name": CHOICES_NAME, "to_name": TARGET_NAME, "type": "choices",
                   "value": {"choices": [label]}}]
        response = self.http.post(f"/api/tasks/{task_id}/annotations", json={"result": result})
        self.check(response, f"annotating task {task_id}")
        return response.json()

    def export(self, project: int) -> list[dict[str, Any]]:
        response = self.http.get(f"/api/projects/{project}/export", params={"exportType": "JSON"})
        self.check(response, "exporting the project")
        return response.json()

    def push(self, folder: str | os.PathLike, title: str = "lref review") -> int:
        """Create a project from a folder of `export_review` and import its tasks; returns the project id."""
        folder = Path(folder)
        project = self.create_project(title, (folder / LABEL_CONFIG_NAME).read_text(encoding="utf-8"))
        self.import_tasks(project, json.loads((folder / TASKS_NAME).read_text(encoding="utf-8")))
        return project

    def close(self) -> None:
        self.http.close()


__all__ = ["CHOICES_NAME", "EXPORT_INFO_NAME", "LABEL_CONFIG_NAME", "SOURCE_KINDS", "TASKS_NAME",
           "LabelStudioClient", "ReviewExport", "ReviewExportConfig", "ReviewImport", "ReviewItem",
           "corrections_from_export", "export_review", "import_review", "label_config", "task"]
