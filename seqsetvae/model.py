"""SeqSetVAE: a set VAE per timestamp under a causal transformer, on packed batches.

API (the contract of docs/design.md):

    config = ModelConfig.from_settings(settings["model"])      # schema defaults filled
    model = SeqSetVAE(config, embedding)                         # embedding: Tensor [V, D]
    weights = loss_weights(settings["model"], step, epochs)      # seqsetvae.training.schedule
    out = model(collate(patients).to(device), weights)           # one forward per batch
    out.loss.backward()                  # the optimiser: model.parameter_groups(lr, ...)

`ModelOutput`: `logits [B, C]`, `loss`, `recon`, `kl`, `ce` (scalars), the `weights`
used, `mu [S, latent]` and `h [S, latent]` (real sets, in the batch's set order), and
per-item terms `recon_per_set [S]`, `kl_per_set [S]` (free bits applied),
`kl_raw_per_set [S]`, `ce_per_patient [B]` (times its class weight), and under
`model.wide_combine: standardized` or `stacked` `paths [B, 2, C]`, the deep and wide
paths' logits.

The variable embedding is a frozen, non-persistent buffer: not a parameter and not in
`state_dict()` (the embedding stage's file is its one source; evaluation needs it too).

Layout (seqsetvae.batching): events are packed `[E, d]` with a set id per event, so the
set encoder and decoder touch real events only (no padding); the attention blocks are in
seqsetvae.attention, the per-segment operations in seqsetvae.segments. Attention from a
set's inducing points to its events is a segment softmax over the event rows of that set;
attention from events to their set's induced vectors gathers those vectors per event;
event-to-event attention inside a set (decoder) and the Chamfer loss run over the list
of within-set event pairs. Every per-set reduction (softmax max/sum, means, minima)
reads only that set's rows, so a patient's outputs do not depend on its batch-mates.
Only the sequence transformer sees a padded `[B, T_max]` grid, with a causal mask plus
a key-padding mask.

Deviations (each with its reason): docs/model.md, section 5; `# deviation:` below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqsetvae.attention import ISAB, MAB
from seqsetvae.batching import Batch
from seqsetvae.errors import InputError
from seqsetvae.losses import chamfer_per_set, kl_per_set
from seqsetvae.segments import at_least_float32, expand, segment_softmax, segment_sum, sinusoid
from seqsetvae.summaries import patient_summaries, summary_width

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
    head: str = "mlp"  # mlp | linear: the classifier on the readout's features
    wide: str = "none"  # none | summaries: a linear path on per-patient measurement summaries
    wide_l2: float = 0.0  # L2 penalty on the wide path's weights, in the loss (not decoupled decay)
    label_gradient: str = "network"  # network | head: what the prediction loss trains
    wide_combine: str = "sum"  # sum | average | standardized | stacked: how the wide path joins the deep one

    @classmethod
    def from_settings(cls, model: dict | None) -> "ModelConfig":
        """From the `model:` config section; missing keys get the schema defaults."""
        from seqsetvae.settings import load_settings

        section = load_settings({"model": dict(model or {})})["model"]
        config = cls(**{f.name: section[f.name] for f in fields(cls)})
        for key, heads in (("heads", config.heads), ("transformer_heads", config.transformer_heads)):
            if config.latent_dim % heads:
                raise InputError(
                    f"configuration key model.{key}: {heads} does not divide model.latent_dim {config.latent_dim}"
                )
        return config


@dataclass(frozen=True)
class LossWeights:
    """What the total loss weighs each term by: pred * CE + recon * Chamfer + beta * KL
    (seqsetvae.training.schedule sets them from the run's progress)."""

    beta: float
    recon: float
    pred: float

    @classmethod
    def at_evaluation(cls, model: dict) -> LossWeights:
        """Validation and test: the schedules' end (docs/model.md), fixed so that losses compare across runs."""
        return cls(beta=model["max_beta"], recon=0.5 * model["recon_weight"], pred=model["pred_weight"])


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, C]
    loss: torch.Tensor  # scalar: weights.pred * (ce + wide penalty) + weights.recon * recon + weights.beta * kl
    recon: torch.Tensor  # scalar: Chamfer loss, mean over real sets
    kl: torch.Tensor  # scalar: free-bits KL, mean over real sets (before beta)
    ce: torch.Tensor  # scalar: label-smoothed cross-entropy of the fitted logits, mean over patients
    weights: LossWeights
    mu: torch.Tensor  # [S, latent]: posterior means of the real sets, batch set order
    h: torch.Tensor  # [S, latent]: sequence states of the real sets
    recon_per_set: torch.Tensor  # [S]
    kl_per_set: torch.Tensor  # [S] (free bits applied: what the loss sees)
    kl_raw_per_set: torch.Tensor  # [S] (the posterior's KL, for reporting)
    ce_per_patient: torch.Tensor  # [B]
    paths: torch.Tensor | None = None  # [B, 2, C]: the deep and wide paths' logits (standardized, stacked)


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
        self.transformer = nn.TransformerEncoder(
            layer, c.transformer_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
        )

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
        rows = self.expansions[0](z, batch, batch.event_set, ones_e) + expand(
            h, batch.set_sizes, len(batch.event_set)
        )  # [E, d]
        # deeper levels: one row per event; seeds attend to all rows of their set
        for isab, pma in zip(self.isabs[1:], self.expansions[1:]):
            z = isab(rows, batch.set_sizes)  # [E, d]
            rows = pma(z, batch, batch.pair_key, batch.pairs_per_event) + rows
        return self.out(rows)  # [E, r]


