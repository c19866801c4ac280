"""Models composed from jaxarch layers, each registered by name in `MODELS`."""

from jaxarch.models import cnn as _cnn  # noqa: F401  (registers "cnn")
from jaxarch.models import mlp as _mlp  # noqa: F401  (registers "logreg", "mlp")
from jaxarch.models.cnn import CNN
from jaxarch.models.mlp import MLP, LogisticRegression
from jaxarch.models.registry import MODELS


def build_model(name: str, num_outputs: int, **options):
    """The model registered as `name`, with its options checked against the module's fields."""
    from jaxarch.config import call_with_options

    return call_with_options(f"model {name!r}", MODELS.get(name), options, num_outputs=num_outputs)


__all__ = ["CNN", "LogisticRegression", "MLP", "MODELS", "build_model"]
