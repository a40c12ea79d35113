"""SeqSetVAE on packed batches: the proofs that batching is right.

Batch invariance, isolation of patients and padded slots, permutation invariance inside a
set, strict causality, the vectorised losses against slow loop references, and a short
overfitting run. Small model in float64, eval mode unless said otherwise.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqsetvae.batching import collate, random_patients
from seqsetvae.data.ragged import RaggedPatients
from seqsetvae.errors import InputError
from seqsetvae.losses import chamfer_per_set, kl_per_set
from seqsetvae.model import LossWeights, ModelConfig, SeqSetVAE

SMALL = ModelConfig(
    reduced_dim=16,
    latent_dim=32,
    levels=2,
    inducing_points=4,
    heads=2,
    transformer_layers=2,
    transformer_heads=2,
    ff_dim=64,
)
W = LossWeights(beta=0.05, recon=0.5, pred=1.0)  # loss weights of a forward (the schedule's job)
VOCAB, EMB_DIM = 30, 24


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest and does not fight the other test workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(seed=0, config=SMALL) -> SeqSetVAE:
    torch.manual_seed(seed)
    return SeqSetVAE(config, torch.randn(VOCAB, EMB_DIM)).double().eval()


def concat(*groups: RaggedPatients) -> RaggedPatients:
    return RaggedPatients(
        patient_ids=[p for g in groups for p in g.patient_ids],
        labels=np.concatenate([g.labels for g in groups]),
        variable_ids=np.concatenate([g.variable_ids for g in groups]),
        values=np.concatenate([g.values for g in groups]),
        set_times=np.concatenate([g.set_times for g in groups]),
        set_offsets=np.concatenate([[0], np.cumsum(np.concatenate([g.set_sizes() for g in groups]))]),
        patient_offsets=np.concatenate([[0], np.cumsum(np.concatenate([g.sets_per_patient() for g in groups]))]),
    )


def mixed_patients() -> RaggedPatients:
    """Patients of very different lengths and set sizes, one of a single 1-event set."""
    one = RaggedPatients(
        ["single"],
        np.array([1]),
        np.array([3], np.int32),
        np.array([0.7], np.float32),
        np.array([5.0], np.float32),
        np.array([0, 1]),
        np.array([0, 1]),
    )
    return concat(
        random_patients(2, mean_sets=40, mean_events=150, vocab_size=VOCAB, seed=1),
        one,
        random_patients(2, mean_sets=3, mean_events=20, vocab_size=VOCAB, max_set_size=12, seed=2),
        random_patients(1, mean_sets=12, mean_events=12, vocab_size=VOCAB, seed=3),  # all sets of one event
    )


def per_patient(out, batch, p):
    sets = batch.set_patient == p
    return {
        "logits": out.logits[p],
        "ce": out.ce_per_patient[p],
        "mu": out.mu[sets],
        "h": out.h[sets],
        "recon": out.recon_per_set[sets],
        "kl": out.kl_per_set[sets],
    }


def test_patient_outputs_do_not_depend_on_batch_mates_or_order():
    patients = mixed_patients()
    model = small_model()
    with torch.no_grad():
        alone = []
        for i in range(patients.n_patients):
            batch = collate(patients.take([i]))
            alone.append(per_patient(model(batch, W), batch, 0))
        order = np.random.default_rng(0).permutation(patients.n_patients)
        batch = collate(patients.take(order))
        together = model(batch, W)
    for position, i in enumerate(order):
        got = per_patient(together, batch, position)
        for key, expected in alone[i].items():
            torch.testing.assert_close(got[key], expected, rtol=1e-5, atol=1e-5, msg=f"patient {i} {key}")
    # and the batch means are the means of the per-item terms
    torch.testing.assert_close(together.recon, together.recon_per_set.mean())
    torch.testing.assert_close(together.ce, together.ce_per_patient.mean())


def test_no_gradient_crosses_patients_and_single_event_sets_are_finite():
    patients = mixed_patients()
    model = small_model()
    batch = collate(patients)
    batch.values = batch.values.double().requires_grad_(True)
    out = model(batch, W)
    assert all(torch.isfinite(t).all() for t in (out.loss, out.logits, out.mu, out.h, out.recon_per_set))
    target = 2  # the patient of one set of one event
    mine = batch.set_patient == target
    loss = out.ce_per_patient[target] + out.recon_per_set[mine].sum() + out.kl_per_set[mine].sum()
    (grad,) = torch.autograd.grad(loss, batch.values)
    event_patient = batch.set_patient[batch.event_set]
    assert torch.all(grad[event_patient != target] == 0)  # exactly zero, not just small
    assert torch.all(grad[event_patient == target] != 0)  # the test can fail


def test_padded_sequence_slots_get_zero_gradient_and_change_nothing():
    model = small_model()
    batch = collate(mixed_patients())
    padded = ~batch.sequence_mask
    assert padded.any()
    with torch.no_grad():
        reference = model(batch, W)
    captured = {}

    def fill_padding_with_garbage(module, args, kwargs):
        grid = args[0].detach().clone()
        grid[padded] = torch.randn(int(padded.sum()), grid.shape[-1], dtype=grid.dtype) * 1e3
        captured["grid"] = grid.requires_grad_(True)
        return (captured["grid"],), kwargs

    handle = model.sequence.transformer.register_forward_pre_hook(fill_padding_with_garbage, with_kwargs=True)
    try:
        out = model(batch, W)
    finally:
        handle.remove()
    torch.testing.assert_close(out.h, reference.h, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.logits, reference.logits, rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(out.loss, captured["grid"])
    assert torch.all(grad[padded] == 0) and torch.any(grad[~padded] != 0)


def test_bucket_padding_changes_no_output_loss_or_gradient():
    """A batch padded to buckets (for CUDA graphs) gives the unpadded batch's outputs,
    losses and gradients: padding rows touch no real row and weigh 0 in the losses."""
    patients = mixed_patients()
    config = ModelConfig(**{**SMALL.__dict__, "dropout": 0.0})
    model = small_model(config=config)
    plain, padded = collate(patients), collate(patients, pad=True)
    assert padded.padded and len(padded.event_set) > plain.n_events
    with torch.no_grad():
        a, b = model(plain, W), model(padded, W)
    for name in ("logits", "mu", "h", "recon_per_set", "kl_per_set", "ce_per_patient", "loss", "recon", "kl", "ce"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-12, atol=1e-12, msg=name)
    model.train()  # the reparameterised sample too, with the same draws
    noise = torch.randn(
        plain.n_sets, config.latent_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    grads = []
    for batch in (plain, padded):
        model.zero_grad()
        out = model(batch, W, noise)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_every_set_of_one_event_trains_without_nan():
    model = small_model()
    model.train()
    batch = collate(random_patients(3, mean_sets=10, mean_events=10, vocab_size=VOCAB, seed=4))
    assert int(batch.set_sizes.max()) == 1
    out = model(batch, W)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_event_order_inside_a_set_does_not_change_its_encoding():
    patients = random_patients(3, mean_sets=8, mean_events=40, vocab_size=VOCAB, seed=5)
    model = small_model()
    # reverse the events of every set (vectorised: index within set mirrored)
    sizes = patients.set_sizes()
    starts = np.repeat(patients.set_offsets[:-1], sizes)
    slot = np.arange(patients.n_events) - starts
    mirrored = starts + np.repeat(sizes, sizes) - 1 - slot
    assert not np.array_equal(mirrored, np.arange(patients.n_events))
    shuffled = RaggedPatients(
        patients.patient_ids,
        patients.labels,
        patients.variable_ids[mirrored],
        patients.values[mirrored],
        patients.set_times,
        patients.set_offsets,
        patients.patient_offsets,
    )
    with torch.no_grad():
        a, b = model(collate(patients), W), model(collate(shuffled), W)
    for key in ("mu", "h", "logits", "recon_per_set", "kl_per_set"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key), rtol=1e-6, atol=1e-6, msg=key)


def test_changing_a_later_set_leaves_earlier_states_unchanged():
    patients = random_patients(2, mean_sets=12, mean_events=40, vocab_size=VOCAB, seed=6)
    model = small_model()
    t = 5  # patient 0's set 5: new values and a new time
    changed = RaggedPatients(
        patients.patient_ids,
        patients.labels,
        patients.variable_ids,
        patients.values.copy(),
        patients.set_times.copy(),
        patients.set_offsets,
        patients.patient_offsets,
    )
    changed.values[patients.set_offsets[t] : patients.set_offsets[t + 1]] += 3.0
    changed.set_times[t] += 1.0
    with torch.no_grad():
        a, b = model(collate(patients), W), model(collate(changed), W)
    torch.testing.assert_close(a.h[:t], b.h[:t], rtol=0, atol=0)
    assert (a.h[t : patients.patient_offsets[1]] - b.h[t : patients.patient_offsets[1]]).abs().amax(-1).min() > 1e-6
    torch.testing.assert_close(a.h[patients.patient_offsets[1] :], b.h[patients.patient_offsets[1] :], rtol=0, atol=0)


def test_decoder_is_deterministic_in_eval():
    model = small_model()
    batch = collate(random_patients(2, mean_sets=6, mean_events=20, vocab_size=VOCAB, seed=7))
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(batch, W)
        torch.manual_seed(2)
        b = model(batch, W)
    assert torch.equal(a.recon_per_set, b.recon_per_set) and torch.equal(a.logits, b.logits)


# -- attention blocks against a plain (unfolded, per-set) reference -------------------------


def reference_mab(mab, query_in, kv_in):
    """Textbook multihead attention block for one set: no folding, no packing."""
    heads, dh = mab.heads, mab.head_dim
    q = mab.q(query_in).view(-1, heads, dh).transpose(0, 1)
    k = mab.k(kv_in).view(-1, heads, dh).transpose(0, 1)
    v = mab.v(kv_in).view(-1, heads, dh).transpose(0, 1)
    attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh), dim=-1) @ v  # [heads, nq, dh]
    return mab.tail(query_in, mab.o(attn.transpose(0, 1).reshape(query_in.shape[0], -1)))


def test_packed_isab_and_pair_attention_equal_the_per_set_reference():
    from seqsetvae.attention import ISAB, MAB

    torch.manual_seed(0)
    isab, mab = ISAB(16, 2, 4).double(), MAB(16, 2).double()
    sizes = torch.tensor([1, 3, 7, 2])
    x = torch.randn(int(sizes.sum()), 16, dtype=torch.float64)
    kv = torch.randn(int(sizes.sum()), 16, dtype=torch.float64)
    starts = torch.cumsum(sizes, 0) - sizes
    set_of = torch.repeat_interleave(torch.arange(4), sizes)
    got = isab(x, sizes)
    # pairs: every (query, key) of one set, sorted by query
    pair_key = torch.cat([starts[s] + torch.arange(sizes[s]) for s in set_of.tolist()])
    got_pairs = mab.rows_to_rows(x, kv, pair_key, sizes[set_of])
    for s in range(4):
        rows = slice(int(starts[s]), int(starts[s] + sizes[s]))
        induced = reference_mab(isab.induce, isab.inducing, x[rows])
        torch.testing.assert_close(got[rows], reference_mab(isab.spread, x[rows], induced), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got_pairs[rows], reference_mab(mab, x[rows], kv[rows]), rtol=1e-10, atol=1e-10)


# -- losses against loop references ------------------------------------------------------


def chamfer_reference(recon: torch.Tensor, target: torch.Tensor, eps=1e-8) -> torch.Tensor:
    """The original's recon_loss for one set [n, r] (three Chamfer terms, 1/1/3)."""
    rn, tn = recon.norm(dim=-1, keepdim=True), target.norm(dim=-1, keepdim=True)
    dissim = 1 - (recon / (rn + eps)) @ (target / (tn + eps)).T
    mag = (rn - tn.T).abs()
    sq = ((recon[:, None, :] - target[None, :, :]) ** 2).sum(-1)
    total = 0.0
    for weight, d in ((1.0, dissim), (1.0, mag), (3.0, sq)):
        total = total + weight * (d.min(dim=1).values.mean() + d.min(dim=0).values.mean()) / 2
    return total


