"""The SLURM profile (workflow/profiles/slurm) against a real SLURM cluster.

The slow tests need the single-node cluster of ``scripts/slurm/setup_cluster.sh`` (``.ci/run`` starts it
before pytest). When no usable cluster is found they FAIL with the reason, if running as root or with
the ``CI`` environment variable set (so CI can never skip them silently); otherwise, i.e. as an ordinary
user without ``CI``, they skip. Run them alone with ``python -m pytest tests/test_slurm.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers import REPO, make_workdir, snakemake

PROFILE = REPO / "workflow" / "profiles" / "slurm"
DEFAULT_PROFILE = REPO / "workflow" / "profiles" / "default"
# The test node is small (scripts/slurm/setup_cluster.sh: 2 CPUs, 90% of this machine's memory): the
# profile's paper-scale memory requests are capped to this, and GPUs are overridden to 0.
TEST_MEM_MB = 3000
# Keys of the profile that name things of a real site (partitions, accounts, GPU types): not on the test
# cluster, so dropped if someone uncomments them.
SITE_KEYS = ("slurm_partition", "slurm_account", "gpu_model", "constraint", "qos")
CLUSTER_TIMEOUT_S = 900  # the cluster run takes 2-4 min on 2 busy cores
FAST_STATUS = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"]


# --- helpers ---------------------------------------------------------------------------------------


def _sh(*cmd: str, timeout: int = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def cluster_problem() -> str | None:
    """None if a SLURM cluster with accounting answers and has a usable node, else what is wrong."""
    for tool in ("sbatch", "squeue", "sinfo", "sacct", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (SLURM client tools not installed)"
    try:
        ping = _sh("scontrol", "ping")
        if not re.search(r"\bis UP\b", ping.stdout):
            return f"slurmctld does not answer: `scontrol ping` -> {(ping.stdout + ping.stderr).strip()!r}"
        states = _sh("sinfo", "-h", "-o", "%T").stdout.split()
        usable = [s for s in states if s.rstrip("*~#") in {"idle", "mixed", "allocated", "completing"}]
        if not usable:
            return f"no usable node: `sinfo` states {states or 'none'}"
        acct = _sh("sacct", "-n", "-X", "-S", "now-1minutes")
        if acct.returncode != 0:
            return f"accounting (slurmdbd) not available: `sacct` -> {acct.stderr.strip()!r}"
    except subprocess.TimeoutExpired as e:
        return f"`{' '.join(e.cmd)}` timed out"
    return None


@pytest.fixture
def slurm_cluster():
    """Fail (root or CI) or skip (ordinary user, no CI) unless a SLURM cluster is up."""
    problem = cluster_problem()
    if problem is None:
        return
    msg = (
        f"no usable SLURM cluster: {problem}. Start the single-node test cluster with "
        "`sudo bash scripts/slurm/setup_cluster.sh` (.ci/run does it before pytest)."
    )
    if os.environ.get("CI") or os.geteuid() == 0:
        pytest.fail(msg)
    pytest.skip(msg + " Skipped because not root and CI is unset.")


def _value(v) -> str:
    """A resource value as Snakemake's --set-resources / --default-resources parse it (Python literals)."""
    if isinstance(v, str) and not (v[:1] in "'\"" and v[-1:] == v[:1]):
        return repr(v)
    return str(v)


def fitted_overrides() -> list[str]:
    """The profile's resources, fitted to the test node: no GPUs, memory capped, no site names.

    A command-line --set-resources / --default-resources replaces the profile's whole section, so the
    profile's other entries (runtime, slurm_extra) are passed on unchanged.
    """
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())

    def fit(res: dict) -> dict:
        res = {k: v for k, v in res.items() if k not in SITE_KEYS}
        if "mem_mb" in res:
            res["mem_mb"] = min(int(res["mem_mb"]), TEST_MEM_MB)
        return res

    set_resources = {rule: fit(res) for rule, res in profile.get("set-resources", {}).items()}
    for rule in ("train", "evaluate"):
        set_resources.setdefault(rule, {})["gpu"] = 0
    args = ["--set-resources"]
    args += [f"{rule}:{k}={_value(v)}" for rule, res in set_resources.items() for k, v in res.items()]
    args += ["--default-resources"]
    args += [f"{k}={_value(v)}" for k, v in fit(profile.get("default-resources", {})).items()]
    return args


