"""The rehearsal's last word (``rehearsal: true``; docs/scales.md): what ran, what it cost, what it cannot check.

``ris rehearsal-summary`` (the rehearsal's final rule, after every table and figure, the stats target's plan and
the Snakemake report) writes ``<results>/rehearsal.md``: seconds and peak memory per rule from the jobs'
``benchmark:`` files (``<results>/job_costs/``), which runs trained with random weights (the hub was
unreachable), the job counts of ``snakemake -n stats``, and :data:`CANNOT_CHECK`, which the Snakefile also
prints when the rehearsal succeeds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ris.utils import atomic_path

#: What a CPU rehearsal cannot check, and where it is checked instead (printed at the end of every rehearsal).
CANNOT_CHECK = (
    "CUDA: kernels, GPU memory (micro_batch_size auto halves on CUDA out-of-memory only), speed. Run "
    "benchmarks/gpu_check.py on the first GPU node (docs/gpu.md) before the grid.",
    "bf16 on a GPU: the rehearsal trains and evaluates under bf16 autocast on the CPU (other kernels).",
    "NCCL and multi-GPU DDP (train.gpus > 1 under torchrun), SyncBatchNorm: the rehearsal trains one CPU process.",
    "The real weights: ImageNet backbones (timm) and bert-base-uncased are random where the hub was unreachable "
    "(same architectures and shapes; see the runs listed above).",
    "The real data: the RefCOCO/RefCOCO+/RefCOCOg annotations and COCO train2014 images (their download, "
    "checksums, long sentences, image decoding at scale): the rehearsal reads a generated copy of a few images.",
    "Accuracy, convergence and the time and memory of 40 epochs at batch 32: a rehearsal run takes a few "
    "optimizer steps of a few images; its tables' numbers measure nothing.",
)

_JOB_COUNT = re.compile(r"^([A-Za-z_][\w]*)\s+(\d+)$")


def plan_counts(dry_run_output: str) -> dict[str, int]:
    """Jobs per rule from the ``Job stats`` table of a ``snakemake -n`` output (empty: nothing to do)."""
    counts: dict[str, int] = {}
    for line in dry_run_output.splitlines():
        m = _JOB_COUNT.match(line.strip())
        if m and m.group(1) not in ("job", "total"):
            counts[m.group(1)] = int(m.group(2))
    return counts


def random_weight_runs(results: Path) -> dict[str, list[str]]:
    """Run (``<dataset>/<run>``) -> its parts trained from random weights (``rehearsal.random_weights`` of the
    run's ``config.json``, ris.training.offline); runs with hub weights are left out."""
    out = {}
    for path in sorted(Path(results, "runs").glob("*/*/config.json")):
        parts = (json.loads(path.read_text()).get("rehearsal") or {}).get("random_weights")
        if parts:
            out[f"{path.parent.parent.name}/{path.parent.name}"] = list(parts)
    return out


def cost_table(costs: Path) -> tuple[str, float, float]:
    """Per rule (by total seconds): jobs, total and max wall seconds, peak RSS and PSS of a job (MB), as Markdown;
    and the peak RSS and PSS of any job (GiB). RSS sums the job's processes (DataLoader workers count the pages
    they share with the trainer again); PSS shares them out: the memory the job takes."""
    from ris.report.job_costs import read_job_costs

    df = read_job_costs(costs)
    g = df.groupby("rule")
    rows = sorted(((r, len(d), d["s"].sum(), d["s"].max(), d["max_rss"].max(), d["max_pss"].max()) for r, d in g),
                  key=lambda row: -row[2])  # fmt: skip
    lines = ["| Rule | Jobs | Total s | Max s | Max RSS (MB) | Max PSS (MB) |", "|:---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r} | {n} | {t:.1f} | {m:.1f} | {rss:.0f} | {pss:.0f} |" for r, n, t, m, rss, pss in rows]
    lines.append(f"| **all** | {len(df)} | {df['s'].sum():.1f} | | | |")
    return "\n".join(lines).replace("| nan |", "| - |"), df["max_rss"].max() / 1024, df["max_pss"].max() / 1024


def summary_markdown(results: Path, stats_plan: Path, report: Path, budget_gib: float) -> str:
    """The Markdown of ``rehearsal.md`` (see the module docstring)."""
    table, rss_gib, pss_gib = cost_table(Path(results, "job_costs"))
    verdict = "within" if pss_gib <= budget_gib else "OVER"
    random = random_weight_runs(results)
    trained = len(list(Path(results, "runs").glob("*/*/config.json")))
    plan = plan_counts(Path(stats_plan).read_text())
    lines = [
        "# Rehearsal",
        "",
        "Every job of the scale's DAG ran on a slice (docs/scales.md): the tables and figures under "
        f"{results}/tables and {results}/plots, the Snakemake report {report}.",
        "",
        "## Cost per rule (every job's benchmark file, job_costs/; the total is work, not the DAG's wall time)",
        "",
        table,
        "",
        f"Peak memory of any job: {pss_gib:.2f} GiB PSS ({verdict} the {budget_gib:g} GiB budget), {rss_gib:.2f} GiB "
        "RSS summed over its processes (forked DataLoader workers counted again for the pages they share).",
        "",
        "## Weights",
        "",
    ]
    if random:
        kinds = sorted({p for parts in random.values() for p in parts})
        lines.append(
            f"{len(random)} of {trained} runs trained from RANDOM weights ({', '.join(kinds)}): the Hugging Face "
            "Hub was unreachable (MLflow tag random_weights; rehearsal.random_weights in each run's config.json)."
        )
    else:
        lines.append(f"All {trained} runs started from the weights their preset names (the hub answered).")
    lines += ["", f"## The stats target's plan (`snakemake -n stats`: {stats_plan})", ""]
    lines += [f"- {rule}: {n}" for rule, n in plan.items()] or ["- nothing to do"]
    lines += ["", "## What the rehearsal cannot check", ""] + [f"- {item}" for item in CANNOT_CHECK]
    return "\n".join(lines) + "\n"


def write_summary(results: Path, stats_plan: Path, report: Path, out: Path, budget_gib: float = 12.0) -> str:
    """Write :func:`summary_markdown` to ``out`` (atomically) and return it."""
    text = summary_markdown(results, stats_plan, report, budget_gib)
    with atomic_path(Path(out)) as tmp:
        tmp.write_text(text)
    return text
