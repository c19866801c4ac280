"""The first stage of copy-transformer's curriculum: the copy-memory task at T = 200, same model and optimizer.

Command: jaxarch run copy-transformer-short (then: jaxarch run copy-transformer
train.init_from=runs/copy-transformer-short)
Wall time: 1000 steps; 80 s on a quiet 2-core CPU (12.6 steps/s).
Expected: test cross-entropy 0.019 +- 0.040 mean +- std over n=5 seeds (`jaxarch sweep copy-transformer-short`,
docs/results.md; chance 0.0945), a mean carried by one seed: per seed 8.7e-5, 2.9e-3, 2.9e-4, 0.090, 9.6e-4, so
four of five below 3e-3 and seed 3 still learning (96.4% of positions right) when the 1000 steps end. With 2000
steps seed 3 learns the task and seed 0 stays at chance instead (0.019 +- 0.042 over the same 5 seeds).
"""

from jaxarch.experiments import copy_transformer


def get_config():
    config = copy_transformer.get_config()
    # max_length stays 1020, so the parameters (the relative-bias table) fit the T = 1000 stage.
    config.data.seq_len = 200
    config.train.steps = 1000
    config.train.eval_every = 250
    return config
