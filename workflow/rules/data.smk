# Raw CSVs -> validated events (patient partitions) -> statistics and vocabulary ->
# embedding table -> sets, truncation, length-sorted safetensors shards -> qc.json


rule synthetic_data:
    output:
        events=RAW_EVENTS,
        labels=RAW_LABELS,
    log:
        f"{LOGS}/synthetic_data.log",
    benchmark:
        f"{BENCHMARKS}/synthetic_data.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=config["resources"]["data"]["mem_mb"],
        runtime=config["resources"]["data"]["runtime"],
    params:
        settings=settings("synthetic", "data"),
    shell:
        "logged {log:q} seqsetvae synthetic --settings {params.settings:q}"
        " --events {output.events:q} --labels {output.labels:q}"


rule task:
    input:
        events=raw_events(),
        task=[TASK] if TASK else [],
    output:
        directory(TASK_LABELS),
    log:
        f"{LOGS}/task.log",
    benchmark:
        f"{BENCHMARKS}/task.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=config["resources"]["data"]["mem_mb"],
        runtime=config["resources"]["data"]["runtime"],
    shell:
        "logged {log:q} seqsetvae task --events {input.events:q} --task {input.task:q} --out {output:q}"


rule format_labels:
    input:
        events=raw_events(),
        labels=format_labels_input(),
    output:
        labels=FORMAT_LABELS,
        splits=[FORMAT_SPLITS] if format_carries_splits() else [],
    log:
        f"{LOGS}/format_labels.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=config["resources"]["data"]["mem_mb"],
        runtime=config["resources"]["data"]["runtime"],
    params:
        settings=settings("data"),
        labels=lambda wildcards, input: option("--labels", input.labels),
        splits=lambda wildcards, output: option("--splits-out", output.splits),
    shell:
        "logged {log:q} seqsetvae labels --settings {params.settings:q} --events {input.events:q}"
        " {params.labels} --out {output.labels:q} {params.splits}"


rule splits:
    input:
        labels=raw_labels(),
        splits=splits_file(),
    output:
        SPLITS_CSV,
    log:
        f"{LOGS}/splits.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        settings=settings("data"),
        splits=lambda wildcards, input: option("--splits", input.splits),
    shell:
        "logged {log:q} seqsetvae splits --settings {params.settings:q} --labels {input.labels:q}"
        " {params.splits} --out {output:q}"


rule ingest:
    input:
        events=raw_events(),
        labels=raw_labels(),
        splits=SPLITS_CSV,
    output:
        directory(EVENTS_DIR),
    log:
        f"{LOGS}/ingest.log",
    benchmark:
        f"{BENCHMARKS}/ingest.tsv"
    conda:
        CONDA_ENV
    threads: config["resources"]["data"]["threads"]
    resources:
        mem_mb=config["resources"]["data"]["mem_mb"],
        runtime=config["resources"]["data"]["runtime"],
    params:
        settings=settings("data"),
    shell:
        "logged {log:q} seqsetvae ingest --settings {params.settings:q} --events {input.events:q}"
        " --labels {input.labels:q} --splits {input.splits:q} --out {output:q}"
        " --threads {threads}"


rule stats:
    input:
        EVENTS_DIR,
    output:
        stats=STATS,
        vocab=VOCAB,
    log:
        f"{LOGS}/stats.log",
    benchmark:
        f"{BENCHMARKS}/stats.tsv"
    conda:
        CONDA_ENV
    threads: config["resources"]["data"]["threads"]
    resources:
        mem_mb=config["resources"]["data"]["mem_mb"],
        runtime=config["resources"]["data"]["runtime"],
    params:
        settings=settings("data"),
    shell:
        "logged {log:q} seqsetvae stats --settings {params.settings:q} --events {input:q}"
        " --stats {output.stats:q} --vocab {output.vocab:q}"


rule embedding:
    input:
        vocab=VOCAB,
        table=(
            [config["embedding"]["table"]]
            if config["embedding"]["method"] == "table"
            else []
        ),
    output:
        EMBEDDING,
    log:
        f"{LOGS}/embedding.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        settings=settings("embedding"),
    shell:
        "logged {log:q} seqsetvae embedding --settings {params.settings:q} --vocab {input.vocab:q}"
        " --out {output:q}"


rule make_shards:
    input:
        events=EVENTS_DIR,
        stats=STATS,
        vocab=VOCAB,
    output:
        shards=directory(SHARDS_DIR),
        qc=f"{RESULTS}/shards_qc.json",
    log:
        f"{LOGS}/shards.log",
    benchmark:
        f"{BENCHMARKS}/shards.tsv"
    conda:
        CONDA_ENV
    threads: config["resources"]["data"]["threads"]
    resources:
        mem_mb=config["resources"]["data"]["mem_mb"],
        runtime=config["resources"]["data"]["runtime"],
    params:
        settings=settings("data", "shards"),
    shell:
        "logged {log:q} seqsetvae shards --settings {params.settings:q} --events {input.events:q}"
        " --stats {input.stats:q} --vocab {input.vocab:q} --out {output.shards:q}"
        " --qc {output.qc:q}"


rule qc:
    input:
        events=EVENTS_DIR,
        shards_qc=rules.make_shards.output.qc,
        shards=rules.make_shards.output.shards,
    output:
        QC,
    log:
        f"{LOGS}/qc.log",
    conda:
        CONDA_ENV
    shell:
        "logged {log:q} seqsetvae qc --events {input.events:q} --shards-qc {input.shards_qc:q}"
        " --shards {input.shards:q} --out {output:q}"
