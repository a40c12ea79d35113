"""SeqSetVAE's two VAE loss terms per set, on packed batches (docs/model.md, section 3):
the Chamfer reconstruction loss and the KL with free bits."""

from __future__ import annotations

import torch

from seqsetvae.batching import Batch
from seqsetvae.segments import at_least_float32, segment_min, segment_sum


def chamfer_per_set(recon: torch.Tensor, target: torch.Tensor, batch: Batch, eps: float = 1e-8) -> torch.Tensor:
    """[S]: symmetric Chamfer loss between each set's reconstructed and target tokens.

    Three Chamfer terms, each with its own nearest neighbour as in the original:
    1 - cosine (weight 1), |norm difference| (weight 1), squared L2 (weight 3); each is
    (mean over recon of the min over targets + mean over targets of the min over recon) / 2.
    """
    recon, target = at_least_float32(recon), at_least_float32(target)
    r_norm, t_norm = recon.norm(dim=-1), target.norm(dim=-1)
    r_unit, t_unit = recon / (r_norm.unsqueeze(-1) + eps), target / (t_norm.unsqueeze(-1) + eps)
    ri, tj = batch.pair_query, batch.pair_key  # every (recon i, target j) of one set
    pair_terms = torch.stack(
        [
            1.0 - (r_unit.index_select(0, ri) * t_unit.index_select(0, tj)).sum(-1),
            (r_norm.index_select(0, ri) - t_norm.index_select(0, tj)).abs(),
            (recon.index_select(0, ri) - target.index_select(0, tj)).pow(2).sum(-1),
        ],
        dim=-1,
    )  # [P, 3]
    E = recon.shape[0]
    nearest = segment_min(pair_terms, ri, E) + segment_min(pair_terms, tj, E)  # [E, 3], both directions
    per_set = segment_sum(nearest, batch.set_sizes) / (2.0 * batch.set_sizes.unsqueeze(-1))  # [S, 3]
    return per_set @ per_set.new_tensor([1.0, 1.0, 3.0])


def kl_per_set(mu: torch.Tensor, logvar: torch.Tensor, free_bits: float) -> torch.Tensor:
    """[S]: KL(q(z|set) || N(0, I)) summed over latent dims, clamped below at free_bits x dim."""
    mu, logvar = at_least_float32(mu), at_least_float32(logvar)
    kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)
    return kl.clamp(min=free_bits * mu.shape[-1])
