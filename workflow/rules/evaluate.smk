# Test-split evaluation and the memory report of each batch size.


rule evaluate:
    input:
        shards=SHARDS_DIR,
        embedding=EMBEDDING,
        best=f"{RUN_DIR}/best.safetensors",
        run_config=f"{RUN_DIR}/run_config.json",
    output:
        metrics=f"{RESULTS}/eval/bs{{bs}}.json",
        predictions=f"{RESULTS}/eval/bs{{bs}}_predictions.parquet",
    log:
        f"{LOGS}/evaluate/bs{{bs}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/bs{{bs}}.tsv"
    conda:
        CONDA_ENV
    threads: job_threads("evaluate")
    resources:
        mem_mb=config["resources"]["evaluate"]["mem_mb"],
        runtime=config["resources"]["evaluate"]["runtime"],
        gpu=job_gpus("evaluate"),
    params:
        settings=settings("evaluate"),
    shell:
        "seqsetvae evaluate --settings {params.settings:q} --shards {input.shards:q}"
        " --embedding {input.embedding:q} --weights {input.best:q}"
        " --run-config {input.run_config:q} --batch-size {wildcards.bs}"
        " --out {output.metrics:q} --predictions {output.predictions:q}"
        " --threads {threads} > {log:q} 2>&1"


rule memory:
    input:
        train_summary=f"{RUN_DIR}/metrics.json",
        train_benchmark=f"{BENCHMARKS}/train/bs{{bs}}.tsv",
        eval_metrics=f"{RESULTS}/eval/bs{{bs}}.json",
        eval_benchmark=f"{BENCHMARKS}/evaluate/bs{{bs}}.tsv",
    output:
        f"{RESULTS}/memory/bs{{bs}}.json",
    log:
        f"{LOGS}/memory/bs{{bs}}.log",
    conda:
        CONDA_ENV
    shell:
        "seqsetvae memory --batch-size {wildcards.bs} --train-summary {input.train_summary:q}"
        " --train-benchmark {input.train_benchmark:q} --eval-metrics {input.eval_metrics:q}"
        " --eval-benchmark {input.eval_benchmark:q} --out {output:q} > {log:q} 2>&1"
