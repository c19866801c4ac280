"""A character-level GPT on the Python standard library's source (or text_file=...), beside charlm-lstm.

Command: jaxarch run charlm-gpt [data.text_file=path/to/file.txt]
Wall time: MEASURE.
Expected: MEASURE.
"""

from jaxarch.experiments import _attention


def get_config():
    config = _attention.gpt({"name": "text", "text_file": "", "seq_len": 128})
    config.model.embed_dim = 64
    config.model.num_layers = 4
    config.model.max_length = 128
    config.optim.learning_rate = 3e-3
    config.train.batch_size = 32
    config.train.steps = 2000
    config.train.eval_every = 500
    config.train.eval_batch_size = 64
    config.sample = {"prompt": "def ", "num_tokens": 300, "temperature": 0.8}
    return config
