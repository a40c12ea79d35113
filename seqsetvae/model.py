"""SeqSetVAE: a set VAE per timestamp under a causal transformer, on packed batches.

API (the contract of docs/design.md):

    config = ModelConfig.from_settings(settings["model"])      # schema defaults filled
    model = SeqSetVAE(config, embedding)                         # embedding: Tensor [V, D]
    weights = loss_weights(settings["model"], step, epochs)      # seqsetvae.training.schedule
    out = model(collate(patients).to(device), weights)           # one forward per batch
    out.loss.backward()
    torch.optim.AdamW(model.parameter_groups(lr, setvae_lr_factor, weight_decay))

`ModelOutput`: `logits [B, C]`, `loss`, `recon`, `kl`, `ce` (scalars), the `weights`
used, `mu [S, latent]` and `h [S, latent]` (real sets, in the batch's set order), and
per-item terms `recon_per_set [S]`, `kl_per_set [S]` (free bits applied),
`kl_raw_per_set [S]`, `ce_per_patient [B]` (times its class weight).

The variable embedding is a frozen buffer registered with `persistent=False`: it is not
a parameter, not in the optimiser and not in `state_dict()` (weights files stay small;
the embedding stage's file is the one source of it), so rebuilding a model for
evaluation needs the same embedding file.

Layout (see seqsetvae.batching): events are packed `[E, d]` with a set id per event, so
the set encoder and decoder touch real events only (no padding). Attention from a set's
inducing points to its events is a segment softmax over the event rows of that set;
attention from events to their set's induced vectors gathers those vectors per event;
event-to-event attention inside a set (decoder) and the Chamfer loss run over the list
of within-set event pairs. Every per-set reduction (softmax max/sum, means, minima)
reads only that set's rows, so a patient's outputs do not depend on its batch-mates.
Only the sequence transformer sees a padded `[B, T_max]` grid, with a causal mask plus
a key-padding mask.

Deviations from docs/model.md (each with its reason) are listed in docs/model.md (section 5) and
marked `# deviation:` below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqsetvae.batching import Batch
from seqsetvae.errors import InputError
from seqsetvae.segments import at_least_float32, expand, segment_min, segment_softmax, segment_sum, sinusoid

# -- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    reduced_dim: int = 256
    latent_dim: int = 256
    levels: int = 2
    inducing_points: int = 16
    heads: int = 2
    transformer_layers: int = 2
    transformer_heads: int = 2
    ff_dim: int = 256
    dropout: float = 0.1
    num_classes: int = 2
    free_bits: float = 0.1
    label_smoothing: float = 0.1
    time_encoding: str = "log1p_minutes"  # log1p_minutes | hours
    token: str = "value"  # value | value_and_variable
    readout: str = "attention_last"  # attention_last | centered

    @classmethod
    def from_settings(cls, model: dict | None) -> "ModelConfig":
        """From the `model:` config section; missing keys get the schema defaults."""
        from seqsetvae.settings import load_settings

        section = load_settings({"model": dict(model or {})})["model"]
        config = cls(**{f.name: section[f.name] for f in fields(cls)})
        for key, heads in (("heads", config.heads), ("transformer_heads", config.transformer_heads)):
            if config.latent_dim % heads:
                raise InputError(f"configuration key model.{key}: {heads} does not divide model.latent_dim {config.latent_dim}")
        return config


@dataclass(frozen=True)
class LossWeights:
    """What the total loss weighs each term by: pred * CE + recon * Chamfer + beta * KL
    (seqsetvae.training.schedule sets them from the run's progress)."""

    beta: float
    recon: float
    pred: float


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, C]
    loss: torch.Tensor  # scalar: weights.pred * ce + weights.recon * recon + weights.beta * kl
    recon: torch.Tensor  # scalar: Chamfer loss, mean over real sets
    kl: torch.Tensor  # scalar: free-bits KL, mean over real sets (before beta)
    ce: torch.Tensor  # scalar: label-smoothed cross-entropy, mean over patients
    weights: LossWeights
    mu: torch.Tensor  # [S, latent]: posterior means of the real sets, batch set order
    h: torch.Tensor  # [S, latent]: sequence states of the real sets
    recon_per_set: torch.Tensor  # [S]
    kl_per_set: torch.Tensor  # [S] (free bits applied: what the loss sees)
    kl_raw_per_set: torch.Tensor  # [S] (the posterior's KL, for reporting)
    ce_per_patient: torch.Tensor  # [B]


