"""A character-level LSTM language model on the Python standard library's source (or text_file=...).

Command: jaxarch run charlm-lstm [data.text_file=path/to/file.txt]
Wall time: see README (measured on a 2-core CPU).
Expected: validation bits per character well below log2(vocab); reported beside charlm-gpt.
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
    config.sample = {"prompt": "def ", "num_tokens": 300, "temperature": 0.8}
    return config
