"""The tiny pipeline through a real single-node SLURM (scripts/slurm/start.sh), with
profiles/slurm, compared with a local run of the same configuration.

Checks that every cluster rule's job went through sbatch with the CPUs, memory and wall
time of config.yaml's `resources:`, that the light rules stayed local, that the results
equal the local run's (CPU training is deterministic), and that a training job
cancelled with `scancel` mid-run (SIGTERM) and one sent SLURM's early warning (SIGUSR1)
each checkpoint the step they are on, are resubmitted (profile `retries`) and resume from
that step, still ending with the local run's weights. Training jobs ask for a GPU
(`train.device: auto`, `resources.train.gpus: 1`): start.sh's node offers a stand-in
GPU on a machine without one, SLURM allocates it, and training falls back to the CPU
(`train.cpu_fallback: true`; without it such a job fails at once).

Needs root and Debian's slurm-wlm + munge (scripts/slurm/install.sh); skips without
them unless SEQSETVAE_REQUIRE_SLURM=1 (as in .ci/run), where it fails instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.numpy import load_file

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("SEQSETVAE_REQUIRE_SLURM") == "1"
SLURM_CONF = Path("/etc/slurm/slurm.conf")
CONF_MARKER = "# written by seqsetvae scripts/slurm/start.sh"
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
BATCH_SIZES = [1, 2]
# (rule, wildcards) of every job that must run as a SLURM job; all others stay local
CLUSTER_JOBS = Counter(
    [("synthetic_data", ""), ("ingest", ""), ("stats", ""), ("make_shards", ""), ("baseline", "")]
    + [(rule, f"{b}_1_0") for rule in ("train", "evaluate") for b in BATCH_SIZES]  # wildcards bs, lr, seed
)
RESOURCE_KIND = {
    "synthetic_data": "data",
    "ingest": "data",
    "stats": "data",
    "make_shards": "data",
    "train": "train",
    "evaluate": "evaluate",
    "baseline": "evaluate",
}
TIMING = {"patients_per_s", "events_per_s", "wall_time_s", "train_time_s"}
TIMEOUT_S = 900


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"SEQSETVAE_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def run_script(name: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "slurm" / name)], env=env, capture_output=True, text=True, timeout=180
    )


def cluster_is_ours_and_up() -> bool:
    if not SLURM_CONF.exists() or CONF_MARKER not in SLURM_CONF.read_text():
        return False
    sinfo = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%t"], capture_output=True, text=True)
    return sinfo.returncode == 0 and sinfo.stdout.strip() == "idle"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node SLURM; started (and stopped afterwards) unless one of ours is up."""
    if os.geteuid() != 0:
        unavailable("a test SLURM needs root (munged, slurmctld and slurmd are started as root)")
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    missing = [tool for tool in TOOLS if shutil.which(tool, path=path) is None]
    if missing:
        unavailable(f"SLURM is not installed ({', '.join(missing)} missing): run scripts/slurm/install.sh as root")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        unavailable("snakemake-executor-plugin-slurm is not installed: pip install -e '.[slurm]'")
    if cluster_is_ours_and_up():
        yield None
        return
    env = {**os.environ, "PATH": path, "SEQSETVAE_SLURM_DIR": str(tmp_path_factory.mktemp("slurm_state"))}
    started = run_script("start.sh", env)
    assert started.returncode == 0, f"scripts/slurm/start.sh failed:\n{started.stdout}\n{started.stderr}"
    yield Path(env["SEQSETVAE_SLURM_DIR"])
    stopped = run_script("stop.sh", env)
    assert stopped.returncode == 0, f"scripts/slurm/stop.sh failed:\n{stopped.stdout}\n{stopped.stderr}"


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
        "all",
    ]


