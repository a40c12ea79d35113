# Test-split evaluation and the memory report of each run; the baselines on the same split.


rule evaluate:
    input:
        shards=SHARDS_DIR,
        embedding=EMBEDDING,
        best=f"{RUN_DIR}/best.safetensors",
        run_config=f"{RUN_DIR}/run_config.json",
    output:
        metrics=f"{RESULTS}/eval/{RUN}.json",
        predictions=f"{RESULTS}/eval/{RUN}_predictions.parquet",
    log:
        f"{LOGS}/evaluate/{RUN}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{RUN}.tsv"
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
        "logged {log:q} seqsetvae evaluate --settings {params.settings:q} --shards {input.shards:q}"
        " --embedding {input.embedding:q} --weights {input.best:q}"
        " --run-config {input.run_config:q} --batch-size {wildcards.bs}"
        " --out {output.metrics:q} --predictions {output.predictions:q}"
        " --threads {threads} --gpus {resources.gpu}"


rule memory:
    input:
        train_summary=f"{RUN_DIR}/metrics.json",
        train_benchmark=f"{BENCHMARKS}/train/{RUN}.tsv",
        eval_metrics=f"{RESULTS}/eval/{RUN}.json",
        eval_benchmark=f"{BENCHMARKS}/evaluate/{RUN}.tsv",
    output:
        f"{RESULTS}/memory/{RUN}.json",
    log:
        f"{LOGS}/memory/{RUN}.log",
    conda:
        CONDA_ENV
    shell:
        "logged {log:q} seqsetvae memory --batch-size {wildcards.bs} --train-summary {input.train_summary:q}"
        " --train-benchmark {input.train_benchmark:q} --eval-metrics {input.eval_metrics:q}"
        " --eval-benchmark {input.eval_benchmark:q} --out {output:q}"


rule baseline:
    input:
        shards=SHARDS_DIR,
        vocab=VOCAB,
    output:
        metrics=expand(f"{RESULTS}/baselines/{{model}}.json", model=BASELINES),
        predictions=expand(
            f"{RESULTS}/baselines/{{model}}_predictions.parquet", model=BASELINES
        ),
    log:
        f"{LOGS}/baseline.log",
    benchmark:
        f"{BENCHMARKS}/baseline.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=config["resources"]["evaluate"]["mem_mb"],
        runtime=config["resources"]["evaluate"]["runtime"],
    params:
        settings=settings("baseline", "evaluate"),
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics[0]),
    shell:
        "logged {log:q} seqsetvae baseline --settings {params.settings:q} --shards {input.shards:q}"
        " --vocab {input.vocab:q} --out-dir {params.out_dir:q} --threads {threads}"


rule meds_predictions:
    input:
        predictions=rules.evaluate.output.predictions,
        labels=FORMAT_LABELS,
    output:
        f"{RESULTS}/eval/{RUN}_meds_predictions.parquet",
    log:
        f"{LOGS}/meds_predictions/{RUN}.log",
    conda:
        CONDA_ENV
    shell:
        "logged {log:q} seqsetvae meds-predictions --predictions {input.predictions:q}"
        " --labels {input.labels:q} --out {output:q}"