def cluster_snakemake(work: Path, *args: str, timeout: int = CLUSTER_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Snakemake with the SLURM profile, under `timeout -k 30` (a hung Snakemake ignores SIGTERM)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = ["timeout", "-k", "30", str(timeout), sys.executable, "-m", "snakemake", "--profile", str(PROFILE)]
    return subprocess.run(
        [*cmd, *FAST_STATUS, *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout + 60
    )


def slurm_job_ids(output: str) -> dict[str, str]:
    """SLURM job id -> Snakemake rule, from Snakemake's log lines."""
    ids = re.findall(r"submitted with SLURM jobid (\d+) \(log: .*?/slurm_logs/rule_([A-Za-z0-9_]+?)/", output)
    return {jobid: rule for jobid, rule in ids}


def sacct_jobs(job_ids, expect_final: bool = True) -> dict[str, dict[str, str]]:
    """sacct rows (allocations only) for the given job ids; waits a little for slurmdbd to catch up."""
    fields = ["JobID", "State", "ExitCode", "AllocCPUS", "Comment", "WorkDir"]
    rows: dict[str, dict[str, str]] = {}
    for _ in range(20):
        r = _sh("sacct", "-n", "-X", "-P", "-D", "-j", ",".join(job_ids), "-o", ",".join(fields))
        assert r.returncode == 0, r.stderr
        rows = {}
        for line in r.stdout.splitlines():
            row = dict(zip(fields, line.split("|")))
            rows[row["JobID"]] = row  # with -D the last row of a requeued job is its last run
        if not expect_final or all(
            j in rows and rows[j]["State"] not in {"PENDING", "RUNNING", "REQUEUED"} for j in job_ids
        ):
            break
        time.sleep(1)
    return rows


def train_threads(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"python -m ris train .*? --threads (\d+)", output)]


def explain(r: subprocess.CompletedProcess, work: Path) -> str:
    """The end of Snakemake's output and of every log it left, for assertion messages."""
    status = f"exit status {r.returncode}"
    if r.returncode in (124, 137):
        status += " (killed by `timeout`: Snakemake did not finish in time)"
    parts = [status, r.stdout[-4000:], r.stderr[-6000:]]
    logs = [*sorted((work / ".snakemake" / "slurm_logs").rglob("*.log"))]
    logs += sorted((work / "results" / "logs").rglob("*.log"))
    for log in logs[-8:]:
        parts.append(f"--- {log.relative_to(work)}\n" + log.read_text(errors="replace")[-1500:])
    return "\n".join(parts)


# --- fast checks of the profiles (no cluster needed) ---------------------------------------------------


def test_profiles_parse_and_default_profile_is_not_implicit(tmp_path):
    """Both profiles are accepted by this Snakemake; a plain `snakemake --cores 2` loads neither."""
    work = make_workdir(tmp_path)
    r = snakemake(work, "-n", "--profile", str(PROFILE), "--config", "scale=paper")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    # Paper-scale training asks for a GPU (config train.gpus) and gets the profile's signal.
    assert re.search(r"resources: .*runtime=1440, gpu=1, slurm_extra=--signal=TERM@600", out), out[-3000:]

    r = snakemake(work, "-n", "--workflow-profile", str(DEFAULT_PROFILE))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Using workflow specific profile" in r.stdout + r.stderr

    r = snakemake(work, "-n")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Using workflow specific profile" not in r.stdout + r.stderr


def test_slurm_profile_requeues_interrupted_jobs():
    """The keys that bring back a training stopped by a signal (exit 75) are set and documented."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-requeue"] is True
    assert profile["retries"] >= 1
    assert "--signal=TERM@" in profile["set-resources"]["train"]["slurm_extra"]
    assert profile["cores"] >= 1  # caps the threads of any one job (the profile says why)


# --- the real cluster -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(2400)  # two DAG runs (cluster, then local) on 2 shared cores
def test_demo_dag_on_slurm_matches_local_run(tmp_path, slurm_cluster):
    """The tiny demo DAG through the SLURM profile gives the same tables as a local run."""
    (tmp_path / "cluster").mkdir()
    cluster_work = make_workdir(tmp_path / "cluster")
    t0 = time.monotonic()
    r = cluster_snakemake(cluster_work, *fitted_overrides())
    cluster_s = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"SLURM run failed after {cluster_s:.0f} s:\n" + explain(r, cluster_work)

    # Every job except the local rules ran on the cluster, and sacct has them all COMPLETED.
    jobs = slurm_job_ids(out)
    assert {"synthesize", "prepare", "train", "evaluate"} <= set(jobs.values()), out[-3000:]
    rows = sacct_jobs(jobs)
    for jobid, rule in jobs.items():
        assert jobid in rows, f"sacct does not list job {jobid} ({rule}): {rows}"
        assert rows[jobid]["State"] == "COMPLETED", f"job {jobid} ({rule}): {rows[jobid]}"
        assert rows[jobid]["WorkDir"] == str(cluster_work)
        assert rows[jobid]["Comment"].startswith(f"rule_{rule}")

    (tmp_path / "local").mkdir()
    local_work = make_workdir(tmp_path / "local")
    t0 = time.monotonic()
    r_local = snakemake(local_work, "--printshellcmds")
    local_s = time.monotonic() - t0
    assert r_local.returncode == 0, r_local.stdout[-3000:] + r_local.stderr[-3000:]
    print(f"demo DAG: {cluster_s:.0f} s on the SLURM cluster, {local_s:.0f} s locally")

    # Training is deterministic on CPU for a given seed and thread count: both runs must use the same.
    cluster_threads, local_threads = train_threads(out), train_threads(r_local.stdout + r_local.stderr)
    assert cluster_threads and cluster_threads == local_threads, (cluster_threads, local_threads)
    train_job = next(j for j, rule in jobs.items() if rule == "train")
    assert int(rows[train_job]["AllocCPUS"]) == cluster_threads[0]

    cluster_table = pd.read_csv(cluster_work / "results" / "tables" / "summary.csv")
    local_table = pd.read_csv(local_work / "results" / "tables" / "summary.csv")
    assert len(cluster_table) > 0
    pd.testing.assert_frame_equal(cluster_table, local_table)


RETRY_SNAKEFILE = r'''
rule all:
    input: "done.txt"

# Named `train` so that the profile's train resources (runtime, signal, memory) apply.
rule train:
    output: "done.txt"
    shell:
        """
        python3 - <<'EOF'
import os, signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
attempt = len(open("attempts.txt").readlines()) + 1 if os.path.exists("attempts.txt") else 1
open("attempts.txt", "a").write(f"{{attempt}}\\n")
if attempt == 1:
    open("running.txt", "w").write("1")  # the test sends SIGTERM now
    for _ in range(1200):
        if got:
            break
        time.sleep(0.1)
    time.sleep(3)  # saving a checkpoint takes a while
    open("events.txt", "a").write(f"attempt 1: signals {{got}}, checkpoint saved, exit 75\\n")
    sys.exit(75)
open("events.txt", "a").write(f"attempt {{attempt}}: resumed, done\\n")
open("{output}", "w").write("done\\n")
EOF
        """
'''


@pytest.mark.slow
def test_job_stopped_by_sigterm_exits_75_and_is_retried(tmp_path, slurm_cluster):
    """SIGTERM (what the profile's --signal sends before the time limit) -> exit 75 -> job resubmitted."""
    work = tmp_path / "retry"
    work.mkdir()
    (work / "Snakefile").write_text(RETRY_SNAKEFILE)
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    cmd = ["timeout", "-k", "30", "300", sys.executable, "-m", "snakemake", "--profile", str(PROFILE)]
    proc = subprocess.Popen(
        [*cmd, *FAST_STATUS, *fitted_overrides()],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Wait for the first attempt to run, then signal its job steps as SLURM does with --signal.
        deadline = time.monotonic() + 120
        while not (work / "running.txt").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the first attempt did not start within 120 s"
            time.sleep(0.5)
        queue = _sh("squeue", "-h", "-o", "%i|%Z").stdout.splitlines()
        job = next(line.split("|")[0] for line in queue if line.split("|")[1] == str(work))
        assert _sh("scancel", "--signal=TERM", job).returncode == 0
        out, _ = proc.communicate(timeout=330)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-6000:]
    assert (work / "events.txt").read_text().splitlines() == [
        "attempt 1: signals [15], checkpoint saved, exit 75",
        "attempt 2: resumed, done",
    ]
    jobs = slurm_job_ids(out)
    assert len(jobs) == 2, out[-3000:]
    rows = sacct_jobs(jobs)
    first, second = sorted(jobs, key=int)
    assert first == job and rows[first]["State"] == "FAILED", rows
    assert rows[second]["State"] == "COMPLETED", rows
