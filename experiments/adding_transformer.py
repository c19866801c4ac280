"""The adding problem at T = 600 (data.seq_len= overridable) with a one-layer Transformer encoder.

No positions: the target is a sum over marked steps, invariant to their order, so mean pooling suffices.

Command: jaxarch run adding-transformer
Wall time: 1000 steps; 143 s measured on a 2-core CPU, shared for part of the run (7.0 steps/s).
Expected: target test MSE <= 1e-3 (predicting 1 scores 0.167); measured 6.3e-5 (training loss 1.4e-3 at step
500, 1.3e-4 at step 800).
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
