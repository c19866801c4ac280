"""A character-level GPT on Tiny Shakespeare (the char-rnn corpus; the last 10% held out, as in nanoGPT).

Command: jaxarch run shakespeare-char-gpt
Wall time: 2400 steps of 32 x 128 characters (818,176 params): 522 +- 4 s of training (8.7 minutes, 4.6 steps/s),
seeds 0-2 on a quiet 2-core Intel Xeon (seeds 3-4 ran beside the test suite); target <= 10 minutes, met.
Expected: validation loss 1.521 +- 0.009 nats per character mean +- std over n=5 seeds (95% interval
[1.509, 1.532]; 2.194 bits; `jaxarch sweep shakespeare-char-gpt`); target <= 1.60 nats (2.31 bits), met.
"""

from jaxarch.experiments import _attention


def get_config():
    config = _attention.gpt({"name": "tinyshakespeare", "seq_len": 128})
    config.model.embed_dim = 128
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.mlp_ratio = 4.0
    config.model.max_length = 128
    config.optim.learning_rate = 3e-3
    config.optim.weight_decay = 0.1
    config.optim.warmup_steps = 100
    config.train.batch_size = 32
    config.train.steps = 2400  # inside the 10-minute budget on a quiet 2-core CPU (8.7 minutes measured)
    config.train.eval_every = 500
    config.train.eval_batch_size = 64
    config.sample = {"prompt": "", "num_tokens": 300, "temperature": 0.8}
    return config
