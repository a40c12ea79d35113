# reports/batch_comparison.{json,md}: every run, the baselines, figures, environment.


rule report:
    input:
        lr_grid=LR_CHOICES,
        train=of_chosen_runs(f"{RESULTS}/runs/{{run}}/metrics.json"),
        train_logs=of_chosen_runs(f"{RESULTS}/runs/{{run}}/metrics.jsonl"),
        evals=of_chosen_runs(f"{RESULTS}/eval/{{run}}.json"),
        predictions=of_chosen_runs(f"{RESULTS}/eval/{{run}}_predictions.parquet"),
        memory=of_chosen_runs(f"{RESULTS}/memory/{{run}}.json"),
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
        lr_grid_figure=report(
            f"{REPORTS}/figures/lr_grid.png",
            caption="../report/lr_grid.rst",
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
        runs=lambda wildcards: chosen_runs(),
        baselines=BASELINES,
        results=lambda wildcards, input: os.path.dirname(input.qc),
    shell:
        "logged {log:q} seqsetvae report --settings {params.settings:q} --results {params.results:q}"
        " --runs {params.runs} --lr-grid {input.lr_grid:q}"
        " --baselines {params.baselines} --out {output.report:q}"
