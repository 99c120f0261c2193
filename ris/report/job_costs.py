"""Job costs, where the time goes: the time and memory of every job of a run of the DAG, summed per rule.

Every rule that does work writes each job's Snakemake ``benchmark:`` file to
``results/job_costs/<rule>/<wildcards>.tsv`` (wall seconds ``s``, peak resident memory ``max_rss`` in MB, ...;
``-`` where the job was too short to sample). :func:`summarize_job_costs` reads them all and gives, per rule:
jobs, total and max seconds, max RSS (MB), sorted by total seconds (``ris job-costs``; the Snakemake target
``job_costs``). Not to be confused with ``benchmarks/``, the scripts that measure what paper scale costs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ris.utils import atomic_path

SUMMARY_COLUMNS = ["rule", "jobs", "total_s", "max_s", "max_rss_mb"]


def read_job_costs(root: Path) -> pd.DataFrame:
    """One row per job's file under ``root`` (``<rule>/.../<name>.tsv``): rule, file, s, max_rss and max_pss (MB;
    PSS shares out the pages forked processes such as DataLoader workers have in common, RSS counts them in each)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no job costs folder (written by the rules' `benchmark:` directives)")
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        if len(rel.parts) < 2:
            raise ValueError(f"{path}: expected <rule>/<name>.tsv under {root}")
        df = pd.read_csv(path, sep="\t", na_values=["-", "NA"])
        missing = [c for c in ("s", "max_rss") if c not in df.columns]
        if missing or df.empty:
            raise ValueError(f"{path}: not a Snakemake benchmark file (no column {', '.join(missing) or 'row'})")
        for r in df.itertuples():  # several rows when a rule is benchmarked with repeat()
            pss = float(getattr(r, "max_pss", "nan"))
            rows.append({"rule": rel.parts[0], "file": str(rel), "s": float(r.s), "max_rss": float(r.max_rss),
                         "max_pss": pss})  # fmt: skip
    return pd.DataFrame(rows, columns=["rule", "file", "s", "max_rss", "max_pss"])


def summarize_job_costs(root: Path) -> pd.DataFrame:
    """Per rule: jobs, total and max wall seconds, max RSS in MB (NaN where never sampled); by total s."""
    df = read_job_costs(root)
    g = df.groupby("rule", sort=False)
    out = pd.DataFrame(
        {"jobs": g["file"].nunique(), "total_s": g["s"].sum(), "max_s": g["s"].max(), "max_rss_mb": g["max_rss"].max()}
    ).reset_index()
    return out.sort_values(["total_s", "rule"], ascending=[False, True], kind="mergesort")[SUMMARY_COLUMNS]


def to_markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table with a total row."""
    lines = ["| Rule | Jobs | Total s | Max s | Max RSS (MB) |", "|:---|---:|---:|---:|---:|"]
    for r in summary.itertuples():
        rss = "-" if pd.isna(r.max_rss_mb) else f"{r.max_rss_mb:.0f}"
        lines.append(f"| {r.rule} | {r.jobs} | {r.total_s:.1f} | {r.max_s:.1f} | {rss} |")
    total = summary["total_s"].sum()
    lines.append(f"| **all** | {summary['jobs'].sum()} | {total:.1f} | | |")
    lines += ["", "Wall seconds of each job as Snakemake measured it (`benchmark:` files, results/job_costs/); jobs "
              "run in parallel, so the total is CPU-bound work, not the DAG's wall time."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_job_costs(root: Path, out_csv: Path, out_md: Path) -> pd.DataFrame:
    """Write :func:`summarize_job_costs` of ``root`` as CSV and Markdown (atomically)."""
    summary = summarize_job_costs(root)
    with atomic_path(Path(out_csv)) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.2f")
    with atomic_path(Path(out_md)) as tmp:
        tmp.write_text(to_markdown(summary))
    return summary
