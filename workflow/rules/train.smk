# One training job per (batch size, seed); `train_all` builds every run of
# train.batch_sizes x train.seeds.


rule train:
    input:
        shards=SHARDS_DIR,
        embedding=EMBEDDING,
    output:
        summary=f"{RUN_DIR}/metrics.json",
        metrics=f"{RUN_DIR}/metrics.jsonl",
        best=f"{RUN_DIR}/best.safetensors",
        final=f"{RUN_DIR}/final.safetensors",
        run_config=f"{RUN_DIR}/run_config.json",
    log:
        f"{LOGS}/train/{RUN}.log",
    benchmark:
        f"{BENCHMARKS}/train/{RUN}.tsv"
    conda:
        CONDA_ENV
    threads: job_threads("train")
    resources:
        mem_mb=config["resources"]["train"]["mem_mb"],
        runtime=config["resources"]["train"]["runtime"],
        gpu=job_gpus("train"),
    params:
        settings=train_settings(),
        checkpoints=f"{RUN_DIR}/checkpoints",
    shell:
        "logged {log:q} seqsetvae train --settings {params.settings:q} --shards {input.shards:q}"
        " --embedding {input.embedding:q} --batch-size {wildcards.bs} --seed {wildcards.seed}"
        " --out $(dirname {output.summary:q}) --threads {threads} --gpus {resources.gpu}"
