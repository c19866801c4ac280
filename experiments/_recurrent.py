"""Shared bases for the recurrent experiments: one config per task, the cell chosen by each experiment."""

from jaxarch.experiments._base import base_config


def mnist1d(cell: str):
    config = base_config()
    config.model.name = "rnn"
    config.model.cell = cell
    config.model.hidden_sizes = (128, 128)
    # A bidirectional first layer: class evidence sits anywhere in the 40 samples.
    config.model.bidirectional = True
    config.model.dropout_rate = 0.1
    config.data.shift_augment = 3
    config.optim.learning_rate = 3e-3
    config.train.steps = 3000
    return config


def adding(cell: str, seq_len: int = 600):
    config = base_config()
    config.data = {"name": "adding", "seq_len": seq_len}
    config.model.name = "rnn"
    config.model.cell = cell
    config.model.hidden_sizes = (128,)
    config.optim.learning_rate = 2e-3
    config.optim.weight_decay = 0.0
    config.optim.warmup_steps = 200
    config.train.batch_size = 64
    config.train.steps = 3000
    config.train.eval_every = 500
    return config


def copy(cell: str, seq_len: int = 100):
    config = base_config()
    config.data = {"name": "copy", "seq_len": seq_len}
    config.model.name = "rnn"
    config.model.cell = cell
    config.model.hidden_sizes = (128,)
    config.model.readout = "sequence"
    config.model.embed_dim = 16
    config.optim.learning_rate = 2e-3
    config.optim.weight_decay = 0.0
    config.optim.warmup_steps = 200
    config.train.batch_size = 64
    config.train.steps = 3000
    config.train.eval_every = 500
    return config
