# The rehearsal (`snakemake --cores 2 --config scale=paper rehearsal=true`; docs/scales.md): the jobs of the scale's
# DAG, unchanged, on a slice (ris/rehearsal.py rehearsal_overlay). This file adds its three jobs:
#   rehearsal_data  the paper data's stand-in: a RefCOCO-shaped REFER copy of every REFER dataset of config.yaml,
#                   where paper_data: (set by the overlay) reads it, as a user's own copy
#   rehearsal_report  the stats target's plan (snakemake -n stats) and the Snakemake report
#   rehearsal       last: rehearsal.md (cost and peak memory per rule, runs with random weights, the stats plan's
#                   job counts, what the rehearsal cannot check)
# Outputs: <results_dir>/rehearsal/{rehearsal.md,stats_plan.txt,report.html,rehearsal_config.json}.
import shlex
import sys
from pathlib import Path

from ris.rehearsal import rehearsal_copy, rehearsing
from ris.report.rehearsal import CANNOT_CHECK

REHEARSAL = rehearsing(config)
REHEARSAL_TARGETS = [f"{RESULTS}/rehearsal.md"] if REHEARSAL else []

if REHEARSAL:
    COPY = rehearsal_copy(config)
    COPY_FILES = sorted(
        {
            f"{COPY['refer_root']}/{d['folder']}/{name}"
            for d in config["datasets"].values()
            if d["source"] == "refer"
            for name in (f"refs({d['split_by']}).p", "instances.json")
        }
    )
    # A nested Snakemake on this workflow with the configuration as given (the overlay applies again in it).
    NESTED = f"python -m snakemake --snakefile {shlex.quote(str(workflow.main_snakefile))} --nolock"

    localrules:
        rehearsal_data,
        rehearsal_report,
        rehearsal,

    rule rehearsal_data:
        output:
            COPY_FILES,
            images=directory(COPY["coco_images"]),
        params:
            datasets=json.dumps(config["datasets"]),
            settings=json.dumps(config["rehearsal_slice"]["data"]),
            refer_root=lambda wildcards: COPY["refer_root"],
        conda:
            ENV
        log:
            f"{RESULTS}/logs/rehearsal_data.log",
        benchmark:
            f"{RESULTS}/job_costs/rehearsal_data/rehearsal_data.tsv",
        shell:
            "python -m ris fake-refer --datasets {params.datasets:q} --settings {params.settings:q}"
            " --refer-root {params.refer_root:q} --images {output.images:q} > {log} 2>&1"

    rule rehearsal_report:
        # The stats target's plan and the Snakemake report, by a nested Snakemake on the configuration as given.
        input:
            report_targets(),
        output:
            config=f"{RESULTS}/rehearsal_config.json",
            stats_plan=f"{RESULTS}/stats_plan.txt",
            report=f"{RESULTS}/report.html",
        params:
            config=json.dumps(CONFIG_AS_GIVEN),  # key order kept: the nested plan's params equal this run's
            # the stats target's plan, or a line saying there is none (no stats: section)
            plan=lambda wildcards, output: (
                f"{NESTED} --configfile {shlex.quote(output.config)} -n stats"
                if config.get("stats")
                else "echo 'no stats: section in the configuration'"
            ),
            targets=quoted(report_targets()),
            nested=NESTED,
        conda:
            ENV
        log:
            f"{RESULTS}/logs/rehearsal_report.log",
        benchmark:
            f"{RESULTS}/job_costs/rehearsal_report/rehearsal_report.tsv",
        shell:
            "printf '%s\\n' {params.config:q} > {output.config:q}"
            " && {params.plan} > {output.stats_plan:q} 2>&1"
            " && {params.nested} --configfile {output.config:q} --report {output.report:q} {params.targets} > {log} 2>&1"

    rule rehearsal:
        # Last: rehearsal.md, from every job's cost file, the runs' configurations and the stats plan.
        input:
            stats_plan=rules.rehearsal_report.output.stats_plan,
            report=rules.rehearsal_report.output.report,
        output:
            f"{RESULTS}/rehearsal.md",
        params:
            results=lambda wildcards: RESULTS,
        conda:
            ENV
        log:
            f"{RESULTS}/logs/rehearsal.log",
        benchmark:
            f"{RESULTS}/job_costs/rehearsal/rehearsal.tsv",
        shell:
            "python -m ris rehearsal-summary --results {params.results:q} --stats-plan {input.stats_plan:q}"
            " --report {input.report:q} --out {output:q} > {log} 2>&1"

    onsuccess:
        print("\nRehearsal finished. What a rehearsal on the CPU cannot check:", file=sys.stderr)
        for item in CANNOT_CHECK:
            print(f"  - {item}", file=sys.stderr)
        if Path(REHEARSAL_TARGETS[0]).exists():
            print(f"Summary (cost, peak memory, weights, stats plan): {REHEARSAL_TARGETS[0]}", file=sys.stderr)
