"""An exponential moving average of the weights, on the clock of the patients seen.

With a few dozen positive patients in a validation split, the weights of one step are a
noisy draw around where training is heading: the validation AUROC of consecutive points
jumps by 0.05-0.1, and the "best" point is partly luck. Averaging the weights over the
last fraction of an epoch removes most of that noise (Polyak averaging; docs/
learning_on_real_data.md measures it). Validation, the best checkpoint and therefore
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

    @torch.no_grad()
    def update(self, model: torch.nn.Module, patients: int) -> None:
        """Move the average towards `model` after a step on `patients` patients."""
        weight = 1.0 - math.exp(-patients / self.time_constant)
        for average, current in zip(self.model.state_dict().values(), model.state_dict().values()):
            if average.is_floating_point():
                average.lerp_(current.to(average.dtype), weight)
            else:
                average.copy_(current)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(tensors, strict=True)
