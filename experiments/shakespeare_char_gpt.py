"""A character-level GPT on Tiny Shakespeare (the char-rnn corpus; the last 10% held out, as in nanoGPT).

Command: jaxarch run shakespeare-char-gpt
Wall time: 3000 steps of 32 x 128 characters (818,176 params). On a shared, loaded 2-core CPU it ran 0.76
steps/s while charlm-gpt ran 2.07 (14.1 when quiet), so an estimated 5.2 steps/s: about 9.6 minutes of training
on a quiet one.
Expected: validation loss <= 1.60 nats per character (2.31 bits), the target for the mean of 3 seeds.
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
    config.train.steps = 3000
    config.train.eval_every = 500
    config.train.eval_batch_size = 64
    config.sample = {"prompt": "", "num_tokens": 300, "temperature": 0.8}
    return config
