"""jaxarch: convolutional, recurrent and attention architectures as pure-function Flax Linen modules."""

__version__ = "0.1.0"
