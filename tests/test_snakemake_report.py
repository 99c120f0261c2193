"""The headline outputs end to end: a small DAG -> tables, figures, the Snakemake report opened in headless
Chromium, `ris runs` on its MLflow store and `ris predict` with one of its checkpoints."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ris.cli import main
from tests.helpers import assert_valid_figure, dry_run_counts, make_workdir, snakemake

TABLES = {
    "mask_number": {
        "caption": "CoupAlign suppl. Table 3 (subset): number of masks N (RefCOCO val).",
        "datasets": {"refcoco": ["val"]},
        "metrics": ["mIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9"],
        "runs": [{"method": "coupalign", "backbone": "swin_b", "num_masks": n} for n in (0, 20, 100)],
    },
    "main": {
        "caption": "Main comparison (subset).",
        "datasets": {"refcoco": ["val", "testA"], "refcocog_umd": ["val"]},
        "metrics": ["oIoU", "mIoU"],
        "published": [{"method": "LTS", "backbone": "darknet53"}],
        "runs": [
            {"method": "lavt", "backbone": "swin_b"},
            {"method": "coupalign", "backbone": "swin_b", "num_masks": 100},
        ],
    },
}
FIGURES = {
    "mask_number": [
        "precision",
        "num_masks",
        "training",
        "qualitative_successes",
        "qualitative_failures",
        "qualitative_swap",
    ],
    "main": ["precision", "training", "qualitative_successes", "qualitative_failures", "qualitative_swap"],
}
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

# Appended to a copy of the report: once the report app has loaded, decode every result as the browser
# sees it (images drawn on a canvas, HTML tables parsed), open every category in the app, show an image
# in the content pane, and write what it found into <pre id="ris-check">.
CHECK_JS = """
window.addEventListener("load", async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const out = { categories: categories, results: {}, rendered: {}, errors: [] };
  try {
    for (const [path, r] of Object.entries(results)) {
      const rec = { mime: r.mime_type, labels: r.labels, caption: r.caption.replace(/<[^>]+>/g, "") };
      if (r.mime_type.startsWith("image/")) {
        const img = new Image();
        await new Promise((ok) => { img.onload = ok; img.onerror = ok; img.src = r.data_uri; });
        rec.width = img.naturalWidth;
        rec.height = img.naturalHeight;
        if (img.naturalWidth > 0) {
          const c = document.createElement("canvas");
          c.width = img.naturalWidth; c.height = img.naturalHeight;
          const ctx = c.getContext("2d");
          ctx.drawImage(img, 0, 0);
          const d = ctx.getImageData(0, 0, c.width, c.height).data;
          const colors = new Set();
          for (let i = 0; i < d.length; i += 4 * 7) colors.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
          rec.colors = colors.size;
        }
      } else if (r.mime_type === "text/html") {
        const doc = new DOMParser().parseFromString(await (await fetch(r.data_uri)).text(), "text/html");
        const tables = doc.querySelectorAll("table");
        rec.tables = tables.length;
        rec.caption_text = doc.querySelector("caption") ? doc.querySelector("caption").textContent : null;
        rec.header = Array.from(tables[0].querySelectorAll("thead tr:last-child th")).map((x) => x.textContent);
        rec.rows = Array.from(tables[0].querySelectorAll("tbody tr")).map(
          (tr) => Array.from(tr.children).map((td) => td.textContent));
      }
      out.results[path] = rec;
    }
    for (const cat of Object.keys(categories)) {
      app.showCategory(cat);
      await sleep(100);
      out.rendered[cat] = document.querySelector("#app").innerText;
    }
    const png = Object.keys(results).find((p) => results[p].mime_type === "image/png");
    app.setView({ content: "img", contentPath: results[png].data_uri });
    await sleep(200);
    const shown = Array.from(document.querySelectorAll("#app img")).find((x) => x.src === results[png].data_uri);
    out.content_img = shown ? { path: png, width: shown.naturalWidth, height: shown.naturalHeight } : null;
  } catch (e) {
    out.errors.push(String(e) + " " + e.stack);
  }
  const pre = document.createElement("pre");
  pre.id = "ris-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def run_chromium(args: list[str], tmp: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    profile = tmp / f"chromium-profile-{len(list(tmp.glob('chromium-profile-*')))}"
    profile.mkdir()
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def dag(tmp_path_factory) -> Path:
    """A finished small DAG (two tables, four runs, two epochs each) and its Snakemake report."""
    work = make_workdir(tmp_path_factory.mktemp("report"), tables=TABLES)
    r = snakemake(work)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = snakemake(work, "--report", "results/report.html")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work


@pytest.mark.slow
def test_results_hold_every_table_and_figure(dag):
    results = dag / "results"
    for table, figures in FIGURES.items():
        for ext in ("csv", "md", "tex", "html"):
            assert (results / "tables" / f"{table}.{ext}").stat().st_size > 500
        for fig in figures:
            for ext in ("png", "pdf"):
                assert_valid_figure(results / "plots" / table / f"{fig}.{ext}")
    # Every figure file the DAG wrote is a valid, non-blank image (the tables' and the mask-hypotheses figure of
    # the one method with N masks here, CoupAlign N = 100).
    written = sorted((results / "plots").rglob("*.*"))
    assert len(written) == 2 * sum(len(f) for f in FIGURES.values()) + 2
    assert (results / "plots" / "mask_diagnostics" / "coupalign.png") in written
    for path in written:
        assert_valid_figure(path)
    md = (results / "tables" / "mask_number.md").read_text()
    assert "| N | Numbers | mIoU | P@0.5 | P@0.6 | P@0.7 | P@0.8 | P@0.9 |" in md
    assert [line.split("|")[1].strip() for line in md.splitlines() if re.match(r"\| \d+ \|", line)] == [
        "0",
        "20",
        "100",
    ]
    assert "synthetic" in md.splitlines()[0]
    main_md = (results / "tables" / "main.md").read_text()
    assert "| LTS | Darknet-53 | published (cited) | 65.43 | 67.76 | 54.40 |" in main_md
    assert "missing" not in main_md
    # one row per run whose prediction is a weighted sum of N masks: CoupAlign N = 20 and 100, not N = 0 or LAVT
    diag = pd.read_csv(results / "tables" / "mask_diagnostics.csv")
    assert list(diag["run"]) == ["synthetic/coupalign-swin_b-n20-s0", "synthetic/coupalign-swin_b-n100-s0"]
    assert (diag["samples"] > 0).all() and diag["split"].eq("val").all()
    assert diag["weight_entropy"].between(0, 1).all() and (diag["distinct_masks"] >= 0).all()
    assert "| synthetic/coupalign-swin_b-n100-s0 | val |" in (results / "tables" / "mask_diagnostics.md").read_text()


@pytest.mark.slow
def test_evaluate_keeps_every_prediction(dag):
    """samples.csv carries each prediction (RLE); re-decoding it gives back the recorded IoU."""
    from ris.data.dataset import resize_mask
    from ris.data.prepare import read_split
    from ris.data.refer import decode_rle

    samples = pd.read_csv(dag / "results/eval/synthetic/lavt-swin_b-n0-s0/val/samples.csv")
    truth = read_split(dag / "data/prepared/synthetic/val.parquet").set_index(["ref_id", "sent_id"])
    assert samples["pred_rle"].notna().all()
    for s in samples.head(20).itertuples():
        pred = decode_rle(s.pred_rle, s.pred_size, s.pred_size).astype(bool)
        t = truth.loc[(s.ref_id, s.sent_id)]
        gt = resize_mask(decode_rle(t["rle"], int(t["height"]), int(t["width"])), s.pred_size).numpy().astype(bool)
        assert (pred & gt).sum() == s.intersection and (pred | gt).sum() == s.union


@pytest.mark.slow
def test_report_opens_in_headless_chromium_with_every_table_and_image(dag, tmp_path):
    if not chromium():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    report = dag / "results" / "report.html"
    size = report.stat().st_size
    assert 500_000 < size < 30_000_000, size
    page = report.read_text()
    checked = tmp_path / "report_check.html"
    i = page.rindex("</body>")
    checked.write_text(page[:i] + "<script>" + CHECK_JS + "</script>" + page[i:])
    r = run_chromium(["--virtual-time-budget=30000", "--dump-dom", checked.as_uri()], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'<pre id="ris-check">(.*?)</pre>', r.stdout, re.S)
    assert m, "the report did not finish loading in Chromium"
    found = json.loads(html.unescape(m.group(1)))
    assert found["errors"] == []

    # Grouped by table: one category per table, with the table, its figures and its qualitative grids; and the
    # mask diagnostics (their table and the figure of CoupAlign's masks).
    assert set(found["categories"]) == set(TABLES) | {"mask_diagnostics"}
    diag = found["categories"]["mask_diagnostics"]
    assert sorted(p for ps in diag.values() for p in ps) == [
        "results/plots/mask_diagnostics/coupalign.png", "results/tables/mask_diagnostics.csv"
    ]  # fmt: skip
    for table, figures in FIGURES.items():
        subcats = found["categories"][table]
        assert set(subcats) == {"1. Table", "2. Figures", "3. Qualitative"}
        paths = [p for ps in subcats.values() for p in ps]
        expected = [f"results/tables/{table}.{x}" for x in ("html", "csv")]
        expected += [f"results/plots/{table}/{f}.png" for f in figures]
        assert sorted(paths) == sorted(expected)
        rendered = found["rendered"][table]
        assert all(s in rendered for s in subcats)
    # Every image decodes in the browser to a real picture; every table parses with its caption and rows.
    for path, rec in found["results"].items():
        if rec["mime"] == "image/png":
            assert rec["width"] > 200 and rec["height"] > 150 and rec["colors"] > 20, (path, rec)
        assert rec["caption"].strip(), f"{path}: no caption"
    t3 = found["results"]["results/tables/mask_number.html"]
    assert t3["header"] == ["N", "Numbers", "mIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "RefAcc"]
    assert [row[0] for row in t3["rows"] if row[0]] == [
        "0", "20", "100", "all foreground", "a random object", "the largest object"
    ]  # fmt: skip
    assert [row[1] for row in t3["rows"][:3]] == ["reproduced", "published", "Δ"]
    assert t3["rows"][1][2] == "73.85"  # published mIoU of N = 0
    assert "synthetic" in t3["caption_text"]
    main_t = found["results"]["results/tables/main.html"]
    # one HTML table per metric block: oIoU, mIoU and the demo's RefAcc
    assert main_t["tables"] == 3 and main_t["rows"][0][:3] == ["LTS", "Darknet-53", "published (cited)"]
    assert found["content_img"] and found["content_img"]["width"] > 200

    # A screenshot of the report app showing Table 3 (an HTML result in the content pane): not blank.
    shot = tmp_path / "report.png"
    show = page[:i] + (
        "<script>setTimeout(() => app.showCategory('mask_number'), 300); setTimeout(() => app.setView("
        "{content: 'html', contentPath: results['results/tables/mask_number.html'].data_uri}), 600);</script>"
    ) + page[i:]  # fmt: skip
    (tmp_path / "report_show.html").write_text(show)
    r = run_chromium(
        ["--virtual-time-budget=15000", "--window-size=1600,1000", f"--screenshot={shot}",
         (tmp_path / "report_show.html").as_uri()],
        tmp_path,
    )  # fmt: skip
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    r = run_chromium(["--virtual-time-budget=15000", "--dump-dom", (tmp_path / "report_show.html").as_uri()], tmp_path)
    assert re.search(r'<iframe src="data:text/html[^"]*"', r.stdout), "the table is not shown in the content pane"
    assert "1. Table" in r.stdout and "3. Qualitative" in r.stdout
    arr = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    content = arr[:400, 420:900]  # where the table is drawn, right of the navigation bar
    assert content.std() > 10 and (content.mean(axis=2) < 100).mean() > 0.01
    if os.environ.get("RIS_KEEP_REPORT"):
        keep = Path(os.environ["RIS_KEEP_REPORT"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(report, keep / "report.html")
        shutil.copy(shot, keep / "report_screenshot.png")
        shutil.copytree(dag / "results", keep / "results", dirs_exist_ok=True)


@pytest.mark.slow
def test_runs_lists_the_mlflow_store(dag, capsys):
    from ris.report.runs import list_runs

    uri = f"sqlite:///{dag / 'results' / 'mlflow.db'}"
    df = list_runs(uri)
    assert sorted(df["run"]) == sorted(
        ["coupalign-swin_b-n0-s0", "coupalign-swin_b-n20-s0", "coupalign-swin_b-n100-s0", "lavt-swin_b-n0-s0"]
    )
    assert set(df["status"]) == {"FINISHED"} and set(df["dataset"]) == {"synthetic"}
    row = df[df["run"] == "lavt-swin_b-n0-s0"].iloc[0]
    metrics = json.loads((dag / "results/eval/synthetic/lavt-swin_b-n0-s0/val/metrics.json").read_text())["metrics"]
    assert row["val oIoU"] == pytest.approx(metrics["oIoU"]) and row["val mIoU"] == pytest.approx(metrics["mIoU"])
    assert main(["runs", "--uri", uri]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:6] == ["run", "dataset", "method", "backbone", "N", "seed"]
    assert "coupalign-swin_b-n100-s0" in out and "4 run(s)" in out
    assert main(["runs", "--config", str(dag / "config.yaml"), "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5


@pytest.mark.slow
def test_predict_with_a_trained_checkpoint(dag, tmp_path, capsys):
    from ris.data.prepare import read_split

    row = read_split(dag / "data/prepared/synthetic/val.parquet").iloc[0]
    image = dag / "data/refer/synthetic/images" / row["file_name"]
    out = tmp_path / "mask.png"
    rc = main(
        ["predict", "--checkpoint", str(dag / "results/runs/synthetic/coupalign-swin_b-n100-s0/model.pt"),
         "--image", str(image), "--sentence", row["sentence"], "--out-mask", str(out)]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    with Image.open(out) as m, Image.open(image) as im:
        assert m.size == im.size
    assert (tmp_path / "mask.overlay.png").exists()


def test_runs_on_a_missing_store_is_a_clear_error(tmp_path, capsys):
    assert main(["runs", "--uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no MLflow store there" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_dag_declares_every_table_and_figure(tmp_path):
    """A DAG of three small tables (dry run, a config of the test's own): each table in four formats with its
    figures, the N figure where a table spans three N, one mask-hypotheses figure per method named for it."""
    import yaml

    tables = {
        **TABLES,
        "others": {
            "caption": "EAVL and JMCELN.",
            "datasets": {"refcoco": ["val"]},
            "metrics": ["mIoU"],
            "runs": [{"method": "eavl", "backbone": "swin_b"}, {"method": "jmceln", "backbone": "swin_b"}],
        },
    }
    work = make_workdir(tmp_path, tables=tables)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg.pop("stats", None)
    cfg["mask_diagnostics"] = {
        "figures": {
            m: {"backbone": "swin_b", "num_masks": n} for m, n in (("coupalign", 100), ("eavl", 0), ("jmceln", 0))
        }
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = snakemake(work, "-n", "--quiet", "rules")
    assert r.returncode == 0, r.stdout + r.stderr
    counts = dry_run_counts(r.stdout)
    for rule in ("tables", "plot_precision", "plot_training", "plot_qualitative"):
        assert counts[rule] == 3, (rule, counts)
    assert counts["plot_num_masks"] == 1  # mask_number: N = 0, 20, 100
    assert counts["train"] == 6  # CoupAlign N = 0, 20, 100 (100 shared by two tables), LAVT, EAVL, JMCELN
    assert counts["mask_diagnostics"] == 1 and counts["plot_mask_hypotheses"] == 3
