"""Segment operations on packed rows: reductions, softmax and expansion per segment.

A segment is a run of consecutive rows (a set's events, a patient's sets); `lengths [K]`
gives the rows of each segment in order (sum(lengths) == N). Reductions use
torch.segment_reduce, which reads each segment's rows alone, so a segment's result does
not depend on any other segment (exact batch invariance). The custom backward passes
pair segment_reduce with repeat_interleave: both stream over contiguous rows, several
times faster on CPU than index_add / index_select with an index tensor. `unsafe=True`
skips segment_reduce's check of the lengths, which copies them to the host (a device
synchronisation per call, ~70 per training step): collate builds them, and
tests/test_batching.py checks that they are whole and sum to the rows.
"""

from __future__ import annotations

import math

import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float32 if it is in a half type (bf16 autocast); float32/float64 kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _SegmentSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(lengths)
        ctx.rows = src.shape[0]
        return torch.segment_reduce(src.contiguous(), "sum", lengths=lengths, axis=0, unsafe=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (lengths,) = ctx.saved_tensors
        return torch.repeat_interleave(grad, lengths, dim=0, output_size=ctx.rows), None


class _Expand(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lengths: torch.Tensor, rows: int) -> torch.Tensor:
        ctx.save_for_backward(lengths)
        return torch.repeat_interleave(x, lengths, dim=0, output_size=rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (lengths,) = ctx.saved_tensors
        return torch.segment_reduce(grad.contiguous(), "sum", lengths=lengths, axis=0, unsafe=True), None, None


def segment_sum(src: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[K, ...]: sum of each segment's rows of src [N, ...]."""
    return _SegmentSum.apply(src, lengths)


def expand(x: torch.Tensor, lengths: torch.Tensor, rows: int) -> torch.Tensor:
    """[N, ...]: row k of x [K, ...] repeated lengths[k] times (one copy per segment row)."""
    return _Expand.apply(x, lengths, rows)


def segment_softmax(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Softmax of scores [N, ...] over the rows of each segment, in float32 at least."""
    scores = at_least_float32(scores)
    rows = scores.shape[0]
    peak = torch.segment_reduce(scores.detach().contiguous(), "max", lengths=lengths, axis=0, unsafe=True)
    exp = torch.exp(scores - expand(peak, lengths, rows))
    return exp / expand(segment_sum(exp, lengths), lengths, rows)


def segment_min(src: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """[n_segments, ...]: minimum of the rows of src [N, ...] with segment id `segment` (any order)."""
    index = segment.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    out = src.new_full((n_segments, *src.shape[1:]), math.inf)
    return out.scatter_reduce(0, index, src, "amin", include_self=False)


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[N, dim] fixed sin/cos code of integer positions [N] (Vaswani et al.)."""
    freq = torch.exp(torch.arange(0, dim, 2, device=positions.device) * (-math.log(10000.0) / dim))
    angle = positions.float()[:, None] * freq[None, :]
    code = torch.zeros(len(positions), dim, device=positions.device)
    code[:, 0::2] = torch.sin(angle)
    code[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return code
