"""Job costs: every rule that does work writes each job's Snakemake `benchmark:` file; the summary sums them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ris.cli import main
from ris.report.job_costs import summarize_job_costs, to_markdown

ROOT = Path(__file__).resolve().parents[1]
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path: Path, seconds: float, rss: float | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:01\t{rss}\t1.0\t1.0\t1.0\t0.0\t0.0\t0.5\t{seconds}\n")


def test_summary_per_rule_on_fabricated_files(tmp_path):
    root = tmp_path / "job_costs"
    bench(root / "train" / "synthetic" / "lavt-swin_b-n0-s0.tsv", 120.5, 900.0)
    bench(root / "train" / "synthetic" / "eavl-swin_b-n0-s0.tsv", 80.0, 1200.25)
    bench(root / "evaluate" / "synthetic" / "lavt-swin_b-n0-s0.tsv", 10.0, 500.0)
    bench(root / "mlflow_init" / "mlflow_init.tsv", 0.4, "-")  # too short to be sampled
    s = summarize_job_costs(root)
    assert list(s["rule"]) == ["train", "evaluate", "mlflow_init"]  # by total seconds
    t = s.set_index("rule")
    assert t.loc["train", ["jobs", "total_s", "max_s", "max_rss_mb"]].tolist() == [2, 200.5, 120.5, 1200.25]
    assert t.loc["evaluate", "jobs"] == 1 and t.loc["evaluate", "max_rss_mb"] == 500.0
    assert pd.isna(t.loc["mlflow_init", "max_rss_mb"]) and t.loc["mlflow_init", "total_s"] == pytest.approx(0.4)
    md = to_markdown(s)
    assert "| train | 2 | 200.5 | 120.5 | 1200 |" in md and "| mlflow_init | 1 | 0.4 | 0.4 | - |" in md
    assert "| **all** | 4 | 210.9 | | |" in md
    out = tmp_path / "out"
    assert main(["job-costs", "--dir", str(root), "--out-csv", str(out / "b.csv"), "--out-md", str(out / "b.md")]) == 0
    assert pd.read_csv(out / "b.csv")["total_s"].tolist() == pytest.approx([200.5, 10.0, 0.4])


def test_summary_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no job costs folder"):
        summarize_job_costs(tmp_path / "nowhere")
    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "train" / "x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match=r"train/x\.tsv: not a Snakemake benchmark file \(no column s, max_rss\)"):
        summarize_job_costs(tmp_path / "b")
    (tmp_path / "b" / "train" / "x.tsv").unlink()
    bench(tmp_path / "b" / "loose.tsv", 1.0, 1.0)
    with pytest.raises(ValueError, match=r"loose\.tsv: expected <rule>/<name>\.tsv"):
        summarize_job_costs(tmp_path / "b")


def rules_of(text: str) -> dict[str, str]:
    """rule name -> its body, of one .smk file."""
    parts = re.split(r"^\s*rule (\w+):\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_rule_that_does_work_writes_its_job_cost_file():
    found = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for name, body in rules_of(smk.read_text()).items():
            body = re.split(r"^\s*(?:rule \w+|if .*|localrules):", body, flags=re.M)[0]
            if "shell:" in body or "run:" in body or "script:" in body:
                found[name] = re.search(r"benchmark:\s*\n\s*f\"\{RESULTS\}/job_costs/(\w+)/", body)
    assert {"synthesize", "train", "evaluate", "tables", "expression_types"} <= set(found)
    # job_costs reads the folder: its own file there would be summed into the next summary
    missing = [n for n, m in found.items() if m is None and n != "job_costs"]
    wrong = [n for n, m in found.items() if m is not None and m.group(1) != n]
    assert missing == [] and wrong == []


@pytest.mark.parametrize("scale", ["demo", "paper"])
def test_expression_types_job_is_planned_at_demo_scale_only(tmp_path, scale):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--directory", str(ROOT),
         "--config", f"scale={scale}", f"results_dir={tmp_path}/results"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M))
    assert ("expression_types" in jobs) == (scale == "demo"), jobs
    assert "job_costs" not in jobs  # not part of `rule all`: a second run has nothing to do
    if scale == "demo":
        assert f"{tmp_path}/results/job_costs/expression_types/expression_types.tsv" in proc.stdout
