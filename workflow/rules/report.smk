# Tables, figures and the Snakemake report, from the metrics.json files (the source of truth for every
# number) and the published numbers in ris/resources/published_results.csv.
#   results/tables/<table>.{csv,md,tex,html}
#   results/plots/<table>/{precision,num_masks,training,qualitative_successes,qualitative_failures,
#                          qualitative_swap}.{png,pdf}
#   demo only: results/tables/expression_types.{csv,md,png,pdf}, mIoU and RefAcc per expression type of the
#   synthetic sentences and the figure of it (ris/report/breakdown.py)
# `snakemake --cores 1 job_costs` (not in `rule all`): results/tables/job_costs.{csv,md}, seconds and max RSS
# per rule from every job's `benchmark:` file (results/job_costs/<rule>/).
# `snakemake --report results/report.html` gathers them, grouped by table (captions: workflow/report/).
# Helper functions (spec_json, report_targets, ...) are in common.smk.


localrules:
    tables,
    plot_precision,
    plot_num_masks,
    plot_training,
    plot_qualitative,


rule tables:
    input:
        evaluations=table_inputs,
        published=PUBLISHED_CSV,
    output:
        html=report(
            f"{RESULTS}/tables/{{table}}.html",
            caption="../report/table.rst",
            category="{table}",
            subcategory="1. Table",
            labels={"table": "{table}", "content": "paper layout (HTML)"},
        ),
        csv=report(
            f"{RESULTS}/tables/{{table}}.csv",
            caption="../report/table_csv.rst",
            category="{table}",
            subcategory="1. Table",
            labels={"table": "{table}", "content": "long format (CSV)"},
        ),
        md=f"{RESULTS}/tables/{{table}}.md",
        tex=f"{RESULTS}/tables/{{table}}.tex",
    params:
        spec=spec_json,
        caption=table_caption,
        metrics=table_metric_files,
    wildcard_constraints:
        table=TABLE_NAME,
    conda:
        ENV
    log:
        f"{RESULTS}/logs/tables/{{table}}.log",
    benchmark:
        f"{RESULTS}/job_costs/tables/{{table}}.tsv",
    shell:
        "python -m ris tables --spec {params.spec:q} --published {input.published:q} --metrics {params.metrics}"
        " --out-csv {output.csv:q} --out-md {output.md:q} --out-tex {output.tex:q} --out-html {output.html:q}"
        " > {log} 2>&1"


rule plot_precision:
    input:
        evaluations=table_inputs,
        published=PUBLISHED_CSV,
    output:
        png=report(
            f"{RESULTS}/plots/{{table}}/precision.png",
            caption="../report/precision.rst",
            category="{table}",
            subcategory="2. Figures",
            labels={"table": "{table}", "figure": "precision vs IoU threshold"},
        ),
        pdf=f"{RESULTS}/plots/{{table}}/precision.pdf",
    params:
        spec=spec_json,
        metrics=table_metric_files,
    wildcard_constraints:
        table=TABLE_NAME,
    conda:
        ENV
    log:
        f"{RESULTS}/logs/plots/{{table}}-precision.log",
    benchmark:
        f"{RESULTS}/job_costs/plot_precision/{{table}}.tsv",
    shell:
        "python -m ris plot precision --spec {params.spec:q} --published {input.published:q}"
        " --metrics {params.metrics} --out {output.png:q} {output.pdf:q} > {log} 2>&1"


rule plot_num_masks:
    input:
        evaluations=table_inputs,
        published=PUBLISHED_CSV,
    output:
        png=report(
            f"{RESULTS}/plots/{{table}}/num_masks.png",
            caption="../report/num_masks.rst",
            category="{table}",
            subcategory="2. Figures",
            labels={"table": "{table}", "figure": "metrics vs number of masks N"},
        ),
        pdf=f"{RESULTS}/plots/{{table}}/num_masks.pdf",
    params:
        spec=spec_json,
        metrics=table_metric_files,
    wildcard_constraints:
        table=TABLE_NAME,
    conda:
        ENV
    log:
        f"{RESULTS}/logs/plots/{{table}}-num_masks.log",
    benchmark:
        f"{RESULTS}/job_costs/plot_num_masks/{{table}}.tsv",
    shell:
        "python -m ris plot num_masks --spec {params.spec:q} --published {input.published:q}"
        " --metrics {params.metrics} --out {output.png:q} {output.pdf:q} > {log} 2>&1"


