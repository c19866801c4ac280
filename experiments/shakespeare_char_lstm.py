"""A character-level LSTM on Tiny Shakespeare, beside shakespeare-char-gpt at about its size and training time.

Command: jaxarch run shakespeare-char-lstm
Wall time: 3000 steps of 32 x 128 characters (one LSTM layer of 400, 776,290 params against the GPT's 818,176):
634-1638 s of training (n=5 seeds) on a 2-core Intel Xeon running other jobs beside them; at the 5.7-6.0 steps/s of
its quiet stretches, about 8.5 minutes.
Expected: validation loss 1.530 +- 0.005 nats per character mean +- std over n=5 seeds (95% interval
[1.524, 1.536]; 2.207 bits; `jaxarch sweep shakespeare-char-lstm`), against shakespeare-char-gpt's
1.521 +- 0.009 at 2400 steps.
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
