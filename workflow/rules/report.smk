# reports/batch_comparison.{json,md}: every run, the baselines, figures, environment.


rule report:
    input:
        train=TRAIN_SUMMARIES,
        train_logs=expand(f"{RESULTS}/runs/{{run}}/metrics.jsonl", run=RUNS),
        evals=EVALS,
        predictions=expand(rules.evaluate.output.predictions, bs=BATCH_SIZES, seed=SEEDS),
        memory=MEMORY,
        baselines=BASELINE_EVALS,
        qc=QC,
        shards=SHARDS_DIR,
    output:
        report=report(
            REPORT,
            caption="../report/batch_comparison.rst",
            category="Batch-size study",
        ),
        json=report(
            REPORT_JSON,
            caption="../report/batch_comparison_json.rst",
            category="Batch-size study",
        ),
        validation_curves=report(
            f"{REPORTS}/figures/validation_curves.png",
            caption="../report/validation_curves.rst",
            category="Figures",
        ),
        training_loss=report(
            f"{REPORTS}/figures/training_loss.png",
            caption="../report/training_loss.rst",
            category="Figures",
        ),
        throughput_memory=report(
            f"{REPORTS}/figures/throughput_memory.png",
            caption="../report/throughput_memory.rst",
            category="Figures",
        ),
        reliability=report(
            f"{REPORTS}/figures/reliability.png",
            caption="../report/reliability.rst",
            category="Figures",
        ),
    log:
        f"{LOGS}/report.log",
    conda:
        CONDA_ENV
    params:
        settings=settings(
            "data", "shards", "model", "train", "evaluate", "baseline", "report"
        ),
        batch_sizes=BATCH_SIZES,
        seeds=SEEDS,
        baselines=BASELINES,
        results=lambda wildcards, input: os.path.dirname(input.qc),
    shell:
        "logged {log:q} seqsetvae report --settings {params.settings:q} --results {params.results:q}"
        " --batch-sizes {params.batch_sizes} --seeds {params.seeds}"
        " --baselines {params.baselines} --out {output.report:q}"
