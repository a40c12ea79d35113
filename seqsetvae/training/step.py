"""One optimiser step of SeqSetVAE: the step training takes and the benchmark times."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def train_step(
    net: torch.nn.Module,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch,
    loss_weights,
    autocast: Callable,
    grad_clip: float,
    *,
    noise: torch.Tensor | None = None,
    backward: Callable[[Any], Any] | None = None,
    approve: Callable[[torch.Tensor, Any], bool] | None = None,
) -> tuple[Any, torch.Tensor, Any, bool]:
    """Forward, backward, gradient-norm clipping, then the optimiser step.

    `net` is the model or DDP around it (`model` owns the parameters); `autocast()` gives
    the forward's precision context; `noise` is the posterior's noise when it must not
    depend on the rank (`distributed.rank_noise`). `backward(output)` replaces
    `output.loss.backward()` (the multi-process loss) and its result is passed on;
    `approve(grad_norm, result)` is asked before the optimiser steps, and a False skips
    the step with the gradients cleared (a non-finite loss or gradient). Returns
    (output, grad_norm, backward's result, whether the optimiser stepped).
    """
    with autocast():
        output = net(batch, loss_weights) if noise is None else net(batch, loss_weights, noise)
    optimizer.zero_grad(set_to_none=True)
    result = backward(output) if backward is not None else output.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if approve is not None and not approve(grad_norm, result):
        optimizer.zero_grad(set_to_none=True)
        return output, grad_norm, result, False
    optimizer.step()
    return output, grad_norm, result, True
