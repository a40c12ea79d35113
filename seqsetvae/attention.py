"""Attention blocks on packed sets: the Set Transformer's MAB and ISAB (Lee et al. 2019)
over events packed `[E, d]` with a set id per event (seqsetvae.batching), without padding.

Attention from shared queries (inducing points) to a set's events is a segment softmax
over that set's rows; attention from events to their set's induced vectors gathers those
vectors per event; event-to-event attention inside a set runs over the list of
within-set event pairs. Every reduction reads one set's rows only.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from seqsetvae.segments import at_least_float32, expand, segment_softmax, segment_sum


class MAB(nn.Module):
    """Multihead attention block: h = LN(q + MHA(q, kv)); out = LN(h + FF(h)).

    Three entry points, one per way queries meet keys in a packed batch. Where a side is
    shared or small (the inducing points; a set's 16 induced vectors), the key / value /
    output projections are folded onto the other side, which is algebraically the same
    attention (key bias terms are constant over the keys and cancel in the softmax) and
    avoids projecting S x m induced vectors.
    """

    def __init__(self, dim: int, heads: int, key_bias: bool = True):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.v, self.o = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        # a key bias only shifts all of a query's scores equally (no effect after the
        # softmax); the folded entry points drop it, so blocks that use them have none
        self.k = nn.Linear(dim, dim, bias=key_bias)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def tail(self, query: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        h = self.ln1(query + attended)
        return self.ln2(h + self.ff(h))

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        """[N, heads, dim]: scaled queries with W_k folded in: score = q_fold . key_input."""
        q = self.q(x).view(-1, self.heads, self.head_dim) / math.sqrt(self.head_dim)
        return torch.einsum("nhe,hed->nhd", q, self.k.weight.view(self.heads, self.head_dim, -1))

    def shared_queries_to_sets(self, queries: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor):
        """The same queries [m, d] attend to each set's rows of x [N, d] -> [S, m, d]."""
        m = queries.shape[0]
        q = self._queries(queries)  # [m, heads, d]
        scores = (x @ q.reshape(m * self.heads, -1).T).view(-1, m, self.heads)  # [N, m, heads]
        weights = segment_softmax(scores, lengths).to(x.dtype)  # over each set's rows
        # W_o folded into the values: per head (x W_v,h + b_v,h) W_o,h^T  [N, heads, d]
        v = self.v(x).view(-1, self.heads, self.head_dim)
        values = torch.einsum("nhe,dhe->nhd", v, self.o.weight.view(-1, self.heads, self.head_dim))
        mixed = torch.bmm(weights, values)  # [N, m, d], summed over heads
        attended = segment_sum(mixed, lengths) + self.o.bias  # [S, m, d]
        return self.tail(queries.unsqueeze(0), attended)

    def rows_to_set_vectors(self, x: torch.Tensor, vectors: torch.Tensor, lengths: torch.Tensor):
        """Each row of x [N, d] attends to its set's vectors [S, m, d] -> [N, d]."""
        n = x.shape[0]
        keys = expand(vectors, lengths, n)  # [N, m, d]
        scores = torch.bmm(self._queries(x), keys.transpose(1, 2))  # [N, heads, m]
        weights = torch.softmax(at_least_float32(scores), dim=-1).to(keys.dtype)
        mixed = torch.bmm(weights, keys)  # [N, heads, d]: softmax-weighted key inputs
        v = torch.einsum("nhd,hed->nhe", mixed, self.v.weight.view(self.heads, self.head_dim, -1))
        attended = self.o((v + self.v.bias.view(self.heads, self.head_dim)).reshape(n, -1))
        return self.tail(x, attended)

    def rows_to_rows(
        self, query_in: torch.Tensor, kv_in: torch.Tensor, pair_key: torch.Tensor, pairs_per_query: torch.Tensor
    ):
        """Rows of query_in [Nq, d] attend to rows of kv_in [Nk, d] along (query, key) pairs.

        Pairs are sorted by query: query row i owns the next pairs_per_query[i] pairs.
        """
        nq, n_pairs = query_in.shape[0], pair_key.shape[0]
        q = self.q(query_in).view(nq, self.heads, self.head_dim) / math.sqrt(self.head_dim)
        k = self.k(kv_in).view(-1, self.heads, self.head_dim)
        v = self.v(kv_in).view(-1, self.heads, self.head_dim)
        scores = (expand(q, pairs_per_query, n_pairs) * k.index_select(0, pair_key)).sum(-1)  # [P, heads]
        weights = segment_softmax(scores, pairs_per_query).to(v.dtype)
        attended = segment_sum(weights.unsqueeze(-1) * v.index_select(0, pair_key), pairs_per_query)  # [Nq, h, dh]
        return self.tail(query_in, self.o(attended.reshape(nq, -1)))


class ISAB(nn.Module):
    """Induced set attention block on packed sets: MAB(x, MAB(I, x)), per set."""

    def __init__(self, dim: int, heads: int, inducing_points: int):
        super().__init__()
        self.inducing = nn.Parameter(nn.init.xavier_uniform_(torch.empty(inducing_points, dim)))
        self.induce = MAB(dim, heads, key_bias=False)  # inducing points attend to the set's rows
        self.spread = MAB(dim, heads, key_bias=False)  # rows attend to their set's induced vectors

    def forward(self, x: torch.Tensor, set_lengths: torch.Tensor) -> torch.Tensor:
        """x [N, d], rows sorted by set, set s owning the next set_lengths[s] rows -> [N, d]."""
        induced = self.induce.shared_queries_to_sets(self.inducing.to(x.dtype), x, set_lengths)  # [S, m, d]
        return self.spread.rows_to_set_vectors(x, induced, set_lengths)  # [N, d]