class Classifier(nn.Module):
    """Attention pooling over the sequence (softmax over t of h_t . z_t) beside the last
    state h_T, then an MLP. With `model.readout: centered`, the mean of the sets'
    posterior means joins them, and the MLP reads the features minus their running mean
    over training patients. With `model.wide: summaries`, a linear map of the patient's
    standardised measurement summaries (seqsetvae.summaries) joins the logits: added to
    them under one cross-entropy (`model.wide_combine: sum`), or, with `average`, each
    path fitted to the labels by a cross-entropy of its own and the logits their mean;
    with `standardized` or `stacked`, a weighted sum that fit_stack() fits on held-out
    patients."""

    # the running means' window, in training patients (the same for every batch size)
    CENTERING_PATIENTS = 512

    def __init__(self, c: ModelConfig, vocab_size: int):
        super().__init__()
        d = c.latent_dim
        self.centered = c.readout == "centered"
        width = 3 * d if self.centered else 2 * d
        if c.head == "linear":  # deviation (docs/learning_rounds.md, round four): one linear map of the features
            self.mlp = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(width, c.num_classes))
        else:
            self.mlp = nn.Sequential(
                nn.Linear(width, d // 2), nn.ReLU(), nn.Dropout(c.dropout), nn.Linear(d // 2, c.num_classes)
            )
        if self.centered:
            self.register_buffer("feature_mean", torch.zeros(width))
            self.register_buffer("patients_seen", torch.zeros(1, dtype=torch.float64))
        self.vocab_size = vocab_size
        self.wide, self.wide_l2, self.combine = None, c.wide_l2, c.wide_combine
        if c.wide == "summaries":
            # deviation (model.wide; docs/learning_rounds.md, round six): the logistic
            # regression's inputs, standardised by running moments over training patients;
            # zero at the start, so training begins from the deep path alone
            summaries = summary_width(vocab_size)
            self.wide = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(summaries, c.num_classes))
            nn.init.zeros_(self.wide[1].weight)
            nn.init.zeros_(self.wide[1].bias)
            self.register_buffer("summary_moments", torch.zeros(2 * summaries))  # [mean, mean of squares]
            self.register_buffer("summary_patients_seen", torch.zeros(1, dtype=torch.float64))
            if c.wide_combine in ("stacked", "standardized"):
                # logits = stack_weights[0] x deep + stack_weights[1] x wide + stack_bias, the
                # mean of the two until fit_stack() fits them on a validation split
                self.register_buffer("stack_weights", torch.full((2,), 0.5))
                self.register_buffer("stack_bias", torch.zeros(c.num_classes))
        # under train.devices, every rank moves the means by the global batch (an all-reduce);
        # False for a pass that one rank runs alone (the gradient-noise measurement)
        self.sync_ranks = True
        self.wide_frozen = False  # freeze_wide(): the wide path is a fixed offset

    def freeze_wide(self) -> None:
        """Keep the wide path where it is (train.wide_lr_factor: 0): its map and its
        standardiser's moments do not move and its inputs see no dropout, so in training
        as in evaluation it gives exactly the same logits (with train.wide_start:
        regression, the fitted regression's): a fixed offset under `sum`, a fixed
        predictor beside the network under `average`."""
        if self.wide is None:
            raise InputError(
                "configuration key train.wide_lr_factor: 0 freezes the wide path; it needs model.wide: summaries"
            )
        self.wide.requires_grad_(False)
        self.wide[0] = nn.Identity()  # the dropout: it holds no weights, the state is unchanged
        self.wide_frozen = True

    def forward(
        self, h: torch.Tensor, z: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """(the logits [B, C], the logits that the prediction loss fits to the labels, and
        under `model.wide_combine: standardized | stacked` each path's logits [B, 2, C]: deep, wide)."""
        deep = self.deep(h, z, batch)
        if self.wide is None:
            return deep, [deep], None
        wide = self.wide_logits(batch, deep.dtype)
        if self.combine == "sum":
            return deep + wide, [deep + wide], None
        # deviation (model.wide_combine: average; docs/learning_on_real_data.md, round
        # eleven): two predictors, each fitted on its own, and their mean. Under one
        # cross-entropy of the sum, each path fits what the other leaves: over a fitted
        # regression the network learnt noise; an ensemble of the two does not.
        fitted = [deep] if self.wide_frozen else [deep, wide]
        if self.combine == "average":
            return (deep + wide) / 2, fitted, None
        # deviation (standardized, stacked; round twelve): a plain mean lets the path with
        # the wider logits decide, however well it ranks (a strongly penalised regression's
        # logits are narrow); fit_stack() puts the paths on one scale, then calibrates
        paths = torch.stack([deep, wide], dim=1)  # [B, 2, C]
        return self.stack(paths), fitted, paths

    def stack(self, paths: torch.Tensor) -> torch.Tensor:
        """[B, C]: the stack's logits of the paths' logits [B, 2, C]."""
        weights = self.stack_weights.to(paths.dtype)
        return (paths * weights[:, None]).sum(1) + self.stack_bias.to(paths.dtype)

    @torch.no_grad()
    def fit_stack(self, paths: torch.Tensor, labels: torch.Tensor) -> bool:
        """Fit the combination of the paths' logits [N, 2, C] to held-out patients, by
        maximum likelihood unweighted by class, so that the risks are calibrated:
        - `standardized`: each path divided by its spread over these patients (no label
          read), the two averaged, then one slope (> 0) and a bias per class fitted
          (Platt scaling): the two paths count equally, and the ranking is the mean's;
        - `stacked`: each path's weight (at least 0) and the bias fitted together, so a
          path counts by how it predicts these patients (a stacked generalisation).
        A split without both classes leaves the combination as it is (returns False)."""
        labels = labels.long()
        if paths.shape[0] == 0 or torch.unique(labels).numel() < 2:
            return False
        paths = paths.double()
        if self.combine == "standardized":
            direction = 0.5 / logit_spread(paths)  # [2]
            slope, bias = fit_stack_weights((paths * direction[:, None]).sum(1, keepdim=True), labels, [True])
            # a combination that ranks backwards here keeps its ranking; its risks are then ~constant
            weights = slope.clamp(min=1e-6) * direction
        else:
            free = [True, True]  # a path whose best weight is negative ranks backwards here: weight 0
            for _ in range(2):
                weights, bias = fit_stack_weights(paths, labels, free)
                if (weights >= 0).all():
                    break
                free = [f and float(w) > 0 for f, w in zip(free, weights)]
        self.stack_weights.copy_(weights.clamp(min=0.0))
        self.stack_bias.copy_(bias)
        return True

    def wide_logits(self, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
        """[B, C]: the wide map of the patients' standardised summaries."""
        summaries = patient_summaries(batch, self.vocab_size).to(dtype)  # [B, F]
        moments = self.summary_moments.to(dtype)
        learning = self.training and not self.wide_frozen
        if learning:
            squares = torch.cat([summaries, summaries.square()], dim=-1)
            moments = self.update_mean(squares, batch.patient_weight, self.summary_moments, self.summary_patients_seen)
        mean, mean_square = moments.chunk(2)
        variance = (mean_square - mean.square()).clamp(min=0.0)
        # a feature constant over the patients seen keeps its scale (as StandardScaler does)
        scale = torch.where(variance > 1e-8, torch.rsqrt(variance.clamp(min=1e-8)), torch.ones_like(variance))
        return self.wide((summaries - mean) * scale)

    def wide_penalty(self) -> torch.Tensor | float:
        """wide_l2 / 2 x the squared norm of the wide map's weights (not its bias): the
        logistic regression's own penalty, in the loss. AdamW's decoupled decay at the
        network's rate leaves this path nearly unpenalised, and Adam's fixed point under
        an L2 term in the loss is the penalised optimum (round seven)."""
        if self.wide is None or self.wide_l2 == 0.0 or self.wide_frozen:  # frozen: no term to train
            return 0.0
        return 0.5 * self.wide_l2 * self.wide[1].weight.float().square().sum()

    def deep(self, h: torch.Tensor, z: torch.Tensor, batch: Batch) -> torch.Tensor:
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
        # deviation (model.readout: centered; docs/learning_rounds.md, round three): the features
        # share a large component across patients (layer-normed states, means over ~24
        # sets) beside a small patient-to-patient spread; Adam's steps on uncentred inputs
        # go mostly into that shared part, and in a few epochs the MLP barely learnt to read
        # the spread. The sets' mean posterior mean is the stay's bag-of-sets summary.
        sets = batch.sets_per_patient.clamp(min=1).unsqueeze(-1).to(z.dtype)
        features = torch.cat([pooled, last, segment_sum(z, batch.sets_per_patient) / sets], dim=-1)  # [B, 3d]
        mean = self.feature_mean.to(features.dtype)
        if self.training:
            mean = self.update_mean(features.detach(), batch.patient_weight, self.feature_mean, self.patients_seen)
        return self.mlp(features - mean)

    @torch.no_grad()
    def update_mean(
        self, features: torch.Tensor, patient_weight: torch.Tensor, average: torch.Tensor, seen: torch.Tensor
    ) -> torch.Tensor:
        """Move the running mean `average` (a buffer; `seen`: the patients it has seen)
        towards this batch's real patients; returns the mean this batch is centred by:
        the one before the update (a patient's output then does not depend on its
        batch-mates), except on the first batch, which has no earlier one."""
        weight = patient_weight.to(features.dtype)
        totals = torch.cat([(features * weight.unsqueeze(-1)).sum(0), weight.sum().unsqueeze(0)])
        # is_initialized() first: a compiled step then never reads (nor guards on) sync_ranks
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.sync_ranks:
            torch.distributed.all_reduce(totals)  # the global batch's mean on every rank
        n = totals[-1:]
        batch_mean = totals[:-1] / n
        patients = seen.to(features.dtype)  # [1]
        # an exact average while fewer than the window have been seen, then exponential
        # forgetting with a time constant of CENTERING_PATIENTS patients
        rate = torch.maximum(n / (patients + n), -torch.expm1(-n / self.CENTERING_PATIENTS))
        before = torch.where(patients > 0, average.to(features.dtype), batch_mean)
        average.copy_(before + rate * (batch_mean - before))
        seen.copy_(seen + n)
        return before


# -- the model ----------------------------------------------------------------------------------


def logit_spread(paths: torch.Tensor) -> torch.Tensor:
    """[K]: each path's spread over patients of its logits [N, K, C], centred per patient
    over the classes (what softmax reads; with two classes, half the margin's standard
    deviation); at least 1e-3, so a constant path stays finite."""
    centred = paths - paths.mean(-1, keepdim=True)
    return (centred - centred.mean(0)).square().mean((0, 2)).sqrt().clamp(min=1e-3)


def fit_stack_weights(paths: torch.Tensor, labels: torch.Tensor, free: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum-likelihood weights [K] of the paths [N, K, C] (those not `free` fixed at 0)
    and bias [C] (the first class's at 0: softmax is shift-invariant) for logits
    sum_k weights[k] paths[:, k] + bias. A ridge on the weights in units of each path's
    spread keeps a constant path's weight determinate and leaves the others unbiased
    (1e-5 of a unit change). L-BFGS in float64 from weights 0.5."""
    classes, paths_count = paths.shape[-1], paths.shape[1]
    mask = torch.tensor(free, dtype=paths.dtype)
    spread = logit_spread(paths)  # [K]
    weights = torch.full((paths_count,), 0.5, dtype=paths.dtype, requires_grad=True)
    bias = torch.zeros(classes - 1, dtype=paths.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        w = weights * mask
        logits = (paths * w[:, None]).sum(1) + torch.cat([bias.new_zeros(1), bias])
        loss = F.cross_entropy(logits, labels) + 1e-5 * (w * spread).square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return (weights * mask).detach(), torch.cat([bias.new_zeros(1), bias]).detach()


class SeqSetVAE(nn.Module):
    def __init__(self, config: ModelConfig, embedding: torch.Tensor, class_weights: tuple[float, ...] | None = None):
        super().__init__()
        if embedding.dim() != 2:
            raise InputError(f"SeqSetVAE: the embedding must be a [V, D] tensor, got shape {tuple(embedding.shape)}")
        self.config = config
        # frozen input, not a parameter; not saved with the weights (persistent=False)
        self.register_buffer("embedding", embedding.detach().float().clone(), persistent=False)
        # cross-entropy weight of each class (train.class_weights); a training choice, not saved
        weights = (
            torch.ones(config.num_classes)
            if class_weights is None
            else torch.tensor(class_weights, dtype=torch.float32)
        )
        self.register_buffer("class_weights", weights, persistent=False)
        self.reduce = nn.Linear(embedding.shape[1], config.reduced_dim)  # W: input_dim -> reduced_dim
        # deviation (model.token: value_and_variable): a second projection of the variable's
        # embedding joins the token, so that a value at the train mean (z = 0) still says
        # which variable was measured
        self.presence = (
            nn.Linear(embedding.shape[1], config.reduced_dim) if config.token == "value_and_variable" else None
        )
        self.encoder = SetEncoder(config)
        self.sequence = SequenceModel(config)
        self.decoder = SetDecoder(config)
        self.classifier = Classifier(config, vocab_size=embedding.shape[0])
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
            logits=out["logits"][:B],
            loss=out["loss"],
            recon=out["recon"],
            kl=out["kl"],
            ce=out["ce"],
            weights=weights,
            mu=out["mu"][:S],
            h=out["h"][:S],
            recon_per_set=out["recon_per_set"][:S],
            kl_per_set=out["kl_per_set"][:S],
            kl_raw_per_set=out["kl_raw_per_set"][:S],
            ce_per_patient=out["ce_per_patient"][:B],
            paths=out["paths"][:B] if "paths" in out else None,
        )

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
        # deviation (model.label_gradient: head): the labels train the classifier alone; the
        # network's features are learnt without them (docs/learning_rounds.md, round eleven)
        features = (h_pred.detach(), mu.detach()) if c.label_gradient == "head" else (h_pred, mu)
        logits, fitted, paths = self.classifier(*features, batch)  # [B, C], the logits the labels fit, [B, 2, C]

        # deviation: the target is detached; letting the loss move W through the target
        # would reward collapsing all variables onto one direction.
        recon_per_set = chamfer_per_set(recon, tokens.detach(), batch)
        kl_raw = kl_per_set(mu, logvar, free_bits=0.0)
        kl_set = kl_raw.clamp(min=c.free_bits * mu.shape[-1])
        ce_per_patient = sum(
            F.cross_entropy(at_least_float32(x), batch.labels, label_smoothing=c.label_smoothing, reduction="none")
            for x in fitted
        )
        # a patient's CE times its class's weight; the mean over patients is not renormalised
        # by the batch's weights, so the loss of a batch is the mean of its patients' losses
        ce_per_patient = ce_per_patient * self.class_weights.index_select(0, batch.labels)
        # means over the real sets and patients (padding weighs 0)
        sets, patients = batch.set_weight, batch.patient_weight
        recon_loss = (recon_per_set * sets).sum() / sets.sum()
        kl = (kl_set * sets).sum() / sets.sum()
        ce = (ce_per_patient * patients).sum() / patients.sum().clamp(min=1.0)  # 0, not 0/0, for a stand-in rank
        prediction = ce + self.classifier.wide_penalty()
        return {
            "logits": logits,
            "loss": w[0] * prediction + w[1] * recon_loss + w[2] * kl,
            "recon": recon_loss,
            "kl": kl,
            "ce": ce,
            "mu": mu,
            "h": h,
            "recon_per_set": recon_per_set,
            "kl_per_set": kl_set,
            "kl_raw_per_set": kl_raw,
            "ce_per_patient": ce_per_patient,
            **({} if paths is None else {"paths": paths}),
        }

    # the set VAE's modules: what `seqsetvae pretrain` trains and `train` starts from
    SET_VAE_MODULES = ("reduce", "presence", "encoder", "decoder")

    def set_vae_loss(self, batch: Batch, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The set VAE alone (the original's pretraining stage): every set of the batch is
        encoded and reconstructed from its own latent, without the sequence model, so a
        set is an item whatever its patient. Returns (Chamfer + beta x free-bits KL, the
        Chamfer loss, the KL), each a mean over the real sets."""
        tokens = self.tokens(batch)
        mu, logvar = self.encoder(tokens, batch)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        recon = self.decoder(z, batch)
        sets = batch.set_weight
        recon_loss = (chamfer_per_set(recon, tokens.detach(), batch) * sets).sum() / sets.sum()
        kl_set = kl_per_set(mu, logvar, free_bits=0.0).clamp(min=self.config.free_bits * mu.shape[-1])
        kl = (kl_set * sets).sum() / sets.sum()
        return recon_loss + beta * kl, recon_loss, kl

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

    def parameter_groups(
        self, lr: float, setvae_lr_factor: float = 0.1, weight_decay: float | None = None, wide_lr_factor: float = 1.0
    ) -> list[dict]:
        """AdamW groups: the SetVAE encoder (W and the set encoder) at lr x setvae_lr_factor;
        with `model.wide: summaries`, the wide map at lr x wide_lr_factor (0: frozen)."""
        tokens = [*self.reduce.parameters(), *(self.presence.parameters() if self.presence is not None else [])]
        setvae = [*tokens, *self.encoder.parameters()]
        # its own group only when its rate differs: the default's optimiser state is unchanged
        separate = self.classifier.wide is not None and wide_lr_factor != 1.0
        wide = [*self.classifier.wide.parameters()] if separate else []
        grouped = {id(p) for p in [*setvae, *wide]}
        rest = [p for p in self.parameters() if id(p) not in grouped]
        groups = [
            {"name": "setvae_encoder", "params": setvae, "lr": lr * setvae_lr_factor},
            {"name": "rest", "params": rest, "lr": lr},
        ]
        if wide:
            groups.append({"name": "wide", "params": wide, "lr": lr * wide_lr_factor})
        if weight_decay is not None:
            for group in groups:
                group["weight_decay"] = weight_decay
        return groups
