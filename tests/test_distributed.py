"""`train.devices`: one training job in several processes (torchrun, DDP, gloo on CPU)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train import TINY_MODEL, TINY_TRAIN, data  # noqa: F401  (data: the tiny shards fixture)

from seqsetvae.errors import InputError
from seqsetvae.runtime.device import seed_everything
from seqsetvae.settings import load_settings
from seqsetvae.training import distributed, resume, train
from seqsetvae.training.recorder import Recorder

NO_DROPOUT = {**TINY_MODEL, "dropout": 0.0}  # dropout masks are drawn per rank (distributed.py)
SETTINGS = {
    "model": NO_DROPOUT,
    "train": {**TINY_TRAIN, "grad_clip": 1e9, "noise_scale": {"per_epoch": 1, "patients": 4}},
}


def test_split_batch_balances_events_and_keeps_every_patient_once():
    events = np.array([50, 3, 40, 7, 7, 30, 1])
    parts = distributed.split_batch(events, 2)
    assert sorted(np.concatenate(parts).tolist()) == list(range(7))
    assert all(np.all(np.diff(part) > 0) for part in parts)  # the batch's order kept
    totals = [int(events[p].sum()) for p in parts]
    assert abs(totals[0] - totals[1]) <= events.max() // 2  # 50+7+7+1 vs 40+30+3
    assert [p.tolist() for p in distributed.split_batch(events, 2)] == [p.tolist() for p in parts]
    three = distributed.split_batch(np.array([5, 5]), 3)
    assert [len(p) for p in three] == [1, 1, 0]


def test_a_batch_size_smaller_than_the_devices_is_a_configuration_error(data, tmp_path):  # noqa: F811
    shards, embedding = data
    settings = {"model": NO_DROPOUT, "train": {**TINY_TRAIN, "devices": 2}}
    argv = [
        "--settings",
        json.dumps(settings),
        "--shards",
        str(shards),
        "--embedding",
        str(embedding),
        "--batch-size",
        "1",
        "--out",
        str(tmp_path / "bs1"),
    ]
    with pytest.raises(InputError, match=r"train.devices = 2 and train.batch_sizes: batch size 1 cannot be split"):
        train.main(argv)
    assert not (tmp_path / "bs1").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LABELS = {"pred_warmup_steps": 0}  # the cross-entropy counts from the first step
WIDE = {**LABELS, "wide": "summaries", "wide_l2": 3.0}  # and the wide path's penalty, which the ranks must count once


def _trainer(shards, embedding, out: Path, world, batch_size: int, model: dict | None = None):
    torch.set_default_dtype(torch.float64)
    args = Namespace(
        shards=str(shards),
        embedding=str(embedding),
        batch_size=batch_size,
        out=str(out),
        stop_after_steps=None,
        init_weights=None,
    )
    settings = load_settings({**SETTINGS, "model": {**SETTINGS["model"], **(model or {})}})
    seed_everything(3)
    trainer = train.Trainer(args, settings, torch.device("cpu"), 1, 3)
    trainer.model.double()  # in place: the optimizer keeps the same parameters
    if world.distributed:  # as Trainer does, after the conversion to float64
        trainer.world, trainer.net = world, torch.nn.parallel.DistributedDataParallel(trainer.model)
        trainer.recorder = Recorder(world.is_main)  # rank 0 alone writes records
    resume.resume(trainer)
    if trainer.model.classifier.wide is not None:  # it starts at zero, where its penalty has no gradient
        weight = trainer.model.classifier.wide[1].weight
        with torch.no_grad():
            weight.copy_(torch.linspace(-1, 1, weight.numel()).reshape_as(weight))
    return trainer


def _gradient_worker(
    rank: int, port: int, shards: str, embedding: str, out: str, indices: list[int], model: dict
) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    world = distributed.init("cpu")
    trainer = _trainer(shards, embedding, Path(out) / f"rank{rank}", world, len(indices), model)
    trainer.step(np.array(indices), 0)
    grads = {name: p.grad for name, p in trainer.model.named_parameters() if p.grad is not None}
    save_file(
        {**grads, "__weights_after": torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])},
        str(Path(out) / f"grads{rank}.safetensors"),
    )
    distributed.finish()


@pytest.mark.parametrize(
    "indices, model",
    [([0, 5, 9, 14, 21], LABELS), ([7], LABELS), ([0, 5, 9, 14, 21], WIDE)],  # [7]: one rank without a patient
)
def test_one_step_on_two_processes_has_the_single_process_gradient(data, tmp_path, indices, model):  # noqa: F811
    """float64: the ranks' averaged gradients are the gradient of the global batch, the
    wide path's penalty included."""
    shards, embedding = data
    torch.multiprocessing.spawn(
        _gradient_worker, args=(_free_port(), str(shards), str(embedding), str(tmp_path), indices, model), nprocs=2
    )
    default = torch.get_default_dtype()
    try:
        single = _trainer(shards, embedding, tmp_path / "single", distributed.World(), len(indices), model)
        single.step(np.array(indices), 0)
    finally:
        torch.set_default_dtype(default)
    expected = {name: p.grad for name, p in single.model.named_parameters() if p.grad is not None}
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"grads{rank}.safetensors"))
        weights = got.pop("__weights_after")
        assert got.keys() == expected.keys()
        for name, grad in expected.items():
            assert grad.dtype == torch.float64
            torch.testing.assert_close(got[name], grad, rtol=1e-10, atol=1e-10, msg=name)
        after = torch.cat([p.detach().reshape(-1) for p in single.model.parameters()])
        torch.testing.assert_close(weights, after, rtol=1e-10, atol=1e-10)


