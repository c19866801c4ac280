"""Overrides: types kept, unknown keys named with the valid ones, factory options reachable."""

import pytest

from jaxarch import experiments
from jaxarch.config import apply_overrides
from jaxarch.train.configure import override_config


def test_every_experiment_config_loads_and_names_itself():
    for name in experiments.names():
        config = experiments.get_config(name)
        assert config.name == name
        for section in ("data", "model", "optim", "train"):
            assert section in config


def test_every_experiment_documents_command_time_and_metric():
    import importlib

    for name in experiments.names():
        doc = importlib.import_module(f"jaxarch.experiments.{name.replace('-', '_')}").__doc__
        assert f"jaxarch run {name}" in doc and "Wall time" in doc and "Expected" in doc, name


def test_overrides_parse_to_the_existing_types():
    config = experiments.get_config("mnist1d-cnn")
    out = override_config(config, ["train.steps=7", "optim.learning_rate=0.5", "model.features=(3,5)",
                                   "data.shuffle_seq=true", "optim.schedule=linear"])
    assert out.train.steps == 7 and isinstance(out.train.steps, int)
    assert out.optim.learning_rate == 0.5
    assert out.model.features == (3, 5)
    assert out.data.shuffle_seq is True
    assert out.optim.schedule == "linear"
    assert config.train.steps != 7  # The original is untouched.


def test_factory_options_not_in_the_config_can_be_set():
    config = experiments.get_config("mnist1d-mlp")
    out = override_config(config, ["model.activation=gelu", "data.seed=3"])
    assert out.model.activation == "gelu" and out.data.seed == 3


def test_choosing_another_model_checks_options_against_it():
    config = experiments.get_config("mnist1d-mlp")
    out = override_config(config, ["model.hidden_sizes=(8,)", "model.name=cnn", "model.kernel_size=(3,)"])
    assert out.model.name == "cnn" and out.model.kernel_size == (3,)


def test_unknown_key_lists_the_valid_ones():
    config = experiments.get_config("mnist1d-cnn")
    with pytest.raises(ValueError, match=r"unknown key 'train.step'.*did you mean train.steps.*valid keys"):
        override_config(config, ["train.step=3"])
    with pytest.raises(ValueError, match="unknown key 'model.kernel'"):
        override_config(config, ["model.kernel=3"])


def test_wrong_type_and_malformed_overrides_are_value_errors():
    config = experiments.get_config("mnist1d-cnn")
    with pytest.raises(ValueError, match="train.steps.*'many'.*int"):
        apply_overrides(config, ["train.steps=many"])
    with pytest.raises(ValueError, match="not of the form key=value"):
        apply_overrides(config, ["train.steps"])
    with pytest.raises(ValueError, match="data.shuffle_seq.*bool"):
        override_config(config, ["data.shuffle_seq=maybe"])


def test_unknown_experiment_suggests_the_nearest():
    with pytest.raises(ValueError, match="unknown experiment 'mnist1d-cn'.*mnist1d-cnn"):
        experiments.get_config("mnist1d-cn")