rule plot_training:
    input:
        table_histories,
    output:
        png=report(
            f"{RESULTS}/plots/{{table}}/training.png",
            caption="../report/training.rst",
            category="{table}",
            subcategory="2. Figures",
            labels={"table": "{table}", "figure": "training curves"},
        ),
        pdf=f"{RESULTS}/plots/{{table}}/training.pdf",
    params:
        spec=spec_json,
    wildcard_constraints:
        table=TABLE_NAME,
    conda:
        ENV
    log:
        f"{RESULTS}/logs/plots/{{table}}-training.log",
    benchmark:
        f"{RESULTS}/job_costs/plot_training/{{table}}.tsv",
    shell:
        "python -m ris plot training --spec {params.spec:q} --histories {input:q}"
        " --out {output.png:q} {output.pdf:q} > {log} 2>&1"


rule plot_qualitative:
    input:
        evaluations=lambda wildcards: eval_dirs(grid_runs(wildcards.table)),
        prepared=lambda wildcards: f"{DATA}/prepared/{grid_split(wildcards.table)[0]}",
    output:
        successes=report(
            f"{RESULTS}/plots/{{table}}/qualitative_successes.png",
            caption="../report/qualitative.rst",
            category="{table}",
            subcategory="3. Qualitative",
            labels={"table": "{table}", "figure": "successes (highest IoU)"},
        ),
        successes_pdf=f"{RESULTS}/plots/{{table}}/qualitative_successes.pdf",
        failures=report(
            f"{RESULTS}/plots/{{table}}/qualitative_failures.png",
            caption="../report/qualitative.rst",
            category="{table}",
            subcategory="3. Qualitative",
            labels={"table": "{table}", "figure": "failures (lowest IoU)"},
        ),
        failures_pdf=f"{RESULTS}/plots/{{table}}/qualitative_failures.pdf",
        swap=report(
            f"{RESULTS}/plots/{{table}}/qualitative_swap.png",
            caption="../report/swap.rst",
            category="{table}",
            subcategory="3. Qualitative",
            labels={"table": "{table}", "figure": "swap the sentence"},
        ),
        swap_pdf=f"{RESULTS}/plots/{{table}}/qualitative_swap.pdf",
    params:
        spec=spec_json,
        samples=table_grid_samples,
        split=lambda wildcards: grid_split(wildcards.table)[1],
        images=lambda wildcards: str(images_dir(config, grid_split(wildcards.table)[0])),
    wildcard_constraints:
        table=TABLE_NAME,
    conda:
        ENV
    log:
        f"{RESULTS}/logs/plots/{{table}}-qualitative.log",
    benchmark:
        f"{RESULTS}/job_costs/plot_qualitative/{{table}}.tsv",
    shell:
        "python -m ris plot qualitative --spec {params.spec:q} --samples {params.samples}"
        " --split-table {input.prepared:q}/{params.split}.parquet --images {params.images:q}"
        " --out {output.successes:q} {output.successes_pdf:q}"
        " --out-failures {output.failures:q} {output.failures_pdf:q}"
        " --out-swap {output.swap:q} {output.swap_pdf:q} > {log} 2>&1"


if BREAKDOWN_RUNS:  # synthetic data only (its specs.json labels each sentence): paper scale plans no such job

    localrules:
        expression_types,

    rule expression_types:
        input:
            evaluations=eval_dirs([(k, BREAKDOWN_SPLIT) for k in BREAKDOWN_RUNS]),
            specs=f"{DATA}/refer/{BREAKDOWN_DATASET}/specs.json",
        output:
            # not report() items, and not under plots/: the report and plots/ hold the declared tables' outputs only
            csv=f"{RESULTS}/tables/expression_types.csv",
            md=f"{RESULTS}/tables/expression_types.md",
            png=f"{RESULTS}/tables/expression_types.png",
            pdf=f"{RESULTS}/tables/expression_types.pdf",
        params:
            runs=breakdown_run_args(),
            caption=f"Demo scale: {BREAKDOWN_DATASET} {BREAKDOWN_SPLIT}, the first seed of every run of the tables.",
        conda:
            ENV
        log:
            f"{RESULTS}/logs/expression_types/expression_types.log",
        benchmark:
            f"{RESULTS}/job_costs/expression_types/expression_types.tsv",
        shell:
            "python -m ris expression-types --specs {input.specs:q} {params.runs} --caption {params.caption:q}"
            " --out-csv {output.csv:q} --out-md {output.md:q} --out-plot {output.png:q} {output.pdf:q} > {log} 2>&1"


