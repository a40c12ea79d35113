"""Checkpoint storage: exact round trip of optimizer, scheduler and RNG states, no pickle."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from seqsetvae.training import checkpoint as ckpt


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(
        [{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[2].parameters(), "lr": 1e-2}],
        weight_decay=0.01,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=3, T_mult=2, eta_min=1e-5)
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler):
    x = torch.randn(5, 4)  # draws from the torch RNG, as dropout does
    loss = model(x).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def test_round_trip_continues_exactly(tmp_path):
    model, optimizer, scheduler = _trained()
    for _ in range(4):
        _step(model, optimizer, scheduler)
    random.random(), np.random.rand()
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": ckpt.rng_state(torch.device("cpu")),
        "run": {"step": 4, "nested": {"t": (1, 2.5, None)}},
    }
    path = ckpt.save_checkpoint(tmp_path, 4, model, state)
    assert ckpt.latest_checkpoint(tmp_path) == path
    # no pickle: only safetensors and JSON files
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "state.json", "state.safetensors"]
    json.loads((path / "state.json").read_text())

    # continue the original
    for _ in range(5):
        _step(model, optimizer, scheduler)
    expected = [p.detach().clone() for p in model.parameters()]
    expected_random = (random.random(), np.random.rand())

    # restore into fresh objects (after scrambling every RNG), continue the same way
    model2, optimizer2, scheduler2 = _trained(seed=99)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    loaded = ckpt.load_checkpoint(path, model2)
    optimizer2.load_state_dict(loaded["optimizer"])
    scheduler2.load_state_dict(loaded["scheduler"])
    ckpt.set_rng_state(loaded["rng"], torch.device("cpu"))
    assert loaded["run"] == {"step": 4, "nested": {"t": (1, 2.5, None)}}
    for _ in range(5):
        _step(model2, optimizer2, scheduler2)
    for a, b in zip(expected, model2.parameters()):
        assert torch.equal(a, b)
    assert (random.random(), np.random.rand()) == expected_random
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()


def test_keeps_only_newest_checkpoints(tmp_path):
    model, optimizer, scheduler = _trained()
    for step in (10, 20, 30):
        ckpt.save_checkpoint(tmp_path, step, model, {"run": {"step": step}})
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000020", "step-00000030"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000030"


def test_unstorable_state_is_refused(tmp_path):
    model, _, _ = _trained()
    with pytest.raises(TypeError, match="run.bad"):
        ckpt.save_checkpoint(tmp_path, 1, model, {"run": {"bad": object()}})
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert not list(tmp_path.glob("step-*"))
