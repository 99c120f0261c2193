# `snakemake --cores 2 stats`: the table named under `stats:` in config.yaml, again with that section's
# seeds (their runs are trained and evaluated by the usual rules, seed 0 shared with `rule all`), with
# mean ± std and 95% CIs over seeds and a paired bootstrap over samples per comparison (ris/report/stats.py).
#   results/stats/<table>.{csv,md,tex,html}
# Not part of `rule all`: the default demo keeps its budget.
from ris.config import stats_config
from ris.report.spec import stats_spec

if config.get("stats"):
    STATS_TABLE = config["stats"]["table"]
    STATS_EVALUATIONS = table_evaluations(stats_config(config), STATS_TABLE)

    localrules:
        stats,
        stats_table,

    rule stats:
        input:
            expand(f"{RESULTS}/stats/{STATS_TABLE}.{{ext}}", ext=TABLE_FORMATS),

    rule stats_table:
        input:
            evaluations=eval_dirs(STATS_EVALUATIONS) + table_baseline_files(STATS_TABLE),
            published=PUBLISHED_CSV,
        output:
            csv=f"{RESULTS}/stats/{STATS_TABLE}.csv",
            md=f"{RESULTS}/stats/{STATS_TABLE}.md",
            tex=f"{RESULTS}/stats/{STATS_TABLE}.tex",
            html=f"{RESULTS}/stats/{STATS_TABLE}.html",
        params:
            spec=json.dumps(stats_spec(config)),
            metrics=quoted(
                [f"{RESULTS}/eval/{k.path}/{s}/metrics.json" for k, s in STATS_EVALUATIONS]
                + table_baseline_files(STATS_TABLE)
            ),
        conda:
            ENV
        log:
            f"{RESULTS}/logs/stats/{STATS_TABLE}.log",
        benchmark:
            f"{RESULTS}/job_costs/stats_table/{STATS_TABLE}.tsv",
        shell:
            "python -m ris tables --spec {params.spec:q} --published {input.published:q} --metrics {params.metrics}"
            " --out-csv {output.csv:q} --out-md {output.md:q} --out-tex {output.tex:q} --out-html {output.html:q}"
            " > {log} 2>&1"
