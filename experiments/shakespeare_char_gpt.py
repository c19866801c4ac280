"""A character-level GPT on Tiny Shakespeare (the char-rnn corpus; the last 10% held out, as in nanoGPT).

Command: jaxarch run shakespeare-char-gpt
Wall time: 2850 steps of 32 x 128 characters (818,176 params). On a shared, loaded 2-core CPU it ran at 0.35-0.37
times charlm-gpt's speed measured beside it (14.1 steps/s when quiet), so an estimated 4.9-5.2 steps/s: 9.1-9.7
minutes of training on a quiet one.
Expected: validation loss <= 1.60 nats per character (2.31 bits), the target for the mean of 3 seeds. One seed
measured with 3000 steps (the budget before the second speed measurement): 1.504 nats (2.170 bits, accuracy
0.558; 1.543 at step 2000), in 3927 s on the loaded machine.
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
    config.train.steps = 2850  # about 9.5 minutes on a quiet 2-core CPU
    config.train.eval_every = 500
    config.train.eval_batch_size = 64
    config.sample = {"prompt": "", "num_tokens": 300, "temperature": 0.8}
    return config
