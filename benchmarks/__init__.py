"""Benchmarks, installed as `jaxarch.benchmarks`: the suite behind `jaxarch bench` (suite.py: every family's training
step beside Flax's built-ins and PyTorch) and focused measurements (rnn.py, kv_cache.py, attention_memory.py)."""
