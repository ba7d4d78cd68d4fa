"""`lref review`: the Label Studio project folder, reading Label Studio's export back as corrections, and the whole
round trip through a real Label Studio server (from .review-venv, built by `make review-server`)."""

import json
import os
import re
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
from helpers import other_label, run_lref, write_train_eval

from lref.data import Record, write_records
from lref.data.hints import match_hint
from lref.data.records import DataError
from lref.labels import get_scheme
from lref.pipeline import load_data, parse_config
from lref.review import LabelStudioClient, corrections_from_export, import_review, label_config

ROOT = Path(__file__).resolve().parents[1]
REVIEW_VENV = ROOT / ".review-venv"
TEMPLATE = REVIEW_VENV / "lref-template" / "label_studio.sqlite3"



@pytest.fixture
def pool(tmp_path):
    return write_train_eval(tmp_path, 60, 1, 45)


def write_flagged(path: Path, records: list[Record]) -> Path:
    flagged = [Record(**{**r.__dict__, "meta": {**r.meta, "ms_label": other_label(r.label), "flagged_by": "cleanlab",
                                                "rationale": f"why {r.id}"}}) for r in records]
    write_records(path, flagged)
    return path


def test_label_config_offers_every_label_and_reads_every_task_field(tmp_path, pool, monkeypatch, capsys):
    code, out, err = run_lref(monkeypatch, capsys, "review", "export", "--source",
                              str(write_flagged(tmp_path / "flagged.jsonl", pool[:3])), "--out", str(tmp_path / "p"))
    assert code == 0, err
    assert "3 flagged pairs to review (graded3)" in out
    root = ET.fromstring((tmp_path / "p" / "label_config.xml").read_text())
    assert [c.get("value") for c in root.iter("Choice")] == ["Exact", "Partial", "Irrelevant"]
    variables = set(re.findall(r"\$(\w+)", (tmp_path / "p" / "label_config.xml").read_text()))
    tasks = json.loads((tmp_path / "p" / "tasks.json").read_text())
    assert variables == {"query", "title", "description", "match", "label"}
    first = tasks[0]
    assert variables <= set(first["data"])
    assert first["data"]["id"] == pool[0].id and first["data"]["label"] == pool[0].label
    assert first["data"]["match"] == match_hint(pool[0])
    choice = {"choices": [other_label(pool[0].label)]}
    assert first["predictions"][0]["result"] == [
        {"from_name": "label", "to_name": "title", "type": "choices", "value": choice},
        {"from_name": "explanation", "to_name": "title", "type": "textarea", "value": {"text": [f"why {pool[0].id}"]}}]
    crowdflower = ET.fromstring(label_config("crowdflower4"))
    assert [c.get("hint").split(":")[0] for c in crowdflower.iter("Choice")] == ["Excellent", "Good", "Fair", "Poor"]


def test_judge_review_file_joins_the_pool_for_its_text(tmp_path, pool, monkeypatch, capsys):
    from lref.judge import select_for_review

    judged = [{"id": pool[2].id, "label": "Exact", "confidence": 0.6, "probs": {"Exact": 0.6, "Partial": 0.3,
                                                                                "Irrelevant": 0.1},
               "low_confidence": False, "disagreement": False},
              {"id": pool[4].id, "label": "Partial", "confidence": 0.41,
               "probs": {"Exact": 0.3, "Partial": 0.41, "Irrelevant": 0.29}, "low_confidence": True,
               "disagreement": False, "explanation": "only the brand matches"}]
    rows = select_for_review(judged, [pool[2], pool[4]], 2)  # what `lref judge --budget` writes
    source = tmp_path / "review.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, out, err = run_lref(monkeypatch, capsys, "review", "export", "--source", str(source), "--out",
                              str(tmp_path / "p"))
    assert code == 0, err
    tasks = json.loads((tmp_path / "p" / "tasks.json").read_text())
    assert [t["data"]["id"] for t in tasks] == [pool[4].id, pool[2].id]  # review order: least confident first
    assert tasks[0]["data"]["title"] == pool[4].title and tasks[0]["data"]["label"] == "Partial"
    assert tasks[0]["predictions"][0]["score"] == 0.41 and tasks[0]["predictions"][0]["model_version"] == "judge"
    assert tasks[0]["predictions"][0]["result"][1]["value"]["text"] == ["only the brand matches"]
    assert len(tasks[1]["predictions"][0]["result"]) == 1  # no explanation, no TextArea result
    bare = [{key: value for key, value in row.items() if key not in ("query", "title")} for row in rows]
    source.write_text("".join(json.dumps(row) + "\n" for row in bare))
    code, out, err = run_lref(monkeypatch, capsys, "review", "export", "--source", str(source), "--out",
                              str(tmp_path / "p"))
    assert code == 2 and f"id {pool[4].id!r} has no query and title" in err and "--data" in err
    code, out, err = run_lref(monkeypatch, capsys, "review", "export", "--source", str(source), "--data",
                              str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "p"))
    assert code == 0, err
    tasks = json.loads((tmp_path / "p" / "tasks.json").read_text())
    assert tasks[0]["data"]["title"] == pool[4].title and tasks[0]["data"]["label"] == pool[4].label  # gold


