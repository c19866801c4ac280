"""The first stage of copy-transformer's curriculum: the copy-memory task at T = 200, same model and optimizer.

Command: jaxarch run copy-transformer-short (then: jaxarch run copy-transformer
train.init_from=runs/copy-transformer-short)
Wall time: 1000 steps; 80 s on a quiet 2-core CPU (12.6 steps/s).
Expected: measured test cross-entropy 6.6e-5 (chance 0.0945; 1.8e-3 at step 500).
"""

from jaxarch.experiments import copy_transformer


def get_config():
    config = copy_transformer.get_config()
    # max_length stays 1020, so the parameters (the relative-bias table) fit the T = 1000 stage.
    config.data.seq_len = 200
    config.train.steps = 1000
    config.train.eval_every = 250
    return config