def test_chamfer_and_kl_match_loop_references():
    patients = random_patients(3, mean_sets=5, mean_events=20, vocab_size=VOCAB, seed=8)
    batch = collate(patients)
    gen = torch.Generator().manual_seed(0)
    recon = torch.randn(batch.n_events, 6, generator=gen, dtype=torch.float64)
    target = torch.randn(batch.n_events, 6, generator=gen, dtype=torch.float64)
    got = chamfer_per_set(recon, target, batch)
    offsets = patients.set_offsets
    expected = torch.stack(
        [
            chamfer_reference(recon[offsets[s] : offsets[s + 1]], target[offsets[s] : offsets[s + 1]])
            for s in range(batch.n_sets)
        ]
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert batch.set_sizes.max() > 2

    mu = torch.randn(4, 8, generator=gen, dtype=torch.float64) * 0.3
    logvar = torch.randn(4, 8, generator=gen, dtype=torch.float64) * 0.2
    mu[0], logvar[0] = 0.0, 0.0  # KL 0 -> free bits floor
    got = kl_per_set(mu, logvar, free_bits=0.1)
    for s in range(4):
        kl = sum(0.5 * (math.exp(lv) + m * m - 1 - lv) for m, lv in zip(mu[s].tolist(), logvar[s].tolist()))
        assert got[s].item() == pytest.approx(max(kl, 0.1 * 8), rel=1e-12)
    assert got[0].item() == pytest.approx(0.8)


def test_total_loss_weighs_the_terms():
    model = small_model()
    batch = collate(random_patients(3, mean_sets=5, mean_events=15, vocab_size=VOCAB, seed=9))
    with torch.no_grad():
        out = model(batch, W)
    assert out.weights == W
    ce = F.cross_entropy(out.logits, batch.labels, label_smoothing=0.1)
    torch.testing.assert_close(out.ce, ce)
    torch.testing.assert_close(out.loss, W.pred * ce + W.recon * out.recon + W.beta * out.kl)
    torch.testing.assert_close(out.kl, out.kl_per_set.mean())
    assert out.mu.shape == out.h.shape == (batch.n_sets, SMALL.latent_dim)
    assert out.logits.shape == (3, 2)


def test_value_and_variable_token_names_the_variable_of_a_value_at_the_mean():
    """model.token value (docs/model.md): a z = 0 value is the zero token, whatever the
    variable; value_and_variable: the variable's own direction, distinct per variable."""
    patients = random_patients(2, mean_sets=4, mean_events=12, vocab_size=VOCAB, seed=3)
    patients.values[:] = 0.0
    batch = collate(patients)
    assert torch.count_nonzero(small_model().tokens(batch)) == 0
    model = small_model(config=dataclasses.replace(SMALL, token="value_and_variable"))
    tokens = model.tokens(batch)
    torch.testing.assert_close(tokens.norm(dim=-1), torch.ones(len(tokens), dtype=tokens.dtype))
    variables = batch.batch_variables[batch.event_variable]
    first = {int(v): tokens[i] for i, v in reversed(list(enumerate(variables)))}
    assert len(first) > 3 and all(torch.equal(tokens[i], first[int(v)]) for i, v in enumerate(variables))
    assert min(torch.dist(a, b) for i, a in enumerate(first.values()) for b in list(first.values())[i + 1 :]) > 1e-3
    groups = {g["name"]: {id(p) for p in g["params"]} for g in model.parameter_groups(1e-3)}
    assert id(model.presence.weight) in groups["setvae_encoder"]


# -- API --------------------------------------------------------------------------------------


def test_embedding_is_a_frozen_buffer_and_groups_split_the_set_encoder():
    model = small_model()
    assert "embedding" not in model.state_dict()
    assert all(p is not model.embedding for p in model.parameters())
    groups = model.parameter_groups(lr=1e-3, setvae_lr_factor=0.1, weight_decay=0.01)
    by_name = {g["name"]: g for g in groups}
    assert by_name["setvae_encoder"]["lr"] == pytest.approx(1e-4) and by_name["rest"]["lr"] == 1e-3
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    encoder_ids = {id(p) for p in by_name["setvae_encoder"]["params"]}
    assert id(model.reduce.weight) in encoder_ids and id(model.encoder.levels[0].inducing) in encoder_ids
    assert id(model.decoder.out.weight) not in encoder_ids


def test_config_from_settings_fills_defaults_and_checks_heads():
    config = ModelConfig.from_settings({"latent_dim": 64})
    assert (config.latent_dim, config.reduced_dim, config.inducing_points, config.time_encoding) == (
        64,
        256,
        16,
        "log1p_minutes",
    )
    with pytest.raises(InputError, match="model.heads"):
        ModelConfig.from_settings({"latent_dim": 30, "heads": 4})
    with pytest.raises(InputError, match="model.time_encoding"):
        ModelConfig.from_settings({"time_encoding": "minutes"})


def test_encoder_and_decoder_process_exactly_the_real_events():
    model = small_model()
    batch = collate(random_patients(8, vocab_size=VOCAB, seed=10))
    rows = {}
    model.encoder.embed.register_forward_hook(lambda m, a, o: rows.__setitem__("encoder", a[0].shape[0]))
    model.decoder.out.register_forward_hook(lambda m, a, o: rows.__setitem__("decoder", a[0].shape[0]))
    with torch.no_grad():
        model(batch, W)
    assert rows == {"encoder": batch.n_events, "decoder": batch.n_events}
    assert batch.n_events / rows["encoder"] >= 0.85


def test_bf16_autocast_forward_and_backward_are_finite():
    torch.manual_seed(0)
    model = SeqSetVAE(SMALL, torch.randn(VOCAB, EMB_DIM)).train()
    batch = collate(random_patients(2, mean_sets=10, mean_events=30, vocab_size=VOCAB, seed=11))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch, W)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# -- learning -----------------------------------------------------------------------------------


