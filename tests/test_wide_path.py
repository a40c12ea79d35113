"""The wide path (`model.wide: summaries`): the logistic regression's features, computed in
the model from a packed batch, standardised by running moments over training patients."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqsetvae.batching import collate, random_patients
from seqsetvae.evaluation.baseline import patient_features
from seqsetvae.model import LossWeights, ModelConfig, SeqSetVAE
from seqsetvae.summaries import patient_summaries, summary_width

VOCAB, EMB_DIM = 30, 24
SMALL = ModelConfig(
    reduced_dim=16, latent_dim=32, inducing_points=4, ff_dim=64, dropout=0.0, readout="centered", head="linear"
)
WIDE = dataclasses.replace(SMALL, wide="summaries")
W = LossWeights(beta=0.05, recon=0.5, pred=1.0)


def patients(n=7, seed=3):
    return random_patients(n, mean_sets=6, mean_events=25, vocab_size=VOCAB, seed=seed)


def model(config, seed=0):
    torch.manual_seed(seed)
    return SeqSetVAE(config, torch.randn(VOCAB, EMB_DIM)).double()


@pytest.mark.parametrize("pad", [False, True])
def test_summaries_are_the_baselines_features(pad):
    group = patients()
    expected = np.nan_to_num(patient_features(group, VOCAB), nan=0.0)  # the regression imputes 0
    got = patient_summaries(collate(group, pad=pad), VOCAB).double().numpy()
    assert got.shape == (group.n_patients + pad, summary_width(VOCAB))
    np.testing.assert_allclose(got[: group.n_patients], expected, rtol=1e-6, atol=1e-6)
    # a patient's row reads its own events only
    alone = np.concatenate(
        [patient_summaries(collate(group.take([i])), VOCAB).numpy() for i in range(group.n_patients)]
    )
    np.testing.assert_array_equal(got[: group.n_patients], alone)


def test_the_wide_path_starts_at_zero_and_learns():
    batch = collate(patients())
    plain, wide = model(SMALL).eval(), model(WIDE).eval()
    with torch.no_grad():  # the same parameters elsewhere, and the wide map is zero at the start
        torch.testing.assert_close(wide(batch, W).logits, plain(batch, W).logits, rtol=0, atol=0)
    wide.train()
    wide(batch, W).loss.backward()
    assert wide.classifier.wide[1].weight.grad.abs().sum() > 0


def test_the_wide_l2_penalty_is_the_regressions_penalty_on_the_weights_only():
    batch = collate(patients())
    weights = LossWeights(beta=0.05, recon=0.5, pred=0.7)
    nets = {}
    for l2 in (0.0, 3.0):
        net = model(dataclasses.replace(WIDE, wide_l2=l2)).eval()  # eval: no dropout, moments fixed
        with torch.no_grad():
            net.classifier.summary_moments[net.classifier.summary_moments.shape[0] // 2 :] = 1.0
            net.classifier.wide[1].weight.copy_(
                torch.linspace(-1.0, 1.0, net.classifier.wide[1].weight.numel()).view_as(net.classifier.wide[1].weight)
            )
            net.classifier.wide[1].bias.fill_(0.25)
        out = net(batch, weights)
        out.loss.backward()
        nets[l2] = (net, out)
    (plain, plain_out), (penalised, penalised_out) = nets[0.0], nets[3.0]
    weight = penalised.classifier.wide[1].weight.detach()
    torch.testing.assert_close(penalised_out.ce, plain_out.ce, rtol=0, atol=0)  # the reported CE is the CE
    torch.testing.assert_close(penalised_out.loss, plain_out.loss + 0.7 * 1.5 * weight.square().sum())
    torch.testing.assert_close(
        penalised.classifier.wide[1].weight.grad, plain.classifier.wide[1].weight.grad + 0.7 * 3.0 * weight
    )
    torch.testing.assert_close(penalised.classifier.wide[1].bias.grad, plain.classifier.wide[1].bias.grad)
    deep = [name for name, _ in penalised.named_parameters() if not name.startswith("classifier.wide")]
    grads = dict(plain.named_parameters())
    for name, parameter in penalised.named_parameters():
        if name in deep and parameter.grad is not None:
            torch.testing.assert_close(parameter.grad, grads[name].grad)


def test_the_wide_path_reads_standardised_summaries_of_training_patients():
    net = model(WIDE).train()
    seen = []
    net.classifier.wide.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    group = patients(9)
    net(collate(group, pad=True), W)  # the first batch: standardised by its own real patients
    x = seen[0][: group.n_patients]
    features = torch.from_numpy(np.nan_to_num(patient_features(group, VOCAB), nan=0.0))
    varying = features.std(0) > 1e-6
    torch.testing.assert_close(x.mean(0), torch.zeros_like(x[0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(x[:, varying].var(0, unbiased=False), torch.ones(int(varying.sum()), dtype=x.dtype))
    assert torch.equal(x[:, ~varying], torch.zeros_like(x[:, ~varying]))  # constant: centred, scale 1
    assert net.classifier.summary_patients_seen.item() == group.n_patients  # padding does not count
    mean, mean_square = net.classifier.summary_moments.chunk(2)
    torch.testing.assert_close(mean, features.mean(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mean_square, features.square().mean(0), atol=1e-5, rtol=1e-6)
    # evaluation reads the moments, does not move them
    moments = net.classifier.summary_moments.clone()
    net.eval()
    with torch.no_grad():
        net(collate(patients(4, seed=8)), W)
    assert torch.equal(net.classifier.summary_moments, moments)


def test_the_wide_path_saves_its_moments_and_keeps_patients_independent():
    net = model(WIDE).train()
    net(collate(patients()), W)
    with torch.no_grad():
        net.classifier.wide[1].weight.normal_()
    net.eval()
    state = net.state_dict()
    assert {"classifier.summary_moments", "classifier.summary_patients_seen", "classifier.wide.1.weight"} <= set(state)
    restored = model(WIDE)
    restored.load_state_dict(state)
    group = patients(5, seed=11)
    with torch.no_grad():
        together = net(collate(group), W).logits
        again = restored.eval()(collate(group), W).logits
        alone = torch.cat([net(collate(group.take([i])), W).logits for i in range(group.n_patients)])
    torch.testing.assert_close(again, together, rtol=0, atol=0)
    torch.testing.assert_close(alone, together, rtol=1e-9, atol=1e-9)
    with pytest.raises(RuntimeError, match="summary_moments"):  # a model without the path refuses them
        model(SMALL).load_state_dict(state)


@pytest.mark.parametrize("weights", [None, (1.0, 3.0)])
def test_the_wide_start_scores_as_the_baselines_regression(small_shards, weights):
    """`train.wide_start: regression`: before any step the model's scores are the baseline
    rule's logistic regression's (same C, chosen on valid), shifted by log of the class
    weights' ratio, whatever the deep path holds."""
    from seqsetvae.evaluation.baseline import fit_baseline, split_features
    from seqsetvae.runtime.dataset import ShardBatches
    from seqsetvae.runtime.device import load_embedding
    from seqsetvae.training.wide_start import apply_wide_start, fit_wide_start

    shards, grid = small_shards / "shards", [0.001, 0.1, 10.0]
    data = {s: split_features(shards, s) for s in ("train", "valid")}
    regression, chosen = fit_baseline("logistic_regression", data, {"lr_c_grid": grid, "lr_max_iter": 2000}, 0)
    start = fit_wide_start(shards, grid, max_iter=2000)
    assert start.c == chosen["C"] and start.val_auroc == chosen["val_auroc"]

    torch.manual_seed(0)
    net = SeqSetVAE(WIDE, load_embedding(small_shards / "embedding.safetensors"), weights).double()
    apply_wide_start(net, start, n_train=len(data["train"][1]), class_odds=weights)
    valid = ShardBatches(str(shards), "valid")
    with torch.no_grad():
        logits = net.eval()(valid(np.arange(len(valid))), W).logits
    got = (logits[:, 1] - logits[:, 0]).numpy()
    expected = regression.decision_function(data["valid"][0]) + (np.log(3.0) if weights else 0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_the_wide_start_needs_the_wide_path(small_shards):
    from seqsetvae.errors import InputError
    from seqsetvae.runtime.device import load_embedding
    from seqsetvae.training.wide_start import apply_wide_start, fit_wide_start

    start = fit_wide_start(small_shards / "shards", [0.1], max_iter=2000)
    net = SeqSetVAE(SMALL, load_embedding(small_shards / "embedding.safetensors"))
    with pytest.raises(InputError, match="model.wide: summaries"):
        apply_wide_start(net, start, n_train=40, class_odds=None)


def test_the_wide_map_has_its_own_rate_only_when_asked_and_zero_freezes_it():
    net = model(WIDE)
    assert [g["name"] for g in net.parameter_groups(lr=1e-3)] == ["setvae_encoder", "rest"]
    groups = {g["name"]: g for g in net.parameter_groups(lr=1e-3, wide_lr_factor=0.0)}
    assert {id(p) for p in groups["wide"]["params"]} == {id(p) for p in net.classifier.wide.parameters()}
    assert groups["wide"]["lr"] == 0.0 and not {id(p) for p in groups["wide"]["params"]} & {
        id(p) for p in groups["rest"]["params"]
    }
    optimizer = torch.optim.AdamW(list(groups.values()), lr=1e-3)
    before = net.classifier.wide[1].weight.detach().clone()
    head = net.classifier.mlp[-1].weight.detach().clone()
    batch = collate(patients())
    net.train()(batch, W).loss.backward()
    optimizer.step()
    assert torch.equal(net.classifier.wide[1].weight, before)  # frozen: neither a step nor decay
    assert not torch.equal(net.classifier.mlp[-1].weight, head)


def test_a_frozen_wide_path_adds_the_same_offset_in_training_as_in_evaluation():
    """`train.wide_lr_factor: 0` (`freeze_wide`): the wide path is a fixed offset. In
    training its inputs see no dropout and its moments do not move, so with the deep head
    at zero the training logits are the evaluation logits, on every call."""
    net = model(dataclasses.replace(WIDE, dropout=0.5))
    batch = collate(patients())
    net.train()(batch, W)  # moments from a first batch, then a map that is not zero
    with torch.no_grad():
        net.classifier.wide[1].weight.normal_()
        net.classifier.mlp[-1].weight.zero_()
        net.classifier.mlp[-1].bias.zero_()
    net.classifier.freeze_wide()
    moments = net.classifier.summary_moments.clone()
    other = collate(patients(5, seed=9))
    with torch.no_grad():
        expected = net.eval()(other, W).logits
        net.train()
        first, second = net(other, W).logits, net(other, W).logits
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    assert torch.equal(net.classifier.summary_moments, moments)
    net(other, W).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in net.classifier.wide.parameters())
    # before freezing, training moves the moments and drops inputs out
    unfrozen = model(dataclasses.replace(WIDE, dropout=0.5)).train()
    unfrozen(batch, W)
    with torch.no_grad():
        unfrozen.classifier.wide[1].weight.normal_()
        before = unfrozen.classifier.summary_moments.clone()
        assert not torch.equal(unfrozen(other, W).logits, unfrozen(other, W).logits)
    assert not torch.equal(unfrozen.classifier.summary_moments, before)


