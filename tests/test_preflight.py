"""Bad input gets a clear error before anything compiles: unknown keys with the nearest names, wrong types,
impossible combinations, missing files and unwritable work directories."""

import os

import jax
import ml_collections
import pytest

from jaxarch import experiments
from jaxarch.cli import main
from jaxarch.train import train_and_evaluate, validate_config
from jaxarch.train.configure import override_config

_compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kwargs: _compiles.append(event)
    if event == "/jax/core/compile/backend_compile_duration" else None)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def edited(name, section, key, value):
    """The experiment's config with one value set, bypassing the override parser's type checks (as a config
    written in Python can)."""
    raw = experiments.get_config(name).to_dict()
    raw[section][key] = value
    return ml_collections.ConfigDict(raw)


@pytest.mark.parametrize("section,key,value,message", [
    ("train", "stepz", 3, r"unknown key 'train.stepz' \(did you mean train.steps\b.*; valid keys are: train.steps"),
    ("optim", "lr", 0.1, r"unknown key 'optim.lr'.*optim.learning_rate"),
    ("train", "steps", "100", r"train.steps is '100', expected a positive integer"),
    ("train", "steps", True, r"train.steps is True, expected a positive integer"),
    ("train", "nonfinite", "ignore", r"train.nonfinite is 'ignore', expected one of \['skip', 'stop'\]"),
    ("optim", "b2", 1.5, r"optim.b2 is 1.5, expected a number in \[0, 1\)"),
    ("train", "debug_nans", 1, r"train.debug_nans is 1, expected true or false"),
])
def test_config_keys_types_and_ranges_are_checked(section, key, value, message):
    with pytest.raises(ValueError, match=message):
        validate_config(edited("mnist1d-mlp", section, key, value))


def test_unknown_top_level_key_names_the_nearest():
    config = experiments.get_config("mnist1d-mlp")
    config.sedd = 3
    with pytest.raises(ValueError, match=r"unknown key 'sedd' \(did you mean seed\?\)"):
        validate_config(config)


@pytest.mark.parametrize("name,overrides,message", [
    # Heads that do not divide the model width.
    ("mnist1d-transformer", ["model.num_heads=5"],
     r"model 'vit' cannot take dataset 'mnist1d'.*multiple of num_heads=5.*model.num_heads=5"),
    # A patch (a VALID convolution's kernel) larger than the 8x8 digits.
    ("digits-vit", ["model.patch_size=16"], r"ViT: inputs spatial shape.*patch_size.*model.patch_size=16"),
    # More pooling stages than the 40-sample signal allows.
    ("mnist1d-cnn", ["model.features=(4,4,4,4,4,4)"], r"CNN: spatial size.*model.features=\(4, 4, 4, 4, 4, 4\)"),
    # Sequence lengths below the task's minimum, or beyond the model's position table.
    ("adding-gru", ["data.seq_len=1"], r"config: dataset 'adding': seq_len is 1, expected at least 2.*"
                                       r"data.seq_len=1"),
    ("copy-transformer", ["data.seq_len=1010"], r"GPT: inputs time length is 1030.*model.max_length=1020"),
    ("mnist1d-cnn", ["model.pool=mean"], r"CNN: pool is 'mean', expected one of .*model.pool='mean'"),
])
def test_impossible_combinations_are_rejected_before_anything_compiles(name, overrides, message, tmp_path):
    config = override_config(experiments.get_config(name), overrides)
    compiled_before = len(_compiles)
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, tmp_path, progress=False)
    assert len(_compiles) == compiled_before


def test_missing_or_directory_text_file_is_reported_as_such(tmp_path, capsys):
    for path in (tmp_path / "no-such.txt", tmp_path):
        assert main(["run", "charlm-lstm", f"data.text_file={path}", "--workdir", str(tmp_path / "run")]) == 2
        assert f"text_file '{path}' does not exist or is not a file" in capsys.readouterr().err


def test_a_workdir_that_cannot_be_written_is_reported_as_such(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for workdir in (blocker, blocker / "run"):
        assert main(["run", "mnist1d-logreg", "train.steps=2", "--workdir", str(workdir)]) == 2
        assert f"workdir: '{workdir}' is not a writable directory" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_workdir_is_reported_as_such(tmp_path, capsys):
    tmp_path.chmod(0o500)
    try:
        assert main(["run", "mnist1d-logreg", "train.steps=2", "--workdir", str(tmp_path)]) == 2
    finally:
        tmp_path.chmod(0o700)
    assert "is not a writable directory (Permission denied)" in capsys.readouterr().err
