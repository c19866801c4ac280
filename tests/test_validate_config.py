"""`validate_config` rejects what `train_and_evaluate` rejects, before anything is built: the dataset's and the
model's names and options included. A config straight from an experiment module is named after what it runs."""

import pytest

from jaxarch import experiments
from jaxarch.experiments import mnist1d_logreg
from jaxarch.train import train_and_evaluate, validate_config
from jaxarch.train.preflight import with_experiment_name


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.parametrize("name", experiments.names())
def test_every_experiment_config_is_valid(name):
    validate_config(experiments.get_config(name))


@pytest.mark.parametrize("section,key,value,message", [
    ("model", "featurs", (8,), r"config: unknown key 'model.featurs' \(did you mean model.features\b.*\) for model "
                               r"'cnn'; valid keys are: .*model.features"),
    ("data", "name", "mnist2d", r"config: data.name is 'mnist2d': dataset registry: unknown dataset 'mnist2d' "
                                r"\(did you mean 'mnist1d'"),
    ("model", "name", "lstm", r"config: model.name is 'lstm': model registry: unknown model 'lstm'"),
    ("data", "seq_lenn", 3, r"config: unknown key 'data.seq_lenn'.* for data 'mnist1d'; valid keys are: "),
    ("model", "num_outputs", 3, r"config: model.num_outputs is 3, expected it left out: the dataset sets"),
])
def test_dataset_and_model_names_and_options_are_checked(section, key, value, message, tmp_path):
    config = experiments.get_config("mnist1d-cnn")
    config[section][key] = value
    with pytest.raises(ValueError, match=message):
        validate_config(config)
    with pytest.raises(ValueError, match=message):  # what the run itself reports, from the same check
        train_and_evaluate(config, tmp_path, progress=False)
    assert not (tmp_path / "config.json").exists()


def test_a_config_straight_from_its_module_is_named_after_what_it_runs(tmp_path):
    config = mnist1d_logreg.get_config()
    assert config.name == ""
    config.train.steps = 2
    config.train.eval_every = 0
    expected = f"{config.data.name}-{config.model.name}"
    assert with_experiment_name(config).name == expected and config.name == ""
    result = train_and_evaluate(config, tmp_path, progress=False)
    assert result["experiment"] == expected
    assert '"name": "' + expected + '"' in (tmp_path / "config.json").read_text()
