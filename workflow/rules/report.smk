# reports/batch_comparison.md: one row per batch size, figures, environment.


rule report:
    input:
        train=TRAIN_SUMMARIES,
        evals=EVALS,
        memory=MEMORY,
        qc=QC,
        shards=SHARDS_DIR,
    output:
        REPORT,
    params:
        settings=settings("data", "shards", "model", "train", "evaluate"),
        batch_sizes=BATCH_SIZES,
        results=lambda wildcards, input: os.path.dirname(input.qc),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/report.log",
    shell:
        "seqsetvae report --settings {params.settings:q} --results {params.results:q}"
        " --batch-sizes {params.batch_sizes} --out {output:q} > {log:q} 2>&1"
