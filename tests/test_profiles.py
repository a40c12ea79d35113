"""The Snakemake profiles and the cluster-facing parts of the rules, without a cluster.

Dry runs show which jobs a run makes and what each asks for; tests/test_slurm.py runs
the same through a real SLURM.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "profiles" / "slurm"
LOCAL_PROFILE = REPO / "profiles" / "local"
# rules whose jobs run inside the Snakemake process, never as cluster jobs
LOCAL_RULES = {
    "all",
    "shards",
    "train_all",
    "splits",
    "embedding",
    "qc",
    "memory",
    "report",
    "meds_predictions",
    "choose_lr",
}
# format_labels reads a whole non-CSV dataset (every P2019 file): a cluster job
CLUSTER_RULES = {
    "synthetic_data",
    "ingest",
    "stats",
    "make_shards",
    "pretrain",
    "train",
    "evaluate",
    "baseline",
    "format_labels",
    "task",
}
DATA_RULES = {"synthetic_data", "ingest", "stats", "make_shards"}

needs_slurm_plugin = pytest.mark.skipif(
    importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason="snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')",
)


def dry_run(workdir: Path, config: dict, *args: str) -> list[dict]:
    """`snakemake -n` over `config` in `workdir`: one dict per job (rule, wildcards, threads, resources)."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "-n",
        "all",
        *args,
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    jobs, group, groups = [], None, 0
    for line in run.stdout.splitlines():
        if re.search(r"\] Group job train_evaluate ", line):
            group, groups = groups, groups + 1
        header = re.match(r"^(\s*)(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if header:
            in_group = group if header.group(1) else None  # group members are indented
            jobs.append({"rule": header.group(2), "wildcards": "", "threads": 1, "resources": {}, "group": in_group})
            continue
        key, _, value = line.strip().partition(": ")
        if jobs and line.startswith("    ") and key in ("wildcards", "threads", "resources"):
            if key == "threads":
                jobs[-1]["threads"] = int(value)
            elif key == "wildcards":
                jobs[-1]["wildcards"] = value
            else:
                jobs[-1]["resources"] = dict(item.split("=", 1) for item in value.split(", "))
    return jobs


def by_rule(jobs: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for job in jobs:
        grouped.setdefault(job["rule"], []).append(job)
    return grouped


def test_slurm_profile_settings():
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["jobs"] >= 1 and profile["latency-wait"] >= 5
    assert profile["retries"] >= 1  # a cancelled or preempted training job is resubmitted and resumes
    # without an accounting database sacct only says "accounting storage is disabled"
    assert profile["slurm-status-command"] == "squeue"
    # account and partition are the user's: never in the profile or the rules
    assert not {"slurm_account", "slurm_partition"} & set(profile.get("default-resources", {}))
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        text = path.read_text()
        for word in ("slurm_account", "slurm_partition", "slurm_extra"):
            assert word not in text, f"{path.name} hard-codes {word}"


def test_local_profile_settings():
    profile = yaml.safe_load((LOCAL_PROFILE / "config.yaml").read_text())
    assert profile["cores"] == "all"
    assert profile["resources"] == {"gpu": 1}
    assert "executor" not in profile


def test_localrules_are_the_light_rules(tmp_path, tiny_pipeline_config):
    """Parsed by Snakemake itself: the light rules are local, the heavy ones say what they need."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_pipeline_config()))
    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[tmp_path / "config.yaml"]),
            storage_settings=StorageSettings(),
            snakefile=REPO / "Snakefile",
            workdir=tmp_path,
        )._workflow
        rules = {rule.name: rule for rule in workflow.rules}
        assert set(workflow._localrules) == LOCAL_RULES
    assert set(rules) == LOCAL_RULES | CLUSTER_RULES
    for name in CLUSTER_RULES:  # never left to a site's default memory or wall time
        assert {"mem_mb", "runtime"} <= set(rules[name].resources), name


@needs_slurm_plugin
def test_slurm_dry_run_jobs_and_resources(tmp_path, tiny_pipeline_config):
    config = tiny_pipeline_config()
    config["train"]["device"] = "cuda"
    config["pretrain"] = {"epochs": 1}  # the set VAE's pretraining: a cluster job with train's resources
    config["resources"] = {
        "data": {"mem_mb": 1500, "runtime": 15, "threads": 2},
        "train": {"mem_mb": 3000, "runtime": 90, "threads": 3, "gpus": 2},
        "evaluate": {"mem_mb": 2500, "runtime": 20, "threads": 2},  # gpus 0, but cuda asks for one
    }
    jobs = by_rule(dry_run(tmp_path, config, "--profile", str(SLURM_PROFILE)))
    counts = {rule: len(found) for rule, found in jobs.items()}
    not_synthetic = {"format_labels", "meds_predictions", "task"}  # rules of non-CSV datasets only
    assert counts == {
        **{rule: 1 for rule in (LOCAL_RULES | CLUSTER_RULES) - {"shards", "train_all"} - not_synthetic},
        "train": 2,
        "evaluate": 2,
        "memory": 2,
        "choose_lr": 2,
    }
    assert sorted(job["wildcards"] for job in jobs["train"]) == ["bs=1, lr=1, seed=0", "bs=2, lr=1, seed=0"]
    for rule in DATA_RULES:
        (job,) = jobs[rule]
        assert (job["resources"]["mem_mb"], job["resources"]["runtime"]) == ("1500", "15"), rule
    for rule, gpus, memory, runtime in (
        ("pretrain", "2", "3000", "90"),
        ("train", "2", "3000", "90"),
        ("evaluate", "1", "2500", "20"),
    ):
        for job in jobs[rule]:
            resources = job["resources"]
            assert (resources["mem_mb"], resources["runtime"], resources["gpu"]) == (memory, runtime, gpus), rule

    # train.devices: a training job asks for one GPU per process, evaluation for one
    config["train"].update(devices=3, batch_sizes=[3, 4])
    jobs = by_rule(dry_run(tmp_path, config, "--profile", str(SLURM_PROFILE)))
    assert [job["resources"]["gpu"] for job in jobs["train"]] == ["3", "3"]
    assert [job["resources"]["gpu"] for job in jobs["evaluate"]] == ["1", "1"]
    config["train"].update(devices=1, batch_sizes=[1, 2])

    config["train"]["device"] = "cpu"  # a CPU run never asks for a GPU, whatever gpus says
    jobs = by_rule(dry_run(tmp_path, config, "--profile", str(SLURM_PROFILE)))
    assert [job["resources"]["gpu"] for job in jobs["train"] + jobs["evaluate"]] == ["0"] * 4


def test_local_run_gives_training_every_core(tmp_path, tiny_pipeline_config):
    """Locally train/evaluate take all --cores, so two batch sizes never train side by side."""
    jobs = by_rule(dry_run(tmp_path, tiny_pipeline_config(), "--profile", str(LOCAL_PROFILE), "--cores", "3"))
    assert [job["threads"] for job in jobs["train"] + jobs["evaluate"]] == [3] * 4
    assert jobs["ingest"][0]["threads"] == 1  # resources.data.threads of the tiny config
    # on CPU no job claims the GPU; with CUDA each training job holds profiles/local's single GPU
    assert {job["resources"]["gpu"] for job in jobs["train"]} == {"0"}
    config = tiny_pipeline_config()
    config["train"]["device"] = "cuda"
    jobs = by_rule(dry_run(tmp_path, config, "--profile", str(LOCAL_PROFILE), "--cores", "3"))
    assert {job["resources"]["gpu"] for job in jobs["train"] + jobs["evaluate"]} == {"1"}


@needs_slurm_plugin
def test_train_and_evaluate_can_share_one_cluster_job(tmp_path, tiny_pipeline_config):
    """docs/slurm.md's optional grouping: one group job per run, holding its train and evaluate."""
    groups = ["--groups", "train=train_evaluate", "evaluate=train_evaluate"]
    jobs = dry_run(tmp_path, tiny_pipeline_config(), "--profile", str(SLURM_PROFILE), *groups)
    members = {}
    for job in jobs:
        if job["group"] is not None:
            members.setdefault(job["group"], set()).add((job["rule"], job["wildcards"]))
    assert sorted(members.values(), key=sorted) == [
        {("evaluate", f"bs={b}, lr=1, seed=0"), ("train", f"bs={b}, lr=1, seed=0")} for b in (1, 2)
    ]
    assert all(job["group"] is None for job in jobs if job["rule"] not in ("train", "evaluate"))
