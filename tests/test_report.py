"""`lref report`: the HTML page and PNGs from a results.json, checked in a real headless Chromium."""

import json
import random
import re
import shutil
import subprocess

import pytest
from helpers import run_lref

from lref.collapse import check_collapse
from lref.data.records import Record
from lref.metrics import evaluate
from lref.predictions import Prediction
from lref.report import write_report

LABELS = ("Exact", "Partial", "Irrelevant")


def fake_system(name, title, gold, accuracy, seed):
    rng = random.Random(seed)
    predictions = []
    for record in gold:
        label = record.label if rng.random() < accuracy else rng.choice(LABELS)
        predictions.append(Prediction(record.id, label, {l: (0.8 if l == label else 0.1) for l in LABELS}))
    metrics = evaluate(gold, predictions, "graded3", bootstrap=50)
    metrics["pairs_per_s"] = 10.0 * (seed + 1)
    return {"name": name, "title": title, "stage": name, "n_train": 100, "metrics": metrics}


@pytest.fixture()
def run_dir(tmp_path):
    rng = random.Random(0)
    gold = [Record(str(i), f"query {i // 4}", f"title {i}", rng.choice(LABELS), raw_score=rng.uniform(1, 3))
            for i in range(120)]
    for i, record in enumerate(gold):  # per-rater labels and the agreed/disagreed flag, as Home Depot-like data
        rating = 3 - LABELS.index(record.label)
        record.meta["rater_labels"] = [rating, rating if i % 3 else max(1, rating - 1)]
        record.meta["rater_disagreement"] = i % 3 == 0
    dpo = fake_system("dpo", "+ DPO", gold, 0.7, 2)
    dpo["metrics"]["calibration"] = {"bias": {"Exact": 0.0, "Partial": -0.3, "Irrelevant": 0.2},
                                     "uncalibrated": {"weighted_f1": 0.4321}}
    sft = fake_system("sft", "+ selection (SFT)", gold, 0.5, 1)
    sft["metrics"]["collapse"] = check_collapse([r.label for r in gold], ["Exact"] * len(gold), "graded3")
    lexical = fake_system("lexical", "lexical", gold, 0.6, 0)
    lexical["metrics"]["collapse"] = {"collapsed": False, "silent_labels": ["Irrelevant"], "reasons": []}
    systems = [lexical, sft, dpo,
               {"name": "zero-shot", "title": "zero-shot LLM", "stage": "zero-shot", "skipped": "qwen not installed"}]
    results = {
        "run_dir": str(tmp_path), "systems": systems,
        "eval": {"pairs": 120, "train_pairs": 500, "scheme": "graded3", "hash": "x"},
        "selection": {"pool_size": 500, "selected": 60, "selected_fraction": 0.12,
                      "funnel": [{"step": "pool", "remaining": 500}, {"step": "+ CI(x) = L(x)", "remaining": 200},
                                 {"step": "+ IM(x) ≠ L(x)", "remaining": 60}]},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path


def test_report_writes_html_with_the_table_and_embedded_pngs(run_dir):
    page = write_report(run_dir)
    text = page.read_text()
    pngs = sorted(p.name for p in page.parent.glob("*.png"))
    assert pngs == ["confusion_dpo.png", "confusion_lexical.png", "confusion_sft.png", "over_estimates.png",
                    "per_class_dpo.png", "selection_funnel.png", "speed.png"]
    assert text.count("data:image/png;base64,") == len(pngs)
    assert "<script" not in text and "src=\"http" not in text  # self-contained
    rows = re.findall(r"<tr.*?</tr>", re.search(r'<table id="results">.*?</table>', text).group(0))
    assert len(rows) == 1 + 4 and "skipped: qwen not installed" in rows[-1]
    assert re.search(r"<td>\+ DPO</td><td>100</td><td>0\.\d{3} <small>\[0\.\d{3}, 0\.\d{3}\]</small>", text)
    assert "<br><small>uncalibrated 0.432</small>" in rows[3] and "uncalibrated" not in rows[1]
    assert '<strong class="collapsed">COLLAPSED</strong> <small>macro-F1' in rows[2] and "COLLAPSED" not in rows[3]
    assert "<br><small>never answers Irrelevant</small>" in rows[1]
    results = json.loads((run_dir / "results.json").read_text())
    dpo = results["systems"][2]["metrics"]
    agreement = re.findall(r"<tr.*?</tr>", re.search(r'<table id="agreement">.*?</table>', text).group(0))
    assert len(agreement) == 1 + 3  # the skipped system has no row
    assert f"Krippendorff's α among the raters alone: {dpo['krippendorff_alpha_raters']:.3f}." in text
    split = dpo["by_rater_agreement"]

    def cell(key):
        low, high = dpo["ci95"][key]
        return f"<td>{dpo[key]:.3f} <small>[{low:.3f}, {high:.3f}]</small></td>"

    assert agreement[3] == (
        "<tr><td>+ DPO</td>" + "".join(cell(key) for key in ("cohen_kappa", "quadratic_weighted_kappa", "spearman",
                                                             "ndcg@5", "ndcg@10"))
        + f"<td>{dpo['krippendorff_alpha_with_judge']:.3f}</td>"
        f"<td>{split['agreed']['cohen_kappa']:.3f} / {split['disagreed']['cohen_kappa']:.3f}</td></tr>")


def test_report_needs_results(tmp_path, monkeypatch, capsys):
    code, out, err = run_lref(monkeypatch, capsys, "report", str(tmp_path))
    assert code == 2 and "no results.json" in err


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed: `make browser` (apt-get install -y chromium) installs it; "
                    "`make test` does so first")
    return found


def test_report_renders_in_headless_chromium(run_dir, monkeypatch, capsys):
    chromium = _chromium()
    code, out, _ = run_lref(monkeypatch, capsys, "report", str(run_dir))
    assert code == 0
    page = run_dir / "report" / "report.html"
    # A copy with a probe that, once everything has loaded, writes into the DOM how many images decoded.
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const decoded = images.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  const cells = document.querySelectorAll("#results td").length;
  const agreement = document.querySelectorAll("#agreement td").length;
  document.body.setAttribute("data-probe", `images ${decoded}/${images.length} cells ${cells} ${agreement}`);
});
</script></body>"""))
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--virtual-time-budget=10000", "--window-size=1200,2400"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-probe="images (\d+)/(\d+) cells (\d+) (\d+)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    decoded, total, cells, agreement = map(int, found.groups())
    assert total == 7 and decoded == total and cells == 3 * 8 + 2 and agreement == 3 * 8
    shot = run_dir / "screenshot.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    from matplotlib.image import imread

    pixels = imread(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pixels.shape[0] >= 2000
    assert pixels[..., :3].std() > 0.05 and (pixels[..., :3] < 0.5).mean() > 0.005  # text, bars: not blank
