# SeqSetVAE pipeline: raw ICU events -> validated events -> embedding -> shards ->
# one training job per batch size -> evaluation and memory -> reports/batch_comparison.md
from snakemake.utils import min_version, validate

min_version("8.20")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# light jobs run in the Snakemake process itself, not as cluster jobs
localrules:
    all,
    shards,
    train_all,
    splits,
    embedding,
    qc,
    memory,
    report,
    meds_predictions,


rule all:
    input:
        REPORT,
        MEDS_PREDICTIONS,


rule shards:
    input:
        SHARDS_DIR,
        QC,
        EMBEDDING,


rule train_all:
    input:
        TRAIN_SUMMARIES,
