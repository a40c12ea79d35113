# Training: the learning-rate grid of each batch size, its choice on validation data, and
# one compared run per (batch size, seed) at the chosen rate; `train_all` builds them all.


rule pretrain:
    input:
        shards=SHARDS_DIR,
        embedding=EMBEDDING,
    output:
        weights=PRETRAINED,
        metrics=f"{RESULTS}/pretrain/metrics.json",
    log:
        f"{LOGS}/pretrain.log",
    benchmark:
        f"{BENCHMARKS}/pretrain.tsv"
    conda:
        CONDA_ENV
    threads: job_threads("train")
    resources:
        mem_mb=config["resources"]["train"]["mem_mb"],
        runtime=config["resources"]["train"]["runtime"],
        gpu=job_gpus("train"),
    params:
        settings=pretrain_settings(),
    shell:
        "logged {log:q} seqsetvae pretrain --settings {params.settings:q} --shards {input.shards:q}"
        " --embedding {input.embedding:q} --out $(dirname {output.weights:q})"
        " --threads {threads} --gpus {resources.gpu}"


rule train:
    input:
        shards=SHARDS_DIR,
        embedding=EMBEDDING,
        pretrained=pretrained_input(),
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
        init=option("--init-weights", PRETRAINED if PRETRAIN else None),
    shell:
        "logged {log:q} seqsetvae train --settings {params.settings:q} --shards {input.shards:q}"
        " --embedding {input.embedding:q} --batch-size {wildcards.bs} --seed {wildcards.seed}"
        " --lr-multiplier {wildcards.lr} --out $(dirname {output.summary:q})"
        " --threads {threads} --gpus {resources.gpu} {params.init}"


if SEPARATE_GRID:

    # the grid on its own budget (train.lr_grid_epochs): only its validation is read, so
    # on one machine one such run goes on each CPU (grid_job_threads)
    rule train_grid:
        input:
            shards=SHARDS_DIR,
            embedding=EMBEDDING,
            pretrained=pretrained_input(),
        output:
            summary=f"{GRID_RUN_DIR}/metrics.json",
        log:
            f"{LOGS}/train_grid/{RUN}.log",
        benchmark:
            f"{BENCHMARKS}/train_grid/{RUN}.tsv"
        conda:
            CONDA_ENV
        threads: grid_job_threads
        resources:
            mem_mb=config["resources"]["train"]["mem_mb"],
            runtime=config["resources"]["train"]["runtime"],
            gpu=job_gpus("train"),
        params:
            settings=train_settings(epochs=GRID_EPOCHS),
            threads=grid_torch_threads,
            init=option("--init-weights", PRETRAINED if PRETRAIN else None),
        shell:
            "logged {log:q} seqsetvae train --settings {params.settings:q} --shards {input.shards:q}"
            " --embedding {input.embedding:q} --batch-size {wildcards.bs} --seed {wildcards.seed}"
            " --lr-multiplier {wildcards.lr} --out $(dirname {output.summary:q})"
            " --threads {params.threads} --gpus {resources.gpu} {params.init}"


checkpoint choose_lr:
    input:
        grid_summaries,
    output:
        LR_CHOICE,
    log:
        f"{LOGS}/choose_lr/bs{{bs}}.log",
    conda:
        CONDA_ENV
    params:
        grid=LR_GRID,
    shell:
        "logged {log:q} seqsetvae choose-lr --batch-size {wildcards.bs} --grid {params.grid}"
        " --runs {input:q} --out {output:q}"
