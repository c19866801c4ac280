"""jaxarch: convolutional, recurrent and attention architectures as pure-function Flax Linen modules."""

from jaxarch.xla_flags import apply_xla_flags

apply_xla_flags()

__version__ = "0.1.0"
