# Evaluation: one job per run for all its splits, and the sentence-blind baselines per (dataset, split).
from ris.config import evaluate_gpus, evaluate_runtime_min, evaluate_settings

EVAL = evaluate_settings(config)  # scales.<scale>.evaluate: device, precision, batch size, threads, sizing


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
        device=EVAL["device"],
        precision=EVAL["precision"],
        batch_size=EVAL["batch_size"],
        workers=EVAL["num_workers"],
    # torch's CPU threads in the job (ris evaluate --threads: torch.set_num_threads); sbatch --cpus-per-task.
    threads: EVAL["threads"]
    resources:
        # One GPU where the scale evaluates on CUDA (paper), none on the CPU (demo); a profile may override.
        gpu=evaluate_gpus(config),
        # Minutes (sbatch -t) from the scale's evaluation rate, margin and the job's number of splits.
        runtime=lambda wildcards: evaluate_runtime_min(config, len(EVAL_SPLITS[run_key(wildcards)])),
        **rehearsal_mem_mb(config, "evaluate"),  # a rehearsal's (config.yaml rehearsal_slice.mem_mb)
    conda:
        ENV
    log:
        f"{RESULTS}/logs/evaluate/{{dataset}}/{{method}}-{{backbone}}-n{{num_masks}}-s{{seed}}.log",
    benchmark:
        f"{RESULTS}/job_costs/evaluate/{{dataset}}/{{method}}-{{backbone}}-n{{num_masks}}-s{{seed}}.tsv",
    shell:
        "python -m ris evaluate --checkpoint {input.model:q} --prepared {input.prepared:q} --splits {params.splits}"
        " --images {params.images:q} --out {output:q} --threads {threads} --device {params.device}"
        " --precision {params.precision} --batch-size {params.batch_size} --workers {params.workers} > {log} 2>&1"


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
        benchmark:
            f"{RESULTS}/job_costs/baselines/{{dataset}}/{{split}}.tsv",
        shell:
            "python -m ris baselines --split-table {input.prepared:q}/{wildcards.split}.parquet"
            " --instances {input.instances:q} --size {params.size} --dataset {wildcards.dataset} --split {wildcards.split} --out-dir {params.out:q}"
            " --names {params.names} > {log} 2>&1"