def test_overfits_a_tiny_separable_dataset():
    patients = random_patients(8, mean_sets=4, mean_events=10, vocab_size=VOCAB, seed=12)
    patients.labels = np.array([0, 1] * 4)
    patients.values = patients.values + np.where(patients.labels == 1, 1.5, -1.5)[
        np.repeat(np.arange(8), patients.events_per_patient())
    ].astype(np.float32)
    batch = collate(patients)
    torch.manual_seed(0)
    model = SeqSetVAE(SMALL, torch.randn(VOCAB, EMB_DIM)).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(lr=3e-3, setvae_lr_factor=1.0))
    first = None
    for step in range(150):
        out = model(batch, W)  # schedules fully warmed up
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        first = out.ce.item() if first is None else first
    model.eval()
    with torch.no_grad():
        out = model(batch, W)
    assert first > 0.6 and out.ce.item() < 0.3  # label smoothing 0.1 floors the CE near 0.2
    assert torch.equal(out.logits.argmax(-1), batch.labels)


# -- the centred readout (model.readout: centered) --------------------------------------------------

CENTERED = ModelConfig(**{**SMALL.__dict__, "dropout": 0.0, "readout": "centered"})


def mlp_inputs(model, batch):
    """The classifier MLP's input rows of one forward (features minus the mean used)."""
    seen = []
    handle = model.classifier.mlp.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        model(batch, W)
    finally:
        handle.remove()
    return seen[0]