def test_disagreements_export_only_the_pairs_the_prediction_gets_wrong(tmp_path, pool, monkeypatch, capsys):
    picks = pool[:4]
    predicted = [r.label if i % 2 else other_label(r.label) for i, r in enumerate(picks)]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": r.id, "label": label, "probs": {"Exact": 0.5, "Partial": 0.25,
                                                                            "Irrelevant": 0.25}}) + "\n"
                            for r, label in zip(picks, predicted)))
    code, out, err = run_lref(monkeypatch, capsys, "review", "export", "--pred", str(pred), "--gold",
                              str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "p"))
    assert code == 0, err
    tasks = json.loads((tmp_path / "p" / "tasks.json").read_text())
    assert [t["data"]["id"] for t in tasks] == [picks[0].id, picks[2].id]
    assert tasks[0]["data"]["source"] == "disagreements" and tasks[0]["data"]["label"] == picks[0].label


def ls_task(task_id, pair_id, *annotations, label="Exact"):
    return {"id": task_id, "data": {"id": pair_id, "query": "q", "title": "t", "label": label, "scheme": "graded3"},
            "annotations": list(annotations)}


def annotation(choice, updated, who=1, cancelled=False, number=1):
    return {"id": number, "completed_by": who, "was_cancelled": cancelled, "created_at": updated,
            "updated_at": updated, "result": [{"from_name": "label", "to_name": "title", "type": "choices",
                                               "value": {"choices": [choice]}}]}


def test_import_takes_the_latest_annotation_and_is_idempotent(tmp_path):
    export = [ls_task(7, "b", annotation("Partial", "2026-01-02T10:00:00Z", number=1),
                      annotation("Irrelevant", "2026-01-02T11:00:00Z", who={"id": 2, "email": "b@x.org"}, number=2),
                      annotation("Exact", "2026-01-02T12:00:00Z", cancelled=True, number=3),
                      annotation("Exact", "2026-01-02T11:30:00+01:00", number=4)),  # 10:30 UTC: earlier
              ls_task(8, "a", annotation("Exact", "2026-01-01T09:00:00.5Z")),
              ls_task(9, "c")]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    out = tmp_path / "corrections.jsonl"
    result = import_review(path, out)
    assert (result.imported, result.changed, result.skipped, result.total) == (2, 1, ["9"], 2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"id": "a", "old_label": "Exact", "new_label": "Exact", "annotator": "user:1",
         "time": "2026-01-01T09:00:00.500000+00:00"},
        {"id": "b", "old_label": "Exact", "new_label": "Irrelevant", "annotator": "b@x.org",
         "time": "2026-01-02T11:00:00+00:00"}]
    first = out.read_bytes()
    import_review(path, out)
    assert out.read_bytes() == first
    # a later review of b in another export replaces it; a's row stays
    path.write_text(json.dumps([ls_task(3, "b", annotation("Partial", "2026-01-03T08:00:00Z"))]))
    import_review(path, out)
    assert [json.loads(line)["new_label"] for line in out.read_text().splitlines()] == ["Exact", "Partial"]


@pytest.mark.parametrize("export, message", [
    ([ls_task(5, "a", annotation("Great", "2026-01-01T00:00:00Z"))],
     r"task 5 \(pair 'a'\): the choice 'Great' is not a label of graded3"),
    ([{"id": 6, "data": {"query": "q"}, "annotations": []}], r"task 6: no lref pair id in data\.id"),
    ({"tasks": []}, r"expected Label Studio's JSON export \(a list of tasks\)"),
])
def test_import_errors_name_the_task(tmp_path, export, message):
    with pytest.raises(DataError, match=message):
        corrections_from_export(export, "export.json")


def test_the_client_keeps_tokens_off_plain_http_to_other_hosts():
    with pytest.raises(ValueError, match="unencrypted"):
        LabelStudioClient("http://label-studio.example.com:8080", "token")


