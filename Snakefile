# ris: referring image segmentation, reproduced end to end.
# `snakemake --cores 2` runs the whole DAG at the scale named in config.yaml (demo by default).
import copy

from ris.config import validate
from ris.rehearsal import rehearsal_overlay

configfile: "config.yaml"


report: "workflow/report/workflow.rst"  # `snakemake --report results/report.html`: tables and figures


validate(config, workflow.source_path("workflow/schemas/config.schema.yaml"))
CONFIG_AS_GIVEN = copy.deepcopy(config)  # the rehearsal's last rule replays it (workflow/rules/rehearsal.smk)
config.update(rehearsal_overlay(config))  # `rehearsal: true`: the same DAG on a slice (docs/scales.md)

RESULTS = config["results_dir"]
DATA = config["data_dir"]


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/rehearsal.smk"


rule all:
    input:
        # every table (csv, md, tex, html) and figure (png, pdf) of every table in config.yaml
        report_targets(),
        REHEARSAL_TARGETS,  # a rehearsal's summary, stats plan and report (none otherwise)
    default_target: True
