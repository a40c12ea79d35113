"""Schedules in epochs: every batch size passes through the same phases of a run."""

import math

import pytest
import torch

from seqsetvae.model import LossWeights
from seqsetvae.settings import load_settings
from seqsetvae.training.schedule import loss_weights, lr_factor, scaled_lr

MODEL = {
    "max_beta": 0.2,
    "pred_weight": 2.0,
    "recon_weight": 1.0,
    "beta_warmup_epochs": 1.0,
    "pred_warmup_epochs": 0.5,
    "recon_decay_epochs": 2.0,
    "beta_warmup_steps": None,
    "pred_warmup_steps": None,
    "recon_decay_steps": None,
}
TRAIN = {
    "epochs": 4,
    "lr_schedule": "cosine",
    "lr_warmup_epochs": 0.5,
    "eta_min_factor": 0.01,
    "scheduler_t0": 10,
    "scheduler_t_mult": 2,
}


def test_loss_weights_follow_epochs():
    assert loss_weights(MODEL, 0, 0.0) == LossWeights(beta=0.0, recon=1.0, pred=0.0)
    assert loss_weights(MODEL, 999, 0.25) == pytest.approx(LossWeights(beta=0.05, recon=0.9375, pred=1.0))
    assert loss_weights(MODEL, 3, 1.0) == pytest.approx(LossWeights(beta=0.2, recon=0.75, pred=2.0))
    assert loss_weights(MODEL, 0, 3.0) == pytest.approx(LossWeights(beta=0.2, recon=0.5, pred=2.0))
    zero = {**MODEL, "beta_warmup_epochs": 0, "pred_warmup_epochs": 0, "recon_decay_epochs": 0}
    assert loss_weights(zero, 0, 0.0) == LossWeights(beta=0.2, recon=0.5, pred=2.0)
    assert LossWeights.at_evaluation(MODEL) == LossWeights(beta=0.2, recon=0.5, pred=2.0)


def test_recon_weight_scales_the_reconstruction_in_training_and_evaluation():
    half = {**MODEL, "recon_weight": 0.5}
    assert loss_weights(half, 3, 1.0) == pytest.approx(LossWeights(beta=0.2, recon=0.375, pred=2.0))
    assert LossWeights.at_evaluation(half) == LossWeights(beta=0.2, recon=0.25, pred=2.0)
    assert loss_weights({**MODEL, "recon_weight": 0.0}, 0, 0.0).recon == 0.0


def test_step_overrides_pin_a_schedule_to_steps():
    pinned = {**MODEL, "beta_warmup_steps": 100}
    assert loss_weights(pinned, 25, 3.0).beta == pytest.approx(0.05)  # steps win over epochs
    assert loss_weights(pinned, 25, 3.0).pred == 2.0  # the others stay in epochs


@pytest.mark.parametrize("train_patients", [96, 100])
def test_schedules_are_equal_in_epochs_across_batch_sizes(train_patients):
    """At the same samples seen, batch sizes 1, 4 and 16 have the same loss weights and lr factor."""
    curves = {}
    for batch_size in (1, 4, 16):
        seen, step, points = 0, 0, {}
        while seen < TRAIN["epochs"] * train_patients:
            step += 1
            seen += min(batch_size, train_patients - seen % train_patients)  # an epoch's last batch may be short
            if seen % 16 == 0 or seen % train_patients == 0:
                epochs = seen / train_patients
                points[seen] = (loss_weights(MODEL, step, epochs), lr_factor(TRAIN, step, epochs))
        curves[batch_size] = points
    common = set(curves[1]) & set(curves[4]) & set(curves[16])
    assert {e * train_patients for e in range(1, TRAIN["epochs"] + 1)} <= common and len(common) > 2 * TRAIN["epochs"]
    for seen in common:
        assert curves[1][seen] == curves[4][seen] == curves[16][seen]


def test_cosine_lr_warms_up_then_decays_to_eta_min_at_the_budget():
    assert lr_factor(TRAIN, 1, 0.25) == pytest.approx(0.5)
    assert lr_factor(TRAIN, 1, 0.5) == pytest.approx(1.0)
    middle = 0.5 + (4 - 0.5) / 2
    assert lr_factor(TRAIN, 1, middle) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(TRAIN, 1, 4.0) == pytest.approx(0.01)
    assert lr_factor({**TRAIN, "lr_schedule": "constant"}, 1, 3.0) == 1.0


def test_cosine_restarts_equal_torch():
    train = {**TRAIN, "lr_schedule": "cosine_restarts", "lr_warmup_epochs": 0.0}
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=10, T_mult=2, eta_min=0.01)
    for step in range(80):
        assert lr_factor(train, step, 0.0) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12), step
        optimizer.step()
        scheduler.step()


def test_lr_scaling_rules():
    base = {"lr": 0.001, "lr_reference_batch_size": 4}
    assert scaled_lr({**base, "lr_scaling": "none"}, 16) == 0.001
    assert scaled_lr({**base, "lr_scaling": "linear"}, 16) == pytest.approx(0.004)
    assert scaled_lr({**base, "lr_scaling": "sqrt"}, 16) == pytest.approx(0.002)
    assert scaled_lr({**base, "lr_scaling": "sqrt"}, 1) == pytest.approx(0.0005)


def test_schema_defaults_are_in_epochs():
    settings = load_settings({})
    assert settings["train"]["lr_scaling"] == "sqrt"
    assert all(settings["model"][f"{k}_steps"] is None for k in ("beta_warmup", "pred_warmup", "recon_decay"))
    assert math.isfinite(settings["model"]["beta_warmup_epochs"])