def test_import_checks_ids_against_the_exported_folder(tmp_path, pool, monkeypatch, capsys):
    run_lref(monkeypatch, capsys, "review", "export", "--source",
             str(write_flagged(tmp_path / "flagged.jsonl", pool[:2])), "--out", str(tmp_path / "p"))
    path = tmp_path / "export.json"
    path.write_text(json.dumps([ls_task(1, "stranger", annotation("Exact", "2026-01-01T00:00:00Z"))]))
    code, out, err = run_lref(monkeypatch, capsys, "review", "import", str(path), "--out", str(tmp_path / "c.jsonl"),
                              "--source", str(tmp_path / "p"))
    assert code == 2 and "task 1: pair id 'stranger' is not among the exported tasks" in err
    assert not (tmp_path / "c.jsonl").exists()


# --------------------------------------------------------------------------------------- real Label Studio
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def label_studio(tmp_path):
    """A Label Studio server on loopback with a fresh data dir (copied from the migrated template of `make
    review-server` when there is one), one user and a legacy API token; yields (url, token)."""
    binary = REVIEW_VENV / "bin" / "label-studio"
    if not binary.exists():
        message = f"{binary} is missing: `make review-server` installs Label Studio (make test does)"
        if os.environ.get("CI"):  # CI runs `make test`, which builds it: missing there is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    data_dir = tmp_path / "label-studio"
    data_dir.mkdir()
    if TEMPLATE.exists():
        shutil.copy(TEMPLATE, data_dir / TEMPLATE.name)
    port, token = free_port(), "lref-test-token-0123456789"
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LABEL_STUDIO_USERNAME": "review@lref.test",
           "LABEL_STUDIO_PASSWORD": "lref-review-password", "LABEL_STUDIO_USER_TOKEN": token,
           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LATEST_VERSION_CHECK": "false",
           "COLLECT_ANALYTICS": "false"}
    url, log = f"http://127.0.0.1:{port}", tmp_path / "label-studio.log"
    started = time.perf_counter()
    with log.open("wb") as output:  # a file, not a pipe: a full pipe would stall the server
        process = subprocess.Popen([str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port",
                                    str(port)], env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = started + (120 if TEMPLATE.exists() else 600)  # a fresh database migrates first
        while True:
            assert process.poll() is None, f"Label Studio exited: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.perf_counter() < deadline, f"Label Studio did not come up: {log.read_text()[-3000:]}"
            time.sleep(0.25)
        yield url, token
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_round_trip_through_label_studio_reaches_the_training_data(tmp_path, pool, label_studio, monkeypatch,
                                                                   capsys):
    url, token = label_studio
    flagged = write_flagged(tmp_path / "flagged.jsonl", pool[3:6])
    code, out, err = run_lref(monkeypatch, capsys, "review", "export", "--source", str(flagged), "--out",
                              str(tmp_path / "project"))
    assert code == 0, err
    target = pool[4]
    new_label = "Partial" if target.label != "Partial" else "Exact"
    client = LabelStudioClient(url, token)
    try:
        project = client.push(tmp_path / "project", title="lref review test")
        tasks = client.tasks(project)
        assert sorted(t["data"]["id"] for t in tasks) == sorted(r.id for r in pool[3:6])
        assert all(t["total_predictions"] == 1 for t in tasks)
        client.annotate(next(t["id"] for t in tasks if t["data"]["id"] == target.id), new_label)
        export = client.export(project)
        personal = client.http.post("/api/token/")  # a personal access token (a JWT) works as well
        assert personal.status_code < 300, personal.text
        second = LabelStudioClient(url, personal.json()["token"])
        assert second.http.headers["Authorization"].startswith("Bearer ")
        assert len(second.tasks(project)) == 3
        second.close()
    finally:
        client.close()
    (tmp_path / "export.json").write_text(json.dumps(export))
    code, out, err = run_lref(monkeypatch, capsys, "review", "import", str(tmp_path / "export.json"), "--out",
                              str(tmp_path / "corrections.jsonl"), "--source", str(tmp_path / "project"))
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "corrections.jsonl").read_text().splitlines()]
    assert [(r["id"], r["old_label"], r["new_label"]) for r in rows] == [(target.id, target.label, new_label)]
    assert rows[0]["annotator"] == "user:1" and rows[0]["time"].startswith(time.strftime("%Y-", time.gmtime()))
    config = parse_config({"data": {"format": "jsonl", "train": "train.jsonl", "eval": "eval.jsonl",
                                    "corrections": "corrections.jsonl"}, "stages": {"lexical": {}}},
                          tmp_path / "run.yaml")
    train = {r.id: r.label for r in load_data(config).train}
    assert train[target.id] == new_label
    assert get_scheme("graded3").index(new_label) != get_scheme("graded3").index(target.label)
