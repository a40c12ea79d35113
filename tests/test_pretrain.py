"""`seqsetvae pretrain`: the set VAE alone on the train split's sets; strict loading into
`train`; with Snakemake, only the stages after a changed pretraining key rerun."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import test_train
import torch
import yaml
from safetensors.torch import load_file, save_file
from test_pipeline_data import planned_jobs
from test_pipeline_e2e import snakemake
from test_train import TINY_MODEL, TINY_TRAIN, _run

from seqsetvae.errors import DamagedFile, InputError
from seqsetvae.model import ModelConfig, SeqSetVAE
from seqsetvae.runtime.dataset import ShardBatches
from seqsetvae.training import pretrain, train

data = test_train.data  # the tiny shards fixture: 22 train and 10 valid patients
PRETRAIN = {"epochs": 3, "batch_size": 4, "lr": 0.003, "beta_warmup_epochs": 1.0}


def _pretrain(data, out: Path, model: dict | None = None, **overrides) -> int:
    shards, embedding = data
    settings = {
        "model": {**TINY_MODEL, **(model or {})},
        "pretrain": {**PRETRAIN, **overrides},
        "train": {"device": "cpu", "threads": 1},
    }
    argv = ["--settings", json.dumps(settings), "--shards", str(shards), "--embedding", str(embedding)]
    return pretrain.main([*argv, "--out", str(out)])


def _model(data, **model) -> SeqSetVAE:
    shards, embedding = data
    torch.manual_seed(0)
    return SeqSetVAE(ModelConfig.from_settings({**TINY_MODEL, **model}), load_file(str(embedding))["embedding"])


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    assert _pretrain(data, out) == 0
    return out


def test_pretraining_lowers_the_held_out_loss_and_writes_only_the_set_vae(data, pretrained):
    weights = load_file(str(pretrained / pretrain.WEIGHTS_FILE))
    model = _model(data)
    assert set(weights) == set(pretrain.set_vae_tensors(model))
    assert {k.split(".")[0] for k in weights} == {"reduce", "presence", "encoder", "decoder"}
    metrics = json.loads((pretrained / "metrics.json").read_text())
    assert metrics["train_patients"] == 22 and metrics["steps"] == 3 * 6 and metrics["skipped_batches"] == 0
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    assert metrics["epochs"][-1]["recon"] < metrics["epochs"][0]["recon"]
    # the validation split's Chamfer loss: below the same model's at random weights
    valid = ShardBatches(str(data[0]), "valid")
    chunks = [torch.arange(0, 4).numpy(), torch.arange(4, 8).numpy(), torch.arange(8, 10).numpy()]
    untrained = pretrain.mean_losses(model, valid, chunks, 0.1, torch.device("cpu"))
    pretrain.load_pretrained(model, pretrained / pretrain.WEIGHTS_FILE)
    loaded = pretrain.mean_losses(model, valid, chunks, 0.1, torch.device("cpu"))
    assert loaded["recon"] == pytest.approx(metrics["valid"]["recon"], rel=1e-5)
    assert loaded["recon"] < 0.9 * untrained["recon"]


def test_the_same_seed_gives_the_same_weights(data, pretrained, tmp_path):
    assert _pretrain(data, tmp_path / "again") == 0
    assert (tmp_path / "again" / pretrain.WEIGHTS_FILE).read_bytes() == (
        pretrained / pretrain.WEIGHTS_FILE
    ).read_bytes()
    assert _pretrain(data, tmp_path / "other", seed=1) == 0
    other = load_file(str(tmp_path / "other" / pretrain.WEIGHTS_FILE))
    first = load_file(str(pretrained / pretrain.WEIGHTS_FILE))
    assert not torch.equal(other["encoder.embed.0.weight"], first["encoder.embed.0.weight"])


def test_train_starts_from_the_pretrained_set_vae_and_nothing_else(data, pretrained, tmp_path):
    shards, embedding = data
    settings = {"model": TINY_MODEL, "train": TINY_TRAIN}
    argv = ["--settings", json.dumps(settings), "--shards", str(shards), "--embedding", str(embedding)]
    argv += ["--batch-size", "4", "--threads", "1"]
    from seqsetvae.settings import load_settings

    def trainer(out: Path, init: Path | None):
        args = train.build_parser().parse_args(
            [*argv, "--out", str(out), *(["--init-weights", str(init)] if init else [])]
        )
        torch.manual_seed(3)
        return train.Trainer(args, load_settings(json.dumps(settings)), torch.device("cpu"), 1, 3)

    weights = load_file(str(pretrained / pretrain.WEIGHTS_FILE))
    started = trainer(tmp_path / "a", pretrained / pretrain.WEIGHTS_FILE).model.state_dict()
    scratch = trainer(tmp_path / "b", None).model.state_dict()
    for key, value in started.items():
        expected = weights[key] if key in weights else scratch[key]
        assert torch.equal(value, expected), key
    # a whole run records where it started; its checkpoints are not those of a run from scratch
    out = tmp_path / "run"
    assert _run(data, out, extra=["--init-weights", str(pretrained / pretrain.WEIGHTS_FILE)], epochs=1) == 0
    assert json.loads((out / "metrics.json").read_text())["pretrained"] is True
    assert json.loads((out / "run_config.json").read_text())["init_weights"].endswith(pretrain.WEIGHTS_FILE)


def test_weights_of_another_model_are_refused_with_the_keys_that_differ(data, pretrained, tmp_path):
    path = pretrained / pretrain.WEIGHTS_FILE
    assert _pretrain(data, tmp_path / "wide", model={"latent_dim": 24}, epochs=0.2) == 0
    with pytest.raises(InputError, match=r"shape mismatches \(\d+\): decoder\..* \(24, 24\) in the file, \(16, 16\)"):
        pretrain.load_pretrained(_model(data), tmp_path / "wide" / pretrain.WEIGHTS_FILE)
    with pytest.raises(InputError, match=r"unexpected keys \(2\): presence.bias, presence.weight"):
        pretrain.load_pretrained(_model(data, token="value"), path)
    tensors = load_file(str(path))
    extra = tmp_path / "extra.safetensors"
    save_file({**tensors, "sequence.norm.weight": torch.ones(16)}, str(extra))
    with pytest.raises(InputError, match=r"unexpected keys \(1\): sequence.norm.weight"):
        pretrain.load_pretrained(_model(data), extra)
    missing = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in tensors.items() if not k.startswith("decoder.out")}, str(missing))
    with pytest.raises(InputError, match=rf"{missing}: .*missing keys \(2\): decoder.out.bias, decoder.out.weight"):
        pretrain.load_pretrained(_model(data), missing)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DamagedFile, match="damaged.safetensors"):
        pretrain.load_pretrained(_model(data), damaged)


def test_no_epochs_is_an_input_error(data, tmp_path):
    with pytest.raises(InputError, match="pretrain.epochs is 0"):
        _pretrain(data, tmp_path, epochs=0)


@pytest.mark.pipeline
def test_only_the_stages_after_a_changed_pretraining_key_rerun(tmp_path, tiny_pipeline_config):
    config = tiny_pipeline_config()
    config["train"]["batch_sizes"] = [2]
    config["pretrain"] = {"epochs": 1, "batch_size": 4}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path, "train_all")
    assert run.returncode == 0, run.stderr[-5000:]
    summary = json.loads((tmp_path / "results" / "runs" / "bs2" / "lr1" / "seed0" / "metrics.json").read_text())
    assert summary["pretrained"] is True
    assert json.loads((tmp_path / "results" / "pretrain" / "metrics.json").read_text())["steps"] > 0

    def planned(change) -> dict[str, int]:
        changed = copy.deepcopy(config)
        change(changed)
        (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
        dry = snakemake(tmp_path, "-n", "train_all", config="changed.yaml")
        assert dry.returncode == 0, dry.stderr[-3000:]
        return planned_jobs(dry.stdout + dry.stderr) if "Job stats" in dry.stdout + dry.stderr else {}

    assert planned(lambda c: None) == {}
    assert planned(lambda c: c["pretrain"].update(lr=0.002)) == {"pretrain": 1, "train": 1, "train_all": 1}
    assert planned(lambda c: c["model"].update(latent_dim=16)) == {"pretrain": 1, "train": 1, "train_all": 1}
    # keys of the sequence model or of training only: the pretrained set VAE stays
    assert planned(lambda c: c["model"].update(transformer_layers=2)) == {"train": 1, "train_all": 1}
    assert planned(lambda c: c["train"].update(lr=0.002)) == {"train": 1, "train_all": 1}
    # switched off: training reruns from random weights, nothing pretrains
    assert planned(lambda c: c["pretrain"].update(epochs=0)) == {"train": 1, "train_all": 1}