def _command(data, out: Path, devices: int, batch_size: int, **train_overrides) -> list[str]:  # noqa: F811
    shards, embedding = data
    settings = {"model": NO_DROPOUT, "train": {**TINY_TRAIN, "devices": devices, **train_overrides}}
    return [
        sys.executable,
        "-m",
        "seqsetvae.cli",
        "train",
        "--settings",
        json.dumps(settings),
        "--shards",
        str(shards),
        "--embedding",
        str(embedding),
        "--batch-size",
        str(batch_size),
        "--out",
        str(out),
        "--threads",
        "2",
    ]


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def two_process_run(data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ddp") / "bs3"
    _run(_command(data, out, 2, 3))
    return out


def test_two_processes_train_like_one(data, two_process_run, tmp_path):  # noqa: F811
    """Batch size 3 on 22 patients: the epoch's last batch leaves one rank empty."""
    one = tmp_path / "one"
    _run(_command(data, one, 1, 3))
    a, b = load_file(str(one / "final.safetensors")), load_file(str(two_process_run / "final.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        if name.endswith("self_attn.in_proj_bias"):
            # the key bias has a gradient of exactly 0 (a softmax is blind to a shift of all
            # its scores); AdamW turns each run's float32 rounding noise in it into steps of
            # about lr, so it drifts apart (9e-5 here) without changing any output
            d = len(x) // 3
            x, y = torch.cat([x[:d], x[2 * d :]]), torch.cat([y[:d], y[2 * d :]])
        torch.testing.assert_close(y, x, rtol=0, atol=1e-5, msg=f"{name} {y.flatten()[:4]} {x.flatten()[:4]}")
    single, double = (json.loads((d / "metrics.json").read_text()) for d in (one, two_process_run))
    assert double["devices"] == 2 and single["devices"] == 1
    assert double["patients_seen"] == single["patients_seen"] == 44 and double["steps"] == single["steps"] == 16
    lines = [json.loads(line) for line in (two_process_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "step"]
    assert len(steps) == 16 and all(r["batch_patients"] in (3, 1) for r in steps)  # global batches, logged once
    reference = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    ref_steps = [r for r in reference if r["kind"] == "step"]
    for got, want in zip(steps, ref_steps):
        assert got["batch_events"] == want["batch_events"] and got["batch_sets"] == want["batch_sets"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)


def test_killed_two_process_job_resumes_to_the_same_weights(data, two_process_run, tmp_path):  # noqa: F811
    out = tmp_path / "bs3"
    command = _command(data, out, 2, 3, checkpoint_every=1)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = out / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 4:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers, as a scheduler does
    process.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert 4 <= killed_at < 16, killed_at
    assert not (out / "final.safetensors").exists()
    _run(command)
    a, b = load_file(str(two_process_run / "final.safetensors")), load_file(str(out / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
