from pathlib import Path

import pytest

from ae_train.config import ConfigError, field_docs, load_config


def test_config_defaults_have_the_required_keys():
    cfg = load_config(None, [])
    assert cfg.data.sample_key == "x.npy" and cfg.log.train_every == 500 and cfg.log.val_every == 20
    keys = {k for k, _, _ in field_docs()}
    for key in ("output_dir", "debug", "seed", "resume", "data.train_shards", "data.val_shards", "data.sample_key",
                "data.batch_size", "data.num_workers", "model.input_dim", "model.latent_dim", "trainer.max_epochs",
                "trainer.devices", "trainer.accelerator", "trainer.num_nodes", "log.train_every", "log.val_every"):
        assert key in keys
    assert all(doc for _, doc, _ in field_docs()), "every field has a docstring"


def test_config_cli_beats_file_beats_defaults(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\ndata:\n  batch_size: 32\n  num_workers: 1\nmodel:\n  hidden_dims: [8, 4]\ntrainer:\n  devices: 2\n")
    cfg = load_config(str(f), ["--data.batch_size=16", "--debug=true", "--model.hidden_dims=64,32,16"])
    assert (cfg.seed, cfg.data.batch_size, cfg.data.num_workers, cfg.debug) == (3, 16, 1, True)
    assert cfg.model.hidden_dims == [64, 32, 16] and cfg.trainer.devices == "2"


@pytest.mark.parametrize("flag,message", [
    ("--data.batchsize=3", "unknown config key 'data.batchsize' (flag --data.batchsize)"),
    ("--data.batch_size=big", "data.batch_size: expected an integer, got 'big' (flag --data.batch_size)"),
    ("--debug=maybe", "debug: expected true or false, got 'maybe' (flag --debug)"),
    ("--model.lr=fast", "model.lr: expected a number"),
    ("--data=1", "'data' is a section"),
    ("--trainer.devices=0", "trainer.devices must be a positive integer or auto"),
    ("seed=1", "overrides are --key=value"),
])
def test_config_bad_flags_name_the_key(flag, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [flag])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_config_bad_file_names_key_and_file(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  batch_size: 1.5\n")
    with pytest.raises(ConfigError, match=rf"data.batch_size: expected an integer, got 1.5 \(file {f}\)"):
        load_config(str(f), [])
    f.write_text("model:\n  colour: red\n")
    with pytest.raises(ConfigError, match=rf"unknown config key 'model.colour' \(file {f}\)"):
        load_config(str(f), [])
    f.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(str(f), [])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"), [])