def test_freezing_needs_the_wide_path():
    from seqsetvae.errors import InputError

    with pytest.raises(InputError, match="train.wide_lr_factor: 0 .* needs model.wide: summaries"):
        model(SMALL).classifier.freeze_wide()


def test_averaged_paths_fit_the_labels_each_on_its_own_and_predict_their_mean():
    """`model.wide_combine: average`: the logits are the mean of the deep head's and the
    wide map's; each path's own cross-entropy is the prediction loss (the deep one alone
    when the wide path is frozen), so over a frozen map the network trains exactly as the
    same network without the wide path."""
    average = dataclasses.replace(WIDE, wide_combine="average")
    batch = collate(patients())
    deep_only, net = model(SMALL), model(average)
    net.train()(batch, W)  # the moments of a first batch
    with torch.no_grad():
        net.classifier.wide[1].weight.normal_()
        net.classifier.wide[1].bias.normal_()
    labels = batch.labels

    def cross_entropy(logits):
        return F.cross_entropy(logits, labels, label_smoothing=SMALL.label_smoothing)

    for frozen in (False, True):
        if frozen:
            net.classifier.freeze_wide()
        torch.manual_seed(5)
        out = net.train()(batch, W)
        torch.manual_seed(5)
        alone = deep_only.train()(batch, W)
        with torch.no_grad():
            wide = net.classifier.wide_logits(batch, torch.float64)
        torch.testing.assert_close(out.logits, (alone.logits + wide) / 2)
        expected = cross_entropy(alone.logits) + (0.0 if frozen else cross_entropy(wide))
        torch.testing.assert_close(out.ce, expected)
    torch.testing.assert_close(out.loss, alone.loss)  # frozen: the deep-only network's objective


