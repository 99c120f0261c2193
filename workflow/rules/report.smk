# Tables and figures from the metrics.json files (the source of truth for every number).


localrules:
    tables,
    plots,


rule tables:
    input:
        table_metric_files,
    output:
        csv=f"{RESULTS}/tables/{{table}}.csv",
        md=f"{RESULTS}/tables/{{table}}.md",
    params:
        caption=lambda wildcards: config["tables"][wildcards.table].get("caption", wildcards.table),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/tables/{{table}}.log",
    shell:
        "python -m ris tables --metrics {input:q} --out-csv {output.csv:q} --out-md {output.md:q}"
        " --caption {params.caption:q} > {log} 2>&1"


rule plots:
    input:
        table=rules.tables.output.csv,
        histories=table_histories,
    output:
        f"{RESULTS}/plots/{{table}}.png",
    conda:
        ENV
    log:
        f"{RESULTS}/logs/plots/{{table}}.log",
    shell:
        "python -m ris plot --table {input.table:q} --histories {input.histories:q} --out {output:q} > {log} 2>&1"
