# reports/batch_comparison.md: one row per batch size, figures, environment.


rule report:
    input:
        train=TRAIN_SUMMARIES,
        train_logs=expand(f"{RESULTS}/runs/bs{{bs}}/metrics.jsonl", bs=BATCH_SIZES),
        evals=EVALS,
        predictions=expand(
            f"{RESULTS}/eval/bs{{bs}}_predictions.parquet", bs=BATCH_SIZES
        ),
        memory=MEMORY,
        qc=QC,
        shards=SHARDS_DIR,
    output:
        report=REPORT,
        figures=expand(
            f"{REPORTS}/figures/{{name}}.png",
            name=["throughput_memory", "training_curves", "roc_curves"],
        ),
    log:
        f"{LOGS}/report.log",
    conda:
        CONDA_ENV
    params:
        settings=settings("data", "shards", "model", "train", "evaluate"),
        batch_sizes=BATCH_SIZES,
        results=lambda wildcards, input: os.path.dirname(input.qc),
    shell:
        "seqsetvae report --settings {params.settings:q} --results {params.results:q}"
        " --batch-sizes {params.batch_sizes} --out {output.report:q} > {log:q} 2>&1"
