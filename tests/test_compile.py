"""The compiled training step (`train.compile`): the same numbers as the eager step, on
every batch shape, padded or not, from one graph (no recompilation)."""

import torch

from seqsetvae.batching import collate, random_patients
from seqsetvae.model import LossWeights, ModelConfig, SeqSetVAE
from seqsetvae.runtime.device import compiled_graphs, compiled_step

# one level and one transformer layer: the same kinds of ops as the default model in
# half the graph, so that inductor's C++ compilation takes a few minutes, not ten
# config.yaml's token, readout and wide path, its paths averaged (each with a loss of its
# own; a penalty on the wide map, which config.yaml freezes): the running means are
# buffers the compiled step must update in place
CONFIG = ModelConfig(
    reduced_dim=16,
    latent_dim=32,
    levels=1,
    inducing_points=4,
    heads=2,
    transformer_layers=1,
    transformer_heads=2,
    ff_dim=32,
    dropout=0.0,
    token="value_and_variable",
    readout="centered",
    head="linear",
    wide="summaries",
    wide_combine="stacked",
    wide_l2=3.0,
)


def test_compile_setting_resolves_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compiled_step("auto", cpu) is None and compiled_step(False, cuda) is None
    assert compiled_step("auto", cuda) == "reduce-overhead" and compiled_step(True, cuda) == "reduce-overhead"
    assert compiled_step(True, cpu) == "default"


def test_compiled_step_equals_eager_on_every_shape_from_one_graph():
    """Inductor on the CPU (the backend CUDA uses too, without CUDA graphs): loss,
    outputs and every gradient within float32 rounding of the eager step, for batches of
    several shapes, bucket-padded or not, under changing loss weights; one graph in all."""
    torch.manual_seed(0)
    embedding = torch.randn(40, 24)
    eager = SeqSetVAE(CONFIG, embedding).train()
    # away from the zero start of the output layer, where the cosine term's gradient is
    # 1/eps and amplifies any rounding difference a million-fold
    torch.nn.init.normal_(eager.decoder.out.weight, std=0.05)
    compiled = SeqSetVAE(CONFIG, embedding).train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_step("default")
    graphs = compiled_graphs()
    shapes = [(4, 12, 40, False), (3, 20, 50, True), (5, 8, 40, False), (2, 30, 90, True)]
    for i, (patients, sets, events, pad) in enumerate(shapes):
        batch = collate(random_patients(patients, mean_sets=sets, mean_events=events, seed=i), pad=pad)
        noise = torch.randn(batch.n_sets, CONFIG.latent_dim, generator=torch.Generator().manual_seed(i))
        weights = LossWeights(beta=0.01 * (i + 1), recon=1.0 - 0.1 * i, pred=0.5 + 0.1 * i)
        outputs = []
        for model in (eager, compiled):
            model.zero_grad()
            out = model(batch, weights, noise)
            out.loss.backward()
            outputs.append(out)
        a, b = outputs
        for name in ("loss", "recon", "kl", "ce", "logits", "mu", "h", "recon_per_set", "ce_per_patient"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-4, atol=1e-5, msg=f"{i} {name}")
        for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
            if p.grad is None:
                assert q.grad is None, name
                continue
            scale = float(p.grad.abs().max())
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4 * max(scale, 1e-3), msg=f"{i} {name}")
        torch.testing.assert_close(
            compiled.classifier.feature_mean, eager.classifier.feature_mean, rtol=1e-4, atol=1e-5
        )
        assert compiled.classifier.patients_seen.item() == eager.classifier.patients_seen.item()
    assert compiled_graphs() - graphs == 1  # every shape and weight from the first graph


def test_compiled_step_stays_on_its_graph_with_padded_training_batches(monkeypatch):
    """The step as training on CUDA calls it (bucket-padded batches, the sample drawn
    inside, dropout on), with the quick aot_eager backend: finite, real rows only in the
    outputs, and one graph across shapes."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend="aot_eager", dynamic=True))
    torch.manual_seed(0)
    model = SeqSetVAE(ModelConfig(**{**CONFIG.__dict__, "dropout": 0.1}), torch.randn(40, 24)).train()
    model.compile_step("default")
    graphs = compiled_graphs()
    for i in range(3):
        batch = collate(random_patients(3 + i, mean_sets=10 + 5 * i, mean_events=40, seed=i), pad=True)
        out = model(batch, LossWeights(beta=0.1, recon=0.5, pred=1.0))
        out.loss.backward()
        assert torch.isfinite(out.loss) and out.logits.shape == (3 + i, 2) and out.mu.shape[0] == batch.n_sets
    assert compiled_graphs() - graphs == 1