# -- attention blocks on packed sets -------------------------------------------------------


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

    def rows_to_rows(self, query_in: torch.Tensor, kv_in: torch.Tensor, pair_key: torch.Tensor, pairs_per_query: torch.Tensor):
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


# -- the network ----------------------------------------------------------------------------


class SetEncoder(nn.Module):
    """Tokens [E, r] -> posterior (mu, logvar) [S, latent] of each set."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        d = c.latent_dim
        self.embed = nn.Sequential(nn.Linear(c.reduced_dim, d), nn.LayerNorm(d), nn.GELU())
        self.levels = nn.ModuleList(ISAB(d, c.heads, c.inducing_points) for _ in range(c.levels))
        self.posterior = nn.Sequential(
            nn.Linear(d, 2 * d), nn.LayerNorm(2 * d), nn.GELU(), nn.Dropout(c.dropout), nn.Linear(2 * d, 2 * d)
        )

    def forward(self, tokens: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(tokens)  # [E, d]
        for isab in self.levels:
            x = x + isab(x, batch.set_sizes)
        # deviation: only the deepest level's posterior is computed; the shallower
        # levels' (mu, logvar) enter no loss and no output in docs/model.md, so they would be
        # dead computation.
        pooled = segment_sum(x, batch.set_sizes) / batch.set_sizes.unsqueeze(-1).to(x.dtype)  # [S, d]
        mu, logvar = self.posterior(pooled).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0)


class SequenceModel(nn.Module):
    """Set latents [S, latent] -> causal states h [S, latent] (sets <= t only)."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        d = c.latent_dim
        self.time_encoding = c.time_encoding
        self.time = nn.Sequential(nn.Linear(1, d // 4), nn.ReLU(), nn.Linear(d // 4, d), nn.Tanh())
        self.norm = nn.LayerNorm(d)
        layer = nn.TransformerEncoderLayer(
            d, c.transformer_heads, c.ff_dim, c.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, c.transformer_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)

    def time_feature(self, minutes: torch.Tensor) -> torch.Tensor:
        # deviation from the original (raw minutes into Tanh saturates): log1p of minutes
        # (sign kept for times before admission) or hours, per model.time_encoding
        if self.time_encoding == "hours":
            return minutes / 60.0
        return torch.sign(minutes) * torch.log1p(minutes.abs())

    def forward(self, z: torch.Tensor, batch: Batch) -> torch.Tensor:
        (B, T), d = batch.sequence_mask.shape, z.shape[-1]
        time = self.time(self.time_feature(batch.set_times).unsqueeze(-1).to(z.dtype))
        position = sinusoid(torch.arange(T, device=z.device), d).to(z.dtype).index_select(0, batch.set_position)
        x = self.norm(z + time + position)  # [S, d]
        # each grid slot reads its set's row, an empty slot the zero row appended at S
        grid = torch.cat([x, x.new_zeros(1, d)]).index_select(0, batch.grid_set.view(-1)).view(B, T, d)
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool, device=z.device), diagonal=1)
        h = self.transformer(grid, mask=causal, src_key_padding_mask=~batch.sequence_mask, is_causal=True)
        return h[batch.set_patient, batch.set_position]  # [S, d]


