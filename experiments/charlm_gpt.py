"""A character-level GPT (2 layers, width 112) on the Python standard library's source, beside charlm-lstm
(one LSTM layer of 200) at about the same size (228,592 and 209,801 parameters) and training time.

Command: jaxarch run charlm-gpt [data.text_file=path/to/file.txt]
Wall time: 1250 steps of 32 x 128 characters; 88.8 s of training on a quiet 2-core CPU (14.1 steps/s), against
108.5 s for charlm-lstm's 2000 steps.
Expected: validation bits per character below charlm-lstm's: 2.354 +- 0.025 mean +- std over n=5 seeds (95% interval
[2.323, 2.386]; `jaxarch sweep charlm-gpt`, docs/results.md) against its 2.484 +- 0.010, in less training time.
"""

from jaxarch.experiments import _attention


def get_config():
    config = _attention.gpt({"name": "text", "text_file": "", "seq_len": 128})
    # Two wide layers rather than four narrow ones at the same size: wider matmuls run faster on a CPU, and at
    # 800 steps they reached 2.52 bits/char against 2.81 for 4 layers of width 64 (MLP ratio 4).
    config.model.embed_dim = 112
    config.model.num_layers = 2
    config.model.mlp_ratio = 2.0
    config.model.max_length = 128
    config.optim.learning_rate = 5e-3  # 2.47 bits/char at 800 steps, against 2.52 with 3e-3
    config.train.batch_size = 32
    config.train.steps = 1250  # about charlm-lstm's training time
    config.train.eval_every = 0
    config.train.eval_batch_size = 64
    config.sample = {"prompt": "", "num_tokens": 300, "temperature": 0.8}  # "": the start of the held-out text
    return config
