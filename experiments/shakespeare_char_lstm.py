"""A character-level LSTM on Tiny Shakespeare, beside shakespeare-char-gpt at about its size and training time.

Command: jaxarch run shakespeare-char-lstm
Wall time: 3000 steps of 32 x 128 characters (one LSTM layer of 400, 776,290 params against the GPT's 818,176).
On a shared, loaded 2-core CPU it ran at 0.31-0.33 times charlm-lstm's speed measured beside it (18.4 steps/s when
quiet), so an estimated 5.7-6.2 steps/s: 8.1-8.8 minutes of training on a quiet one.
Expected: one seed measured: validation loss 1.534 nats per character (2.213 bits, accuracy 0.546; 1.557 at step
2000), in 1770 s on the loaded machine; shakespeare-char-gpt's seed reached 1.504 with 3000 steps.
"""

from jaxarch.experiments import charlm_lstm


def get_config():
    config = charlm_lstm.get_config()
    config.data = {"name": "tinyshakespeare", "seq_len": 128}
    config.model.hidden_sizes = (400,)
    config.model.embed_dim = 64
    config.train.steps = 3000
    config.sample = {"prompt": "", "num_tokens": 300, "temperature": 0.8}
    return config
