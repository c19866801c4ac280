"""Models composed from jaxarch layers, each registered by name in `MODELS`.

Every module in this package is imported here, so a new model file registers itself by being added.
"""

import importlib
import pkgutil

from jaxarch.models.registry import MODELS

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

from jaxarch.models.cnn import CNN  # noqa: E402
from jaxarch.models.mlp import MLP, LogisticRegression  # noqa: E402
from jaxarch.models.resnet import ResNet  # noqa: E402


def build_model(name: str, num_outputs: int, *, vocab_size: int | None = None, **options):
    """The model registered as `name`, with its options checked against the module's fields.

    `num_outputs` and, for token inputs, `vocab_size` come from the dataset, never from the config.
    """
    from jaxarch.config import call_with_options

    supplied = {"num_outputs": num_outputs}
    if vocab_size:
        supplied["vocab_size"] = vocab_size
    return call_with_options(f"model {name!r}", MODELS.get(name), options, **supplied)


__all__ = ["CNN", "LogisticRegression", "MLP", "MODELS", "ResNet", "build_model"]