def _two_class_paths(margins: np.ndarray) -> torch.Tensor:
    """[N, 2, 2] path logits whose margins (logit 1 - logit 0) are `margins` [N, 2]."""
    margins = torch.as_tensor(margins, dtype=torch.float64)
    return torch.stack([torch.zeros_like(margins), margins], dim=-1)


def test_the_stack_is_the_maximum_likelihood_weighting_of_the_paths():
    """`model.wide_combine: stacked`: fit_stack finds the logistic regression of the labels
    on the two paths' margins (unpenalised, unweighted), and the logits follow it."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    margins = rng.normal(size=(4000, 2)) * [2.0, 0.3]  # the deep path's logits four times wider
    labels = rng.random(4000) < 1 / (1 + np.exp(-(0.4 * margins[:, 0] + 3.0 * margins[:, 1] - 1.5)))
    net = model(dataclasses.replace(WIDE, wide_combine="stacked")).eval()
    assert net.classifier.stack_weights.tolist() == [0.5, 0.5]  # the mean until fitted
    assert net.classifier.fit_stack(_two_class_paths(margins), torch.from_numpy(labels))
    expected = LogisticRegression(C=1e8, tol=1e-10, max_iter=10_000).fit(margins, labels)
    bias = net.classifier.stack_bias
    np.testing.assert_allclose(net.classifier.stack_weights.numpy(), expected.coef_[0], rtol=2e-3)
    np.testing.assert_allclose(float(bias[1] - bias[0]), expected.intercept_[0], rtol=2e-3)
    logits = net.classifier.stack(_two_class_paths(margins))
    np.testing.assert_allclose((logits[:, 1] - logits[:, 0]).numpy(), expected.decision_function(margins), atol=2e-3)


def test_a_path_that_ranks_backwards_gets_weight_zero_and_one_class_fits_nothing():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    margins = rng.normal(size=(3000, 2))
    labels = rng.random(3000) < 1 / (1 + np.exp(-(1.2 * margins[:, 1] - 0.5 * margins[:, 0])))
    net = model(dataclasses.replace(WIDE, wide_combine="stacked")).eval()
    assert net.classifier.fit_stack(_two_class_paths(margins), torch.from_numpy(labels))
    alone = LogisticRegression(C=1e8, tol=1e-10, max_iter=10_000).fit(margins[:, 1:], labels)
    assert net.classifier.stack_weights[0] == 0.0
    np.testing.assert_allclose(float(net.classifier.stack_weights[1]), alone.coef_[0, 0], rtol=2e-3)
    before = [t.clone() for t in (net.classifier.stack_weights, net.classifier.stack_bias)]
    assert not net.classifier.fit_stack(_two_class_paths(margins), torch.zeros(3000, dtype=torch.long))
    assert all(torch.equal(a, b) for a, b in zip(before, (net.classifier.stack_weights, net.classifier.stack_bias)))


def test_stacked_paths_train_as_averaged_ones_and_predict_the_stack():
    """Stacking changes the prediction, not the training: each path's own cross-entropy is
    the loss, as under `average`, and the logits are the stack of the paths' logits."""
    batch = collate(patients())
    nets = {c: model(dataclasses.replace(WIDE, wide_combine=c)) for c in ("average", "stacked")}
    for net in nets.values():
        net.train()(batch, W)
        with torch.no_grad():
            torch.manual_seed(9)
            net.classifier.wide[1].weight.normal_()
            net.classifier.wide[1].bias.normal_()
    with torch.no_grad():
        nets["stacked"].classifier.stack_weights.copy_(torch.tensor([0.25, 2.0]))
        nets["stacked"].classifier.stack_bias.copy_(torch.tensor([0.0, -1.0]))
    torch.manual_seed(5)
    average = nets["average"].train()(batch, W)
    torch.manual_seed(5)
    stacked = nets["stacked"].train()(batch, W)
    torch.testing.assert_close(stacked.loss, average.loss)
    torch.testing.assert_close(stacked.ce, average.ce)
    deep, wide = stacked.paths[:, 0], stacked.paths[:, 1]
    torch.testing.assert_close((deep + wide) / 2, average.logits)
    torch.testing.assert_close(stacked.logits, 0.25 * deep + 2.0 * wide + torch.tensor([0.0, -1.0], dtype=deep.dtype))
    assert average.paths is None


