"""A user's own experiment file, named by its path, runs and sweeps like a built-in experiment; the models it
registers (itself or through a module beside it) are found."""

import json
import uuid

import pytest

from jaxarch import experiments
from jaxarch.cli import main


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _write_experiment(directory, stem):
    """An experiment file whose model comes from a module beside it, as a user's project would be laid out.

    Names are unique per call: registries and `sys.modules` live as long as the test process.
    """
    tag = uuid.uuid4().hex[:8]
    model_name = f"tiny-bag-{tag}"
    (directory / f"my_models_{tag}.py").write_text(f'''
import flax.linen as nn
import jax.numpy as jnp

from jaxarch.layers import Conv, global_avg_pool
from jaxarch.models import MODELS


@MODELS.register("{model_name}")
class TinyBag(nn.Module):
    """A conv layer, a global average pool and a classifier. x: [batch, length, channels] -> logits."""
    num_outputs: int
    features: int = 8

    @nn.compact
    def __call__(self, x, *, train=False):
        h = nn.relu(Conv(self.features, kernel_size=(3,))(x))
        return nn.Dense(self.num_outputs)(global_avg_pool(h))
''')
    path = directory / f"{stem}.py"
    path.write_text(f'''"""A tiny model of my own on MNIST-1D."""

import my_models_{tag}  # noqa: F401  (registers the model)
from jaxarch.experiments import mnist1d_logreg


def get_config():
    config = mnist1d_logreg.get_config()
    config.model = {{"name": "{model_name}", "features": 4}}
    config.train.steps = 10
    config.train.eval_every = 0
    return config
''')
    return path, model_name


def test_get_config_of_a_file_registers_its_model_and_records_its_stem(tmp_path):
    from jaxarch.models import MODELS

    path, model_name = _write_experiment(tmp_path, "my_tiny_bag")
    config = experiments.get_config(str(path))
    assert config.name == "my_tiny_bag"
    assert config.model.name == model_name and model_name in MODELS
    # Loaded a second time (a sweep after a run in one process), the file is not executed again: its model
    # would be registered twice.
    assert experiments.get_config(str(path)).model.features == 4


def test_run_a_file_writes_runs_stem_and_records_the_experiment(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    project.mkdir()
    path, _ = _write_experiment(project, "my_tiny_bag")
    monkeypatch.chdir(tmp_path)
    # The overrides after an option as well as before it.
    assert main(["run", str(path), "train.steps=6", "--no-progress", "model.features=3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["experiment"] == "my_tiny_bag" and result["steps"] == 6
    saved = json.loads((tmp_path / "runs" / "my_tiny_bag" / "config.json").read_text())
    assert saved["name"] == "my_tiny_bag" and saved["model"]["features"] == 3


def test_sweep_a_file(tmp_path, monkeypatch, capsys):
    path, _ = _write_experiment(tmp_path, "my_swept_bag")
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(path), "--seeds", "2", "train.steps=4", "--strategy", "sequential",
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["experiment"] == "my_swept_bag" and summary["members"] == 2
    assert summary["points"][0]["metrics"]["test_accuracy"]["n"] == 2
    sweep_dir = tmp_path / "runs" / "sweep-my_swept_bag"
    assert (sweep_dir / "summary.json").exists()
    for seed in (0, 1):
        saved = json.loads((sweep_dir / f"seed={seed}" / "config.json").read_text())
        assert saved["name"] == "my_swept_bag" and saved["seed"] == seed and saved["train"]["steps"] == 4


def test_a_missing_file_or_one_without_get_config_is_an_error(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nowhere.py")]) == 2
    assert "experiment file" in capsys.readouterr().err
    (tmp_path / "no_config.py").write_text("x = 1\n")
    assert main(["run", str(tmp_path / "no_config.py")]) == 2
    assert "has no get_config()" in capsys.readouterr().err
    assert main(["run", "mnist1d-cnnn"]) == 2
    assert "did you mean mnist1d-cnn" in capsys.readouterr().err


def test_the_docs_experiment_files_run_by_their_paths(tmp_path, monkeypatch, capsys):
    """docs/configs.md's two example files, as written there: a derived config, and one registering its model."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "configs.md").read_text()
    blocks = [block for block in re.findall(r"^```python\n(.*?)^```$", page, flags=re.DOTALL | re.MULTILINE)
              if "def get_config" in block]
    wide, pooled = (block for block in blocks if "jaxarch run my_" in block)
    (tmp_path / "my_wide_cnn.py").write_text(wide)
    config = experiments.get_config(str(tmp_path / "my_wide_cnn.py"))
    assert config.name == "my_wide_cnn" and tuple(config.model.features) == (64, 128, 256)

    (tmp_path / "my_pooled_cnn.py").write_text(pooled)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "my_pooled_cnn.py", "--no-progress", "train.steps=3", "train.eval_every=0",
                 "model.features=4"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["experiment"] == "my_pooled_cnn" and result["steps"] == 3
    assert json.loads((tmp_path / "runs" / "my_pooled_cnn" / "config.json").read_text())["model"]["name"] == \
        "pooled-cnn"
