"""A character-level GPT (4 layers, width 64) on the Python standard library's source, beside charlm-lstm
(one LSTM layer of 200); the parameter counts are meant to be close (about 200k each).

Command: jaxarch run charlm-gpt [data.text_file=path/to/file.txt]
Wall time: not yet measured on the 2-core CPU (800 steps of 32 x 128 characters).
Expected: validation bits per character below charlm-lstm's at the same size; not yet measured.
"""

from jaxarch.experiments import _attention


def get_config():
    config = _attention.gpt({"name": "text", "text_file": "", "seq_len": 128})
    config.model.embed_dim = 64
    config.model.num_layers = 4
    config.model.max_length = 128
    config.optim.learning_rate = 3e-3
    config.train.batch_size = 32
    config.train.steps = 800
    config.train.eval_every = 0
    config.train.eval_batch_size = 64
    config.sample = {"prompt": "def ", "num_tokens": 300, "temperature": 0.8}
    return config