def test_centered_readout_keeps_a_running_mean_of_training_patients_only():
    model = small_model(config=CENTERED).train()
    readout = model.classifier
    first, second = (
        collate(mixed_patients()),
        collate(random_patients(3, mean_sets=5, mean_events=20, vocab_size=VOCAB, seed=7)),
    )
    centred = mlp_inputs(model, first)  # the first batch is centred by its own mean
    torch.testing.assert_close(centred.mean(0), torch.zeros_like(centred[0]), atol=1e-12, rtol=0)
    m1 = readout.feature_mean.clone()
    assert readout.patients_seen.item() == first.n_patients and m1.abs().sum() > 0
    features = mlp_inputs(model, second) + m1  # later batches: the mean before their update
    rate = max(3 / (first.n_patients + 3), 1 - math.exp(-3 / readout.CENTERING_PATIENTS))
    torch.testing.assert_close(readout.feature_mean, m1 + rate * (features.mean(0) - m1), rtol=1e-12, atol=1e-12)
    assert readout.patients_seen.item() == first.n_patients + 3
    # evaluation leaves it (the trainer puts it back after a gradient-noise measurement:
    # tests/test_train.py, test_noise_scale_measurement_leaves_training_unchanged)
    moved = readout.feature_mean.clone()
    model.eval()
    with torch.no_grad():
        model(first, W)
    assert torch.equal(readout.feature_mean, moved) and readout.patients_seen.item() == first.n_patients + 3
    # padding patients (bucketed batches) do not count
    padded_model, plain_model = small_model(config=CENTERED).train(), small_model(config=CENTERED).train()
    padded_model(collate(mixed_patients(), pad=True), W)
    plain_model(collate(mixed_patients()), W)
    torch.testing.assert_close(
        padded_model.classifier.feature_mean, plain_model.classifier.feature_mean, rtol=1e-12, atol=1e-12
    )
    assert padded_model.classifier.patients_seen.item() == first.n_patients


