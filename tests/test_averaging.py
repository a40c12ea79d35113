"""The weight average: its arithmetic on the patients' clock, and what it leaves alone."""

from __future__ import annotations

import math

import pytest
import torch

from seqsetvae.training.averaging import WeightAverage


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    return net


def test_the_average_follows_the_weights_by_patients_seen():
    net = _net()
    average = WeightAverage(net, time_constant_epochs=0.5, train_patients=20)  # 10 patients
    start = {k: v.clone() for k, v in net.state_dict().items()}
    expected = {k: v.double() for k, v in start.items() if v.is_floating_point()}
    for patients in (4, 16, 1):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
            net[1].num_batches_tracked.add_(patients)
        average.update(net, patients)
        weight = 1 - math.exp(-patients / 10)
        for key in expected:
            expected[key] = expected[key] + weight * (net.state_dict()[key].double() - expected[key])
    state = average.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(state[key].double(), value, rtol=1e-6, atol=1e-6)
    # an integer buffer is not averaged: it is the model's
    assert int(state["1.num_batches_tracked"]) == int(net[1].num_batches_tracked) == 21
    # the model's weights are not touched, and the copy takes no gradients
    assert all(not p.requires_grad for p in average.model.parameters())
    assert not average.model.training


def test_a_large_step_moves_the_average_almost_onto_the_weights_and_round_trips():
    net = _net()
    average = WeightAverage(net, time_constant_epochs=0.01, train_patients=100)  # 1 patient
    with torch.no_grad():
        net[0].weight.mul_(3)
    average.update(net, 50)
    torch.testing.assert_close(average.model[0].weight, net[0].weight, rtol=0, atol=1e-12 * 3 + 1e-20)
    copy = WeightAverage(_net(), 1.0, 10)
    copy.load_state_dict(average.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), average.state_dict().values()))
    with pytest.raises(RuntimeError):
        copy.load_state_dict({})
