# Data: synthesize (demo) or REFER files (paper) -> prepared Parquet tables per split.


rule synthesize:
    output:
        refs=f"{DATA}/refer/{{dataset}}/refs(unc).p",
        instances=f"{DATA}/refer/{{dataset}}/instances.json",
        specs=f"{DATA}/refer/{{dataset}}/specs.json",  # sent_id -> semantic spec (expression_types table)
    params:
        cfg=lambda wildcards: json.dumps(config.get("synthetic", {})),
        out=lambda wildcards: str(refer_dir(config, wildcards.dataset)),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/synthesize/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/job_costs/synthesize/{{dataset}}.tsv",
    shell:
        "python -m ris synthesize --out {params.out} --config {params.cfg:q} > {log} 2>&1"


localrules:
    download,


rule download:
    # Resumable, mirror-by-mirror, size- and sha256-verified download, then a safe extraction.
    # Local: cluster compute nodes often have no internet access.
    output:
        f"{DATA}/{{dest}}/.{{archive}}.extracted",
    params:
        urls=lambda wildcards: " ".join(f"--url {u}" for u in config["downloads"][wildcards.archive]["urls"]),
        size=lambda wildcards: config["downloads"][wildcards.archive].get("size") or 0,
        sha=lambda wildcards: config["downloads"][wildcards.archive].get("sha256") or "",
        downloads=f"{DATA}/downloads",
        extract=lambda wildcards: f"{DATA}/{wildcards.dest}",
    wildcard_constraints:
        dest=r"refer|images",
    conda:
        ENV
    log:
        f"{RESULTS}/logs/download/{{dest}}-{{archive}}.log",
    benchmark:
        f"{RESULTS}/job_costs/download/{{dest}}-{{archive}}.tsv",
    shell:
        "python -m ris download --name {wildcards.archive:q} {params.urls} --size {params.size}"
        " --sha256 {params.sha:q} --download-dir {params.downloads:q} --extract-dir {params.extract:q}"
        " > {log} 2>&1"


rule prepare:
    input:
        lambda wildcards: prepare_inputs(config, wildcards.dataset),
    output:
        directory(f"{DATA}/prepared/{{dataset}}"),
    params:
        refer=lambda wildcards: str(refer_dir(config, wildcards.dataset)),
        split_by=lambda wildcards: config["datasets"][wildcards.dataset]["split_by"],
        splits=lambda wildcards: " ".join(dataset_splits(wildcards.dataset)),
        images=lambda wildcards: str(images_dir(config, wildcards.dataset)),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/job_costs/prepare/{{dataset}}.tsv",
    shell:
        "python -m ris prepare --refer-dir {params.refer:q} --split-by {params.split_by} --splits {params.splits}"
        " --images {params.images:q} --out {output:q} > {log} 2>&1"


rule text_features:
    # Scales that freeze a pretrained text encoder (the demo's MiniLM): its features of every sentence of the
    # dataset, computed once here instead of in every training and evaluation job (ris/models/text.py).
    input:
        f"{DATA}/prepared/{{dataset}}",
    output:
        f"{DATA}/text_features/{{dataset}}.pt",
    params:
        pretrained=frozen_text(config),
        max_tokens=config["scales"][config["scale"]]["train"]["max_tokens"],
    threads: 1
    conda:
        ENV
    log:
        f"{RESULTS}/logs/text_features/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/job_costs/text_features/{{dataset}}.tsv",
    shell:
        "python -m ris encode-text --prepared {input:q} --pretrained {params.pretrained:q}"
        " --max-tokens {params.max_tokens} --out {output:q} --threads {threads} > {log} 2>&1"
