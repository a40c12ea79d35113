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
    choose_lr,


rule all:
    input:
        REPORT,
        # MEDS datasets: every compared run's test predictions in meds-evaluation's layout
        of_chosen_runs(f"{RESULTS}/eval/{{run}}_meds_predictions.parquet")
        if FORMAT == "meds"
        else [],


rule shards:
    input:
        SHARDS_DIR,
        QC,
        EMBEDDING,


rule train_all:
    input:
        expand(
            f"{GRID_RUN_DIR}/metrics.json",
            bs=BATCH_SIZES,
            lr=[lr_tag(m) for m in LR_GRID] if len(LR_GRID) > 1 else [],
            seed=GRID_SEEDS,
        ),
        LR_CHOICES,
        of_chosen_runs(f"{RESULTS}/runs/{{run}}/metrics.json"),
