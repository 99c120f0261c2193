# Training: one job per dataset x method x backbone x N x seed (or the import of released weights).


localrules:
    mlflow_init,


rule mlflow_init:
    # Creates the store before the fan-out; every entry point would also create it under a file lock
    # (ris.training.tracking.init_store), this job keeps the start-up out of the training jobs.
    output:
        f"{RESULTS}/mlflow_ready.json",
    params:
        uri=tracking_uri(config),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/mlflow_init.log",
    benchmark:
        f"{RESULTS}/job_costs/mlflow_init/mlflow_init.tsv",
    shell:
        "python -m ris mlflow-init --uri {params.uri:q} --marker {output:q} > {log} 2>&1"


rule pretrain:
    # The demo's ImageNet: one tiny backbone family trained on its own synthetic images (dense shape, colour and
    # size labels; ris/training/pretrain.py). Only scales with a `pretrain:` section (the demo) ask for it.
    output:
        model=f"{RESULTS}/pretrained/{{backbone}}.pt",
        metrics=f"{RESULTS}/pretrained/{{backbone}}.json",
    params:
        cfg=lambda wildcards: json.dumps(pretrain_config(config, wildcards.backbone), sort_keys=True),
    threads: 1
    conda:
        ENV
    log:
        f"{RESULTS}/logs/pretrain/{{backbone}}.log",
    benchmark:
        f"{RESULTS}/job_costs/pretrain/{{backbone}}.tsv",
    shell:
        "python -m ris pretrain --config {params.cfg:q} --out {output.model:q} --metrics {output.metrics:q}"
        " --threads {threads} > {log} 2>&1"


rule train:
    input:
        prepared=f"{DATA}/prepared/{{dataset}}",
        text=text_features,
        pretrained=pretrained_input,
        mlflow=rules.mlflow_init.output,
    output:
        model=rehearsal_temp(f"{RUN_DIR}/model.pt"),
        history=f"{RUN_DIR}/history.jsonl",
    params:
        cfg=lambda wildcards: json.dumps(run_config(config, run_key(wildcards)), sort_keys=True),
        out=RUN_DIR,
    # Snakemake lowers it to --cores on a local run; no reference to workflow.cores, which is None when
    # no --cores is given (e.g. `snakemake --report results/report.html`).
    threads: config["scales"][config["scale"]].get("threads", 1)
    resources:
        # GPUs of the job (train.gpus; a profile may override it); > 1 runs one DDP process per GPU (torchrun).
        gpu=lambda wildcards: int(run_config(config, run_key(wildcards))["train"].get("gpus", 0)),
        **rehearsal_mem_mb(config, "train"),  # a rehearsal's measured peak (config.yaml rehearsal_slice.mem_mb)
    conda:
        ENV
    log:
        f"{RESULTS}/logs/train/{{dataset}}/{{method}}-{{backbone}}-n{{num_masks}}-s{{seed}}.log",
    benchmark:
        f"{RESULTS}/job_costs/train/{{dataset}}/{{method}}-{{backbone}}-n{{num_masks}}-s{{seed}}.tsv",
    shell:
        # Exit status 75: stopped by SIGTERM/SIGUSR1 after saving work/last.pt; a rerun resumes from it.
        "python -m ris train --run-config {params.cfg:q} --out {params.out:q} --threads {threads}"
        " --nproc {resources.gpu} > {log} 2>&1"


rule import_released:
    # A run named under `released_weights` (config.yaml): the authors' checkpoint, imported, not trained.
    input:
        checkpoint=lambda wildcards: released_checkpoint(config, run_key(wildcards))["path"],
    output:
        model=f"{RUN_DIR}/released.pt",
    params:
        cfg=lambda wildcards: json.dumps(run_config(config, run_key(wildcards)), sort_keys=True),
        fmt=lambda wildcards: released_checkpoint(config, run_key(wildcards))["format"],
    conda:
        ENV
    log:
        f"{RESULTS}/logs/import/{{dataset}}/{{method}}-{{backbone}}-n{{num_masks}}-s{{seed}}.log",
    benchmark:
        f"{RESULTS}/job_costs/import_released/{{dataset}}/{{method}}-{{backbone}}-n{{num_masks}}-s{{seed}}.tsv",
    shell:
        "python -m ris import-checkpoint --format {params.fmt} {input.checkpoint:q} --out {output.model:q}"
        " --run-config {params.cfg:q} > {log} 2>&1"
