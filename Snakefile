# ris: referring image segmentation, reproduced end to end.
# `snakemake --cores 2` runs the whole DAG at the scale named in config.yaml (demo by default).
from ris.config import validate

configfile: "config.yaml"


report: "workflow/report/workflow.rst"  # `snakemake --report results/report.html`: tables and figures


validate(config, workflow.source_path("workflow/schemas/config.schema.yaml"))

RESULTS = config["results_dir"]
DATA = config["data_dir"]


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/stats.smk"


rule all:
    input:
        # every table (csv, md, tex, html) and figure (png, pdf) of every table in config.yaml
        report_targets(),
    default_target: True
