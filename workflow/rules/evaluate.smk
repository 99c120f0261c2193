# Evaluation: one job per run for all its splits, and the sentence-blind baselines per (dataset, split).


rule evaluate:
    # One job per run for all the splits its tables (and the stats target) evaluate it on: the model, text
    # encoder and MLflow start once. Writes <run folder>/<split>/{metrics.json,samples.csv}.
    input:
        model=run_model,
        prepared=f"{DATA}/prepared/{{dataset}}",
        text=text_features,
    output:
        directory(EVAL_RUN_DIR),
    params:
        splits=lambda wildcards: " ".join(EVAL_SPLITS[run_key(wildcards)]),
        images=lambda wildcards: str(images_dir(config, wildcards.dataset)),
    threads: 1
    conda:
        ENV
    log:
        f"{RESULTS}/logs/evaluate/{{dataset}}/{{method}}-{{backbone}}-n{{num_masks}}-s{{seed}}.log",
    shell:
        "python -m ris evaluate --checkpoint {input.model:q} --prepared {input.prepared:q} --splits {params.splits}"
        " --images {params.images:q} --out {output:q} --threads {threads} > {log} 2>&1"


if scale_baselines():  # none at paper scale: its DAG plans no baseline job

    rule baselines:
        # Sentence-blind guesses (all foreground, a random object, the largest object) scored on a split at the
        # runs' evaluation size: the rows a trained method must beat (ris/evaluation/baselines.py).
        input:
            prepared=f"{DATA}/prepared/{{dataset}}",
            instances=lambda wildcards: str(refer_dir(config, wildcards.dataset) / "instances.json"),
        output:
            [f"{RESULTS}/baselines/{{dataset}}/{{split}}/{b}/{f}" for b in scale_baselines() for f in BASELINE_FILES],
        params:
            size=config["scales"][config["scale"]]["train"]["image_size"],
            names=" ".join(scale_baselines()),
            out=f"{RESULTS}/baselines/{{dataset}}/{{split}}",
        threads: 1
        conda:
            ENV
        log:
            f"{RESULTS}/logs/baselines/{{dataset}}/{{split}}.log",
        shell:
            "python -m ris baselines --split-table {input.prepared:q}/{wildcards.split}.parquet"
            " --instances {input.instances:q} --size {params.size} --dataset {wildcards.dataset} --split {wildcards.split} --out-dir {params.out:q}"
            " --names {params.names} > {log} 2>&1"
