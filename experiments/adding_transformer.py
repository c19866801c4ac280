"""The adding problem at T = 600 (data.seq_len= overridable) with a one-layer Transformer encoder.

No positions: the target is a sum over marked steps, invariant to their order, so mean pooling suffices.

Command: jaxarch run adding-transformer
Wall time: 1000 steps; 143 s measured on a 2-core CPU, shared for part of the run (7.0 steps/s).
Expected: target test MSE <= 1e-3 (predicting 1 scores 0.167), missed on the mean: 1.10e-3 +- 0.96e-3 mean +- std
over n=5 seeds (`jaxarch sweep adding-transformer`, docs/results.md); per seed 6.2e-5, 2.0e-3, 2.1e-3, 2.3e-4,
1.1e-3, so two of five below the target.
"""

from jaxarch.experiments import _attention


def get_config():
    config = _attention.sequence_encoder({"name": "adding", "seq_len": 600})
    config.model.embed_dim = 32
    config.model.num_layers = 1
    config.model.num_heads = 2
    config.model.positions = "none"
    config.optim.weight_decay = 0.0
    config.optim.learning_rate = 2e-3
    config.train.batch_size = 32
    config.train.steps = 1000
    config.train.eval_every = 0
    config.train.eval_batch_size = 250
    return config