def test_standardized_paths_count_equally_and_one_slope_calibrates_them():
    """`model.wide_combine: standardized`: each path divided by its spread over the
    patients (half the margin's standard deviation with two classes), the two averaged,
    then one slope and a bias fitted: the ranking is that of the mean of the standardised
    margins whatever the labels, and the slope and bias are the 1-D logistic regression's."""
    from scipy.stats import rankdata
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    margins = rng.normal(size=(4000, 2)) * [3.0, 0.2] + [1.0, -0.5]
    labels = rng.random(4000) < 1 / (1 + np.exp(-(0.1 * margins[:, 0] + 4.0 * margins[:, 1])))
    net = model(dataclasses.replace(WIDE, wide_combine="standardized")).eval()
    assert net.classifier.fit_stack(_two_class_paths(margins), torch.from_numpy(labels))
    weights = net.classifier.stack_weights.numpy()
    np.testing.assert_allclose(weights[0] / weights[1], margins[:, 1].std() / margins[:, 0].std(), rtol=1e-6)
    standardised = ((margins - margins.mean(0)) / margins.std(0)).mean(1)
    logits = net.classifier.stack(_two_class_paths(margins))
    margin = (logits[:, 1] - logits[:, 0]).numpy()
    np.testing.assert_array_equal(rankdata(margin), rankdata(standardised))
    summed = (margins / margins.std(0)).sum(1, keepdims=True)
    expected = LogisticRegression(C=1e8, tol=1e-10, max_iter=10_000).fit(summed, labels)
    np.testing.assert_allclose(margin, expected.decision_function(summed), atol=2e-3)
