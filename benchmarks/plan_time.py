"""How long Snakemake takes to plan the paper grid (``snakemake -n --config scale=paper``), and the demo's.

What a cluster user waits for before the first job is submitted, and again on every re-run. The workflow
(``Snakefile``, ``workflow/``, ``environment.yml``, ``config.yaml``) is copied into a temporary folder, so
nothing is written into the repository and no data exists: the dry run plans the whole DAG from scratch
(downloads, prepares, every training and evaluation, tables, plots). Prints the best wall time of
``--repeats`` runs and the number of jobs per grid.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.plan_time [--repeats 3] [--scales paper demo]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_utils import REPO, machine, markdown

#: "rule    count" lines of Snakemake's job summary.
_COUNT = re.compile(r"^(\S+)\s+(\d+)$")


def copy_workflow(dest: Path) -> Path:
    """The workflow and config.yaml copied into ``dest`` (no data, no results)."""
    dest.mkdir(parents=True)
    for name in ("Snakefile", "environment.yml", "config.yaml"):
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "workflow", dest / "workflow")
    return dest


def dry_run(work: Path, scale: str) -> tuple[float, float, dict[str, int]]:
    """Wall and CPU seconds of one ``snakemake -n`` at ``scale``, and its job counts per rule (with ``total``).

    CPU seconds (user + system of the Snakemake process) do not depend on what else runs on the machine.
    """
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--config", f"scale={scale}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if r.returncode != 0:
        raise RuntimeError(f"snakemake -n --config scale={scale} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    counts: dict[str, int] = {}
    for line in (r.stdout + r.stderr).splitlines():
        m = _COUNT.match(line.strip())
        if m and m.group(1) not in counts:
            counts[m.group(1)] = int(m.group(2))
    return wall, cpu, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="dry runs per scale; the best is reported")
    ap.add_argument("--scales", nargs="*", default=["paper", "demo"])
    a = ap.parse_args()
    print(f"# snakemake -n on {machine()}, load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ris_plan_") as tmp:
        for scale in a.scales:
            work = copy_workflow(Path(tmp) / scale)
            runs = [dry_run(work, scale) for _ in range(a.repeats)]
            counts = runs[0][2]
            jobs = ", ".join(f"{k} {v}" for k, v in counts.items() if k in ("train", "evaluate", "prepare", "download"))
            rows.append([scale, counts.get("total", "?"), jobs, f"{min(r[0] for r in runs):.1f}",
                         f"{min(r[1] for r in runs):.1f}", " / ".join(f"{r[0]:.1f}" for r in runs)])  # fmt: skip
    print()
    print(markdown(["scale", "jobs", "of which", "wall (s, best)", "CPU (s, best)", "wall, every run (s)"], rows))


if __name__ == "__main__":
    main()
