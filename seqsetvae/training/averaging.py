"""An exponential moving average of the weights, on the clock of the patients seen.

With a few dozen positive patients in a validation split, the weights of one step are a
noisy draw around where training is heading: the validation AUROC of consecutive points
jumps by 0.05-0.1, and the "best" point is partly luck. Averaging the weights over the
last fraction of an epoch removes most of that noise (Polyak averaging; docs/
learning_rounds.md, round four, measures it). Validation, the best checkpoint and therefore
evaluation use the averaged weights; the optimiser trains the raw ones.

The time constant is in epochs (patients seen / train patients), so every batch size
averages over the same share of the data: after a step of `n` patients the average
moves towards the weights by 1 - exp(-n / (time_constant * train patients)).
"""

from __future__ import annotations

import copy
import math

import torch


class WeightAverage:
    """`model`'s weights and floating buffers averaged over training (an eval-mode copy)."""

    def __init__(self, model: torch.nn.Module, time_constant_epochs: float, train_patients: int) -> None:
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.time_constant = time_constant_epochs * train_patients  # in patients
        self._pairs = None

    @torch.no_grad()
    def update(self, model: torch.nn.Module, patients: int) -> None:
        """Move the average towards `model` after a step on `patients` patients."""
        weight = 1.0 - math.exp(-patients / self.time_constant)
        if self._pairs is None or self._pairs[0] is not model:  # the tensors, paired once
            pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
            floating = [(a, c) for a, c in pairs if a.is_floating_point() and a.dtype == c.dtype]
            self._pairs = (
                model,
                [a for a, _ in floating],
                [c for _, c in floating],
                [(a, c) for a, c in pairs if not (a.is_floating_point() and a.dtype == c.dtype)],
            )
        _, averages, currents, others = self._pairs
        torch._foreach_lerp_(averages, currents, weight)  # one fused pass over every tensor
        for average, current in others:  # integer buffers (counters) are the model's
            average.copy_(current)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(tensors, strict=True)  # copies in place: the pairs stay valid