localrules:
    job_costs,


rule job_costs:
    # After everything of `rule all` (its targets are the inputs), and not part of it: a second `snakemake` has
    # nothing to do. `snakemake job_costs --report results/report.html` puts it in the report.
    input:
        report_targets(),
    output:
        csv=report(
            f"{RESULTS}/tables/job_costs.csv",
            caption="../report/job_costs.rst",
            category="job costs",
            labels={"content": "seconds and max RSS per rule"},
        ),
        md=f"{RESULTS}/tables/job_costs.md",
    params:
        root=JOB_COSTS,
    conda:
        ENV
    log:
        f"{RESULTS}/logs/job_costs.log",
    shell:
        "python -m ris job-costs --dir {params.root:q} --out-csv {output.csv:q} --out-md {output.md:q} > {log} 2>&1"


# Are the N masks N hypotheses? (ris/report/mask_diagnostics.py) Every evaluate job of a run whose prediction is
# a weighted sum of N masks writes <split>/mask_diagnostics.json; one table gathers them, and one figure per
# method of `mask_diagnostics.figures` (config.yaml) shows a few of its run's samples.
localrules:
    mask_diagnostics,
    plot_mask_hypotheses,


rule mask_diagnostics:
    input:
        eval_dirs(evaluations(config)),
    output:
        csv=report(
            f"{RESULTS}/tables/mask_diagnostics.csv",
            caption="../report/mask_diagnostics.rst",
            category="mask_diagnostics",
            subcategory="1. Table",
            labels={"table": "mask_diagnostics", "content": "one row per run (CSV)"},
        ),
        md=f"{RESULTS}/tables/mask_diagnostics.md",
    conda:
        ENV
    log:
        f"{RESULTS}/logs/tables/mask_diagnostics.log",
    benchmark:
        f"{RESULTS}/job_costs/mask_diagnostics/mask_diagnostics.tsv",
    shell:
        "python -m ris mask-diagnostics table --eval-dirs {input:q} --out-csv {output.csv:q} --out-md {output.md:q}"
        " > {log} 2>&1"


rule plot_mask_hypotheses:
    input:
        evaluation=lambda wildcards: eval_dirs([(MASK_FIGURE_RUNS[wildcards.method], None)]),
        prepared=lambda wildcards: f"{DATA}/prepared/{MASK_FIGURE_RUNS[wildcards.method].dataset}",
    output:
        png=report(
            f"{RESULTS}/plots/mask_diagnostics/{{method}}.png",
            caption="../report/mask_hypotheses.rst",
            category="mask_diagnostics",
            subcategory="2. Figures",
            labels={"method": "{method}", "figure": "highest-weighted masks"},
        ),
        pdf=f"{RESULTS}/plots/mask_diagnostics/{{method}}.pdf",
    params:
        diagnostics=lambda wildcards: mask_figure_file(wildcards.method),
        split=lambda wildcards: mask_figure_split(wildcards.method),
        images=lambda wildcards: str(images_dir(config, MASK_FIGURE_RUNS[wildcards.method].dataset)),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/plots/mask_hypotheses-{{method}}.log",
    benchmark:
        f"{RESULTS}/job_costs/plot_mask_hypotheses/{{method}}.tsv",
    shell:
        "python -m ris mask-diagnostics plot --diagnostics {params.diagnostics:q}"
        " --split-table {input.prepared:q}/{params.split}.parquet --images {params.images:q}"
        " --out {output.png:q} {output.pdf:q} > {log} 2>&1"