class PMA(nn.Module):
    """PMA-style expansion: one learned seed per event slot attends to the set's rows."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.seed = nn.Linear(dim, dim)  # learned map of a fixed slot code -> seed vector
        self.key = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.mab = MAB(dim, heads)
        self.dropout = nn.Dropout(dropout)

    def forward(self, rows: torch.Tensor, batch: Batch, pair_key: torch.Tensor, pairs_per_event: torch.Tensor):
        """Seeds of the batch's events [E, d] attend to `rows` along the event's pairs -> [E, d]."""
        # deviation: the original drew random seeds (+ noise) at every call, so its
        # reconstructions were random even in evaluation; these seeds are learned and
        # deterministic, distinct per slot so a set's outputs can differ.
        seeds = self.seed(sinusoid(batch.event_slot, rows.shape[-1]).to(rows.dtype))  # [E, d]
        out = self.mab.rows_to_rows(seeds, self.key(rows), pair_key, pairs_per_event)
        return self.dropout(out + seeds)


class SetDecoder(nn.Module):
    """States h [S, latent] -> reconstructed tokens [E, reduced], n_t per set."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        d = c.latent_dim
        self.isabs = nn.ModuleList(ISAB(d, c.heads, c.inducing_points) for _ in range(c.levels))
        self.expansions = nn.ModuleList(PMA(d, c.heads, c.dropout) for _ in range(c.levels))
        self.out = nn.Linear(d, c.reduced_dim)
        # zero-initialised, so reconstructions start at the origin: the first Chamfer loss is
        # the targets' own scale (a few units per set) instead of the ~1,400 of a random
        # projection, and the first steps are not spent shrinking it
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, batch: Batch) -> torch.Tensor:
        # level 1: the set is one row, h_t; each event's seed attends to it (one pair each)
        ones_s, ones_e = torch.ones_like(batch.set_sizes), torch.ones_like(batch.event_set)
        z = self.isabs[0](h, ones_s)  # [S, d]
        rows = self.expansions[0](z, batch, batch.event_set, ones_e) + expand(h, batch.set_sizes, len(batch.event_set))  # [E, d]
        # deeper levels: one row per event; seeds attend to all rows of their set
        for isab, pma in zip(self.isabs[1:], self.expansions[1:]):
            z = isab(rows, batch.set_sizes)  # [E, d]
            rows = pma(z, batch, batch.pair_key, batch.pairs_per_event) + rows
        return self.out(rows)  # [E, r]


