"""jaxarch: convolutional, recurrent and attention architectures as pure-function Flax Linen modules."""

from jaxarch.host_allocator import configure_host_allocator
from jaxarch.xla_flags import apply_xla_flags

apply_xla_flags()
HOST_ALLOCATOR_CONFIGURED = configure_host_allocator()  # whether glibc took jaxarch's settings

__version__ = "0.1.0"
