"""A character-level LSTM language model on the Python standard library's source (or text_file=...).

Command: jaxarch run charlm-lstm [data.text_file=path/to/file.txt]
Wall time: 2000 steps of 32 x 128 characters; 108.5 s of training on a quiet 2-core CPU (18.4 steps/s).
Expected: validation bits per character well below log2(vocab): 2.484 +- 0.010 mean +- std over n=5 seeds (95%
interval [2.471, 2.496]; 209,801 params; `jaxarch sweep charlm-lstm`, docs/results.md); charlm-gpt reaches
2.354 +- 0.025 in less training time.
"""

from jaxarch.experiments._base import base_config


def get_config():
    config = base_config()
    config.data = {"name": "text", "text_file": "", "seq_len": 128}
    config.model.name = "rnn"
    config.model.cell = "lstm"
    config.model.hidden_sizes = (200,)
    config.model.readout = "sequence"
    config.model.embed_dim = 32
    config.optim.learning_rate = 3e-3
    config.optim.weight_decay = 0.0
    config.train.batch_size = 32
    config.train.steps = 2000
    config.train.eval_every = 500
    config.train.eval_batch_size = 64
    config.sample = {"prompt": "", "num_tokens": 300, "temperature": 0.8}  # "": the start of the held-out text
    return config