def scontrol_jobs() -> list[dict]:
    """Every job slurmctld still knows (MinJobAge keeps finished ones for an hour)."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True, check=True)
    jobs = []
    for line in out.stdout.splitlines():
        if line.startswith("JobId="):
            jobs.append(dict(re.findall(r"(?:^|\s)([\w:/()]+)=(\S*)", line)))
    return jobs


def rule_of(job: dict) -> tuple[str, str]:
    """(rule, wildcard values) from the comment the plugin gives each job: rule_<rule>[_wildcards_<values>]."""
    match = re.fullmatch(r"rule_(\w+?)(?:_wildcards_(.*))?", job.get("Comment", ""))
    assert match, f"SLURM job {job['JobId']} has no Snakemake rule comment: {job.get('Comment')!r}"
    return match.group(1), match.group(2) or ""


# each training job signalled once it has checkpointed: bs1 cancelled (SIGTERM, as on
# preemption), bs2 sent the early warning the profile asks SLURM for before the time limit
SIGNALS = {1: None, 2: "USR1"}


def signal_training_after_first_checkpoint(workdir: Path, snakemake: subprocess.Popen) -> dict:
    """Signal each running training job (SIGNALS) once it has written a checkpoint; what was signalled."""
    signalled = {}
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and snakemake.poll() is None and len(signalled) < len(SIGNALS):
        for bs, name in SIGNALS.items():
            run_dir = workdir / "results" / "runs" / f"bs{bs}" / "lr1" / "seed0"
            if bs in signalled or not (run_dir / "checkpoints" / "latest.json").exists():
                continue
            queue = subprocess.run(
                ["squeue", "--noheader", "--format=%i|%k|%T"], capture_output=True, text=True, check=True
            )
            running = [
                line.split("|")[0]
                for line in queue.stdout.split()
                if line.split("|")[1:] == [f"rule_train_wildcards_{bs}_1_0", "RUNNING"]
            ]
            assert len(running) == 1, f"no running bs{bs} training job to signal: {queue.stdout}"
            assert not (run_dir / "metrics.json").exists(), f"bs{bs} training ended before it could be signalled"
            checkpoint = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
            # without --signal, scancel ends the job (SIGTERM to its steps, then SIGKILL);
            # with it, the signal goes to the job's steps, as SLURM's --signal=USR1@120 does
            subprocess.run(["scancel", *([f"--signal={name}"] if name else []), running[0]], check=True)
            signalled[bs] = {"job_id": running[0], "latest": checkpoint, "signal": name or "TERM"}
        time.sleep(0.05)
    missing = sorted(set(SIGNALS) - set(signalled))
    if missing:
        pytest.fail(f"training job(s) of batch size {missing} never wrote a checkpoint")
    return signalled


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory, tiny_pipeline_config):
    """The same tiny configuration run locally and through SLURM (bs1 training cancelled once)."""
    config = tiny_pipeline_config()
    # a GPU request all the way to SLURM (--gpus=1); without CUDA, auto trains on the CPU
    config["train"]["device"] = "auto"
    config["resources"]["train"]["gpus"] = 1
    config["train"]["cpu_fallback"] = True  # the stand-in GPU is no CUDA device: fall back, do not fail
    root = tmp_path_factory.mktemp("slurm_pipeline")
    local, cluster = root / "local", root / "cluster"
    for workdir in (local, cluster):
        workdir.mkdir()
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))

    # both at once, to save time; --cores 1: the local jobs run with the threads a cluster
    # job gets (resources.*.threads), so that both runs compute the same numbers
    started = time.monotonic()
    logs = {name: open(root / f"{name}.log", "w") for name in ("local", "cluster")}
    local_run = subprocess.Popen(
        snakemake_command(local, "--profile", str(REPO / "profiles" / "local"), "--cores", "1"),
        stdout=logs["local"],
        stderr=subprocess.STDOUT,
    )
    snakemake = subprocess.Popen(
        snakemake_command(
            cluster,
            "--profile",
            str(REPO / "profiles" / "slurm"),
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--slurm-keep-successful-logs",
        ),
        stdout=logs["cluster"],
        stderr=subprocess.STDOUT,
    )
    try:
        signalled = signal_training_after_first_checkpoint(cluster, snakemake)
        returncode = snakemake.wait(timeout=TIMEOUT_S)
        local_returncode = local_run.wait(timeout=TIMEOUT_S)
    finally:
        for process in (local_run, snakemake):
            if process.poll() is None:
                process.kill()
        for log in logs.values():
            log.close()
    assert local_returncode == 0, (root / "local.log").read_text()[-5000:]
    output = (root / "cluster.log").read_text()
    assert returncode == 0, output[-8000:]
    print(f"local and SLURM runs: {time.monotonic() - started:.0f} s")
    jobs = [job for job in scontrol_jobs() if job.get("WorkDir") == str(cluster)]
    return {
        "config": config,
        "local": local,
        "cluster": cluster,
        "signalled": signalled,
        "jobs": jobs,
        "output": output,
    }


def test_cluster_rules_went_through_sbatch(runs):
    config, jobs = runs["config"], runs["jobs"]
    completed = Counter(rule_of(job) for job in jobs if job["JobState"] == "COMPLETED")
    assert completed == CLUSTER_JOBS
    signalled = sorted(rule_of(job) for job in jobs if job["JobState"] != "COMPLETED")
    assert signalled == [("train", f"{bs}_1_0") for bs in sorted(SIGNALS)]  # the signalled ones, retried
    for job in jobs:
        rule, _ = rule_of(job)
        wanted = config["resources"][RESOURCE_KIND[rule]]
        assert job["CPUs/Task"] == str(wanted["threads"]), rule
        assert job["MinMemoryNode"] == f"{wanted['mem_mb']}M", rule
        assert job["TimeLimit"] == f"00:{wanted['runtime']:02d}:00", rule
        assert job["NumNodes"] == "1" and job["Partition"] == "debug", rule
        assert job.get("TresPerJob", "") == ("gres:gpu:1" if rule == "train" else ""), rule
    # the light rules ran in the Snakemake process itself: their outputs are there, no SLURM job
    results = runs["cluster"] / "results"
    assert (results / "qc.json").exists() and (runs["cluster"] / "reports" / "batch_comparison.md").exists()
    assert all((results / "memory" / f"bs{b}" / "lr1" / "seed0.json").exists() for b in BATCH_SIZES)
    for rule in ("splits", "embedding", "qc", "memory", "report", "all"):
        assert re.search(rf"^localrule {rule}:$", runs["output"], re.MULTILINE), rule
    # each cluster job got the threads of resources.<kind>.threads, not the node's CPUs
    for b in BATCH_SIZES:
        summary = json.loads((results / "runs" / f"bs{b}" / "lr1" / "seed0" / "metrics.json").read_text())
        assert summary["threads"] == config["resources"]["train"]["threads"]
        assert summary["device"] == "cpu"  # the stand-in GPU is no CUDA device


def test_cluster_results_equal_local_results(runs):
    local, cluster = runs["local"] / "results", runs["cluster"] / "results"
    for name in ("qc.json", "shards/index.json", "stats/normalization.json", "stats/vocabulary.json"):
        assert json.loads((local / name).read_text()) == json.loads((cluster / name).read_text()), name
    for b in BATCH_SIZES:
        for name in ("best.safetensors", "final.safetensors"):
            ours, theirs = (load_file(d / "runs" / f"bs{b}" / "lr1" / "seed0" / name) for d in (local, cluster))
            assert ours.keys() == theirs.keys()
            for key in ours:
                assert np.array_equal(ours[key], theirs[key]), f"bs{b}/{name}: {key}"
        records = [
            [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in path.read_text().splitlines()]
            for path in (d / "runs" / f"bs{b}" / "lr1" / "seed0" / "metrics.jsonl" for d in (local, cluster))
        ]
        assert records[0] == records[1] and len(records[0]) > 0
        pd.testing.assert_frame_equal(
            pd.read_parquet(local / "eval" / f"bs{b}" / "lr1" / "seed0_predictions.parquet"),
            pd.read_parquet(cluster / "eval" / f"bs{b}" / "lr1" / "seed0_predictions.parquet"),
        )
        ours, theirs = (
            json.loads((d / "eval" / f"bs{b}" / "lr1" / "seed0.json").read_text()) for d in (local, cluster)
        )
        for key in ("n_patients", "auroc", "auroc_ci", "auprc", "brier", "accuracy", "recon", "kl"):
            assert ours[key] == theirs[key], f"eval bs{b}: {key}"


@pytest.mark.parametrize("bs", sorted(SIGNALS))
def test_signalled_training_checkpointed_its_step_and_the_retry_resumed_from_it(runs, bs):
    """Cancelled (SIGTERM) or warned (SIGUSR1): the job checkpoints the step it is on and
    exits; the retry resumes from that step, and the results equal the local run's
    (test_cluster_results_equal_local_results)."""
    signalled, cluster = runs["signalled"][bs], runs["cluster"]
    (job,) = [job for job in runs["jobs"] if job["JobId"] == signalled["job_id"]]
    assert rule_of(job) == ("train", f"{bs}_1_0")
    assert job["JobState"] == ("CANCELLED" if signalled["signal"] == "TERM" else "FAILED"), job
    steps = json.loads((cluster / "results" / "runs" / f"bs{bs}" / "lr1" / "seed0" / "metrics.json").read_text())[
        "steps"
    ]
    # the signalled job's SLURM log (the plugin keeps failed jobs' logs) has the stage's
    # own word on where it stopped; the retry's training log says where it resumed
    slurm_log = cluster / ".snakemake" / "slurm_logs" / "rule_train" / f"{bs}_1_0" / f"{signalled['job_id']}.log"
    stopped = re.search(rf"error: stopped by SIG{signalled['signal']} after step (\d+)", slurm_log.read_text())
    assert stopped, slurm_log.read_text()[-3000:]
    log = (cluster / "results" / "logs" / "train" / f"bs{bs}" / "lr1" / "seed0.log").read_text()
    resumed = re.search(r"resuming from (\S+) \(step (\d+), epoch 1\)", log)
    assert resumed, log
    assert int(resumed.group(2)) == int(stopped.group(1)), "the retry redid steps"
    assert signalled["latest"]["step"] <= int(stopped.group(1)) < steps
    assert (
        "resuming" not in (runs["local"] / "results" / "logs" / "train" / f"bs{bs}" / "lr1" / "seed0.log").read_text()
    )