def test_centered_readout_saves_its_mean_and_keeps_patients_independent():
    model = small_model(config=CENTERED).train()
    model(collate(mixed_patients()), W)  # moves the running mean away from zero
    model.eval()
    state = model.state_dict()
    assert "classifier.feature_mean" in state and "classifier.patients_seen" in state
    restored = small_model(config=CENTERED)  # same weights and embedding; a zero mean until loaded
    assert restored.classifier.feature_mean.abs().sum() == 0
    restored.load_state_dict(state)
    patients = mixed_patients()
    with torch.no_grad():
        together = model(collate(patients), W).logits
        again = restored(collate(patients), W).logits
        alone = torch.cat([model(collate(patients.take([i])), W).logits for i in range(patients.n_patients)])
    torch.testing.assert_close(again, together, rtol=0, atol=0)
    torch.testing.assert_close(alone, together, rtol=1e-10, atol=1e-10)
    # the mean is what the MLP reads against: another mean, other logits
    restored.classifier.feature_mean.add_(1.0)
    with torch.no_grad():
        assert not torch.allclose(restored(collate(patients), W).logits, together)


def test_linear_head_is_one_linear_map_of_the_centred_features():
    config = ModelConfig(**{**CENTERED.__dict__, "head": "linear"})
    model = small_model(config=config).train()
    head = model.classifier.mlp
    assert [type(m) for m in head] == [torch.nn.Dropout, torch.nn.Linear]
    assert head[1].in_features == 3 * config.latent_dim and head[1].out_features == config.num_classes
    batch = collate(mixed_patients())
    rows = mlp_inputs(model, batch)  # the centred features of the first batch
    model.eval()
    with torch.no_grad():
        logits = model(batch, W).logits
        expected = rows @ head[1].weight.T + head[1].bias
    # evaluation centres by the saved mean (the first batch's own): the same rows
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    # an MLP head's weights do not load into it
    with pytest.raises(RuntimeError, match="classifier.mlp"):
        model.load_state_dict(small_model(config=CENTERED).state_dict())