class Classifier(nn.Module):
    """Attention pooling over the sequence (softmax over t of h_t . z_t) beside the last
    state h_T, then an MLP. With `model.readout: centered`, the mean of the sets'
    posterior means joins them, and the MLP reads the features minus their running mean
    over training patients."""

    # the running mean's window, in training patients (the same for every batch size)
    CENTERING_PATIENTS = 512

    def __init__(self, c: ModelConfig):
        super().__init__()
        d = c.latent_dim
        self.centered = c.readout == "centered"
        width = 3 * d if self.centered else 2 * d
        self.mlp = nn.Sequential(nn.Linear(width, d // 2), nn.ReLU(), nn.Dropout(c.dropout), nn.Linear(d // 2, c.num_classes))
        if self.centered:
            self.register_buffer("feature_mean", torch.zeros(width))
            self.register_buffer("patients_seen", torch.zeros(1, dtype=torch.float64))
        self.track_mean = True  # False: training-mode passes that must not move it (noise-scale measurements)

    def forward(self, h: torch.Tensor, z: torch.Tensor, batch: Batch) -> torch.Tensor:
        # deviation: scores scaled by 1/sqrt(latent) (scaled dot product) so the softmax
        # does not start one-hot; h is layer-normed (norm ~ sqrt(latent))
        scores = (h * z).sum(-1) / math.sqrt(h.shape[-1])  # [S]
        weights = segment_softmax(scores, batch.sets_per_patient).to(h.dtype)  # over each patient's sets
        pooled = segment_sum(weights.unsqueeze(-1) * h, batch.sets_per_patient)  # [B, d]
        # deviation: the last state joins the pooled one. A softmax pooling is a weighted
        # mean, whose patient-to-patient spread shrinks with the number of sets; h_T has
        # attended to the whole stay and carries its length (the position code at T)
        last = h.index_select(0, torch.cumsum(batch.sets_per_patient, 0) - 1)  # [B, d]
        if not self.centered:
            return self.mlp(torch.cat([pooled, last], dim=-1))
        # deviation (model.readout: centered; docs/learning_on_real_data.md): the features
        # share a large component across patients (layer-normed states, means over ~24
        # sets) beside a small patient-to-patient spread; Adam's steps on uncentred inputs
        # go mostly into that shared part, and in a few epochs the MLP barely learnt to read
        # the spread. The sets' mean posterior mean is the stay's bag-of-sets summary.
        sets = batch.sets_per_patient.clamp(min=1).unsqueeze(-1).to(z.dtype)
        features = torch.cat([pooled, last, segment_sum(z, batch.sets_per_patient) / sets], dim=-1)  # [B, 3d]
        mean = self.feature_mean.to(features.dtype)
        if self.training and self.track_mean:
            mean = self.update_mean(features.detach(), batch.patient_weight)
        return self.mlp(features - mean)

    @torch.no_grad()
    def update_mean(self, features: torch.Tensor, patient_weight: torch.Tensor) -> torch.Tensor:
        """Move the running mean towards this batch's real patients; returns the mean this
        batch is centred by: the one before the update (a patient's output then does not
        depend on its batch-mates), except on the first batch, which has no earlier one."""
        weight = patient_weight.to(features.dtype)
        totals = torch.cat([(features * weight.unsqueeze(-1)).sum(0), weight.sum().unsqueeze(0)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)  # the global batch's mean on every rank (train.devices)
        n = totals[-1:]
        batch_mean = totals[:-1] / n
        seen = self.patients_seen.to(features.dtype)  # [1]
        # an exact average while fewer than the window have been seen, then exponential
        # forgetting with a time constant of CENTERING_PATIENTS patients
        rate = torch.maximum(n / (seen + n), -torch.expm1(-n / self.CENTERING_PATIENTS))
        before = torch.where(seen > 0, self.feature_mean.to(features.dtype), batch_mean)
        self.feature_mean.copy_(before + rate * (batch_mean - before))
        self.patients_seen.copy_(self.patients_seen + n)
        return before


# -- losses -------------------------------------------------------------------------------------


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


# -- the model ----------------------------------------------------------------------------------


class SeqSetVAE(nn.Module):
    def __init__(self, config: ModelConfig, embedding: torch.Tensor, class_weights: tuple[float, ...] | None = None):
        super().__init__()
        if embedding.dim() != 2:
            raise InputError(f"SeqSetVAE: the embedding must be a [V, D] tensor, got shape {tuple(embedding.shape)}")
        self.config = config
        # frozen input, not a parameter; not saved with the weights (persistent=False)
        self.register_buffer("embedding", embedding.detach().float().clone(), persistent=False)
        # cross-entropy weight of each class (train.class_weights); a training choice, not saved
        weights = torch.ones(config.num_classes) if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.reduce = nn.Linear(embedding.shape[1], config.reduced_dim)  # W: input_dim -> reduced_dim
        # deviation (model.token: value_and_variable): a second projection of the variable's
        # embedding joins the token, so that a value at the train mean (z = 0) still says
        # which variable was measured
        self.presence = nn.Linear(embedding.shape[1], config.reduced_dim) if config.token == "value_and_variable" else None
        self.encoder = SetEncoder(config)
        self.sequence = SequenceModel(config)
        self.decoder = SetDecoder(config)
        self.classifier = Classifier(config)
        self.compiled = self.cuda_graphs = False  # compile_step(); with mode="reduce-overhead"

    def tokens(self, batch: Batch) -> torch.Tensor:
        """[E, reduced]: normalize(W emb[variable]) * value, projecting each variable once."""
        embedding = self.embedding.index_select(0, batch.batch_variables)  # [U, D]
        table = F.normalize(self.reduce(embedding), dim=-1)  # [U, r]
        tokens = table.index_select(0, batch.event_variable) * batch.values.unsqueeze(-1).to(table.dtype)
        if self.presence is not None:
            tokens = tokens + F.normalize(self.presence(embedding), dim=-1).index_select(0, batch.event_variable)
        return tokens

    def forward(self, batch: Batch, weights: LossWeights, noise: torch.Tensor | None = None) -> ModelOutput:
        """`noise` [S, d]: the posterior's standard normal draws (drawn here in training
        when not given; a multi-device step passes its rows of the global batch's draws)."""
        if not self.training:  # evaluation reads the posterior means
            noise = None
        elif noise is None:
            noise = torch.randn(batch.n_sets, self.config.latent_dim, device=batch.values.device)
        if noise is not None and batch.padded:  # padding sets draw nothing: zeros
            noise = torch.cat([noise, noise.new_zeros(len(batch.set_sizes) - batch.n_sets, noise.shape[1])])
        # the schedule's weights as a tensor: a compiled step would specialise on floats
        w = torch.tensor([weights.pred, weights.recon, weights.beta])
        if batch.values.is_cuda:  # a pageable copy would synchronise with the device
            w = w.pin_memory().to(batch.values.device, non_blocking=True)
        if self.compiled:  # fixed sizes, not batch dimensions (no guard ties them to one)
            torch._dynamo.mark_static(w, 0)
            if noise is not None:
                torch._dynamo.mark_static(noise, 1)
        if self.cuda_graphs:  # a new step: the previous replay's outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        out = self.padded_forward(batch, w, noise)
        S, B = batch.n_sets, batch.n_patients  # real rows come first; padding is cut off here
        return ModelOutput(
            logits=out["logits"][:B], loss=out["loss"], recon=out["recon"], kl=out["kl"], ce=out["ce"],
            weights=weights, mu=out["mu"][:S], h=out["h"][:S],
            recon_per_set=out["recon_per_set"][:S], kl_per_set=out["kl_per_set"][:S],
            kl_raw_per_set=out["kl_raw_per_set"][:S], ce_per_patient=out["ce_per_patient"][:B],
        )  # fmt: skip

    def padded_forward(self, batch: Batch, w: torch.Tensor, noise: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The network and its losses on every row of `batch`, padding included; `w` [3]:
        pred, recon and beta weights. It reads tensors and their shapes only (no Python
        number of the batch), so one compiled graph serves every batch shape."""
        c = self.config
        tokens = self.tokens(batch)  # [E, r]
        mu, logvar = self.encoder(tokens, batch)  # [S, d] each
        z = mu + torch.exp(0.5 * logvar) * noise.to(mu.dtype) if noise is not None else mu
        h = self.sequence(z, batch)  # [S, d]
        recon = self.decoder(h, batch)  # [E, r]
        # deviation: the classifier reads the sequence of posterior means, in training as in
        # evaluation. Through the sampled z it learnt from noise that evaluation never shows
        # (the samples' noise drowns the patient-to-patient signal), so its evaluation
        # predictions were nearly constant and could rank worse than chance
        h_pred = self.sequence(mu, batch) if self.training else h  # [S, d]
        logits = self.classifier(h_pred, mu, batch)  # [B, C]

        # deviation: the target is detached; letting the loss move W through the target
        # would reward collapsing all variables onto one direction.
        recon_per_set = chamfer_per_set(recon, tokens.detach(), batch)
        kl_raw = kl_per_set(mu, logvar, free_bits=0.0)
        kl_set = kl_raw.clamp(min=c.free_bits * mu.shape[-1])
        ce_per_patient = F.cross_entropy(at_least_float32(logits), batch.labels, label_smoothing=c.label_smoothing, reduction="none")
        # a patient's CE times its class's weight; the mean over patients is not renormalised
        # by the batch's weights, so the loss of a batch is the mean of its patients' losses
        ce_per_patient = ce_per_patient * self.class_weights.index_select(0, batch.labels)
        # means over the real sets and patients (padding weighs 0)
        sets, patients = batch.set_weight, batch.patient_weight
        recon_loss = (recon_per_set * sets).sum() / sets.sum()
        kl = (kl_set * sets).sum() / sets.sum()
        ce = (ce_per_patient * patients).sum() / patients.sum()
        return {
            "logits": logits, "loss": w[0] * ce + w[1] * recon_loss + w[2] * kl, "recon": recon_loss, "kl": kl,
            "ce": ce, "mu": mu, "h": h, "recon_per_set": recon_per_set, "kl_per_set": kl_set,
            "kl_raw_per_set": kl_raw, "ce_per_patient": ce_per_patient,
        }  # fmt: skip

    def compile_step(self, mode: str | None = None) -> None:
        """Compile `padded_forward` (and, through AOTAutograd, its backward) with
        torch.compile: dynamic shapes, so batches of new sizes reuse the graph; `mode`
        "reduce-overhead" replays CUDA graphs, one per input shape (pad the batches to
        buckets, `collate(pad=True)`, to keep those few)."""
        # no duck sizing: two batch dimensions that happen to be equal (3 patients, 3 loss
        # weights; 40 variables, 40 sets) would otherwise be traced as one size, and the
        # first batch where they differ would recompile
        torch.fx.experimental._config.use_duck_shape = False
        self.padded_forward = torch.compile(self.padded_forward, dynamic=True, mode=mode)
        self.compiled, self.cuda_graphs = True, mode == "reduce-overhead"

    def parameter_groups(self, lr: float, setvae_lr_factor: float = 0.1, weight_decay: float | None = None) -> list[dict]:
        """AdamW groups: the SetVAE encoder (W and the set encoder) at lr x setvae_lr_factor."""
        tokens = [*self.reduce.parameters(), *(self.presence.parameters() if self.presence is not None else [])]
        setvae = [*tokens, *self.encoder.parameters()]
        setvae_ids = {id(p) for p in setvae}
        rest = [p for p in self.parameters() if id(p) not in setvae_ids]
        groups = [
            {"name": "setvae_encoder", "params": setvae, "lr": lr * setvae_lr_factor},
            {"name": "rest", "params": rest, "lr": lr},
        ]
        if weight_decay is not None:
            for group in groups:
                group["weight_decay"] = weight_decay
        return groups
