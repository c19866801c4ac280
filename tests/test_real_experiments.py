"""The experiments on downloaded data run end to end on fixture files in the publishers' exact formats (served by a
fake `urlopen`, so the download, digest check and parsing all run), with a few examples and a few steps."""

from __future__ import annotations

import math

import pytest
from test_data_standard import cifar_archive, data_dir, idx_files, serve  # noqa: F401  (data_dir: a fixture)

from jaxarch import experiments
from jaxarch.train import train_and_evaluate
from jaxarch.train.configure import override_config

TINY = ["optim.schedule=constant", "optim.warmup_steps=1", "train.steps=3", "train.log_every=1",
        "train.eval_every=0", "train.checkpoint_every=0", "train.batch_size=8", "train.eval_batch_size=8"]
SHAKESPEARE_TEXT = "".join(f"MENENIUS {i}:\nWhat work's, my countrymen, in hand? where go you\nWith bats and clubs?"
                           "\n\n" for i in range(80))


@pytest.mark.parametrize("name,dataset,files,extra", [
    ("fashion-mnist-cnn", "fashion_mnist", lambda: idx_files(num_train=24, num_test=9), []),
    ("cifar10-vit", "cifar10", lambda: {"archive": cifar_archive(num_per_batch=5)},
     ["model.num_layers=1", "model.embed_dim=32"]),
    ("shakespeare-char-gpt", "tinyshakespeare", lambda: {"text": SHAKESPEARE_TEXT.encode()},
     ["data.seq_len=32", "model.max_length=32", "model.num_layers=1", "sample.num_tokens=8"]),
    ("shakespeare-char-lstm", "tinyshakespeare", lambda: {"text": SHAKESPEARE_TEXT.encode()},
     ["data.seq_len=32", "model.hidden_sizes=(16,)", "sample.num_tokens=8"]),
])
def test_experiment_runs_end_to_end_on_fixture_files(monkeypatch, tmp_path, name, dataset, files, extra):
    requests = serve(monkeypatch, dataset, files())
    config = override_config(experiments.get_config(name), [*TINY, *extra])
    result = train_and_evaluate(config, tmp_path / "run", progress=False)
    assert result["experiment"] == name and result["steps"] == 3
    assert requests and set(requests.values()) == {1}  # each file downloaded once
    metrics = {k: v for k, v in result.items() if k.startswith(("test_", "validation_"))}
    assert metrics and all(math.isfinite(v) for v in metrics.values()), result
    if dataset == "tinyshakespeare":
        assert len(result["sample"]) >= 8