def test_head_only_labels_train_the_classifier_alone_and_leave_evaluation_unchanged():
    """`model.label_gradient: head`: the prediction loss reaches the classifier's weights
    only; reconstruction and KL still train the network; evaluation outputs are the same
    function of the weights as end to end."""
    config = dataclasses.replace(SMALL, readout="centered", head="linear", wide="summaries")
    batch = collate(random_patients(6, mean_sets=5, mean_events=20, vocab_size=VOCAB, seed=4))
    network = ("reduce", "encoder", "sequence")
    for gradient, label_only in (("head", True), ("network", False)):
        net = small_model(config=dataclasses.replace(config, label_gradient=gradient)).train()
        with torch.no_grad():  # the zero-initialised maps would pass no gradient back
            for linear in (net.classifier.mlp[-1], net.classifier.wide[1], net.decoder.out):
                linear.weight.normal_()
        net(batch, LossWeights(beta=0.0, recon=0.0, pred=1.0)).loss.backward()
        reached = {
            name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(net, name).parameters())
            for name in (*network, "classifier")
        }
        assert reached == {
            "reduce": not label_only,
            "encoder": not label_only,
            "sequence": not label_only,
            "classifier": True,
        }
        net.zero_grad()
        net(batch, LossWeights(beta=0.05, recon=0.5, pred=0.0)).loss.backward()
        assert all(any(p.grad.abs().sum() > 0 for p in getattr(net, name).parameters()) for name in network)
    head, end_to_end = (small_model(config=dataclasses.replace(config, label_gradient=g)) for g in ("head", "network"))
    with torch.no_grad():
        torch.testing.assert_close(head(batch, W).logits, end_to_end(batch, W).logits, rtol=0, atol=0)
