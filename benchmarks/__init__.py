"""Benchmarks: train-step speed of jaxarch modules beside Flax's built-ins and (when installed) PyTorch."""
