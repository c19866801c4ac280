"""Call arguments are documented where they are taken (every public module's `__call__` has a docstring), and shape
errors quote the shape the caller passed, not one the library made from it."""

import importlib
import inspect
import pkgutil
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import jaxarch.layers
import jaxarch.models
from jaxarch.layers.attention import MultiHeadAttention, combine_masks, dot_product_attention
from jaxarch.layers.transformer import TransformerEncoder


def _public_modules():
    for package in (jaxarch.layers, jaxarch.models):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for name, value in vars(module).items():
                if (not name.startswith("_") and inspect.isclass(value) and value.__module__ == module.__name__
                        and issubclass(value, nn.Module)):
                    yield f"{module.__name__}.{name}", value


def test_every_public_module_documents_its_call():
    modules = dict(_public_modules())
    assert len(modules) > 20 and "jaxarch.models.transformer.GPT" in modules
    # The `__call__` the class runs, its own or a base's; `inspect.getdoc` would fall back to other docstrings.
    calls = {name: next(vars(c)["__call__"] for c in cls.__mro__ if "__call__" in vars(c))
             for name, cls in modules.items()}
    undocumented = [name for name, call in calls.items() if not (call.__doc__ or "").strip()]
    assert undocumented == []


BATCH, HEADS, TIME, FEATURES = 4, 2, 10, 6


def _padding_mask():
    return jnp.ones((BATCH, TIME), bool)  # [batch, time]: the shape a user has at hand


@pytest.mark.parametrize("call", [
    lambda x, mask: TransformerEncoder(num_layers=1, num_heads=HEADS).init(jax.random.PRNGKey(0), x, mask=mask),
    lambda x, mask: MultiHeadAttention(num_heads=HEADS).init(jax.random.PRNGKey(0), x, mask=mask),
    lambda x, mask: dot_product_attention(*(x.reshape(BATCH, TIME, HEADS, FEATURES // HEADS),) * 3, mask=mask),
], ids=["TransformerEncoder", "MultiHeadAttention", "dot_product_attention"])
def test_a_batch_time_mask_is_reported_with_the_shape_passed_and_the_fix(call):
    x = jnp.ones((BATCH, TIME, FEATURES))
    with pytest.raises(ValueError) as raised:
        jax.eval_shape(lambda: call(x, _padding_mask()))
    message = str(raised.value)
    assert "mask shape is (4, 10), expected broadcastable to (4, 2, 10, 10)" in message
    assert "(1, 1, 4, 10)" not in message
    assert "mask[:, None, None, :]" in message
    jax.eval_shape(lambda: call(x, _padding_mask()[:, None, None, :]))  # the advice works


def test_combine_masks_quotes_the_shapes_passed():
    with pytest.raises(ValueError, match=re.escape("mask shapes is [(4, 10), (3, 1, 1, 7)]")):
        combine_masks(_padding_mask(), jnp.ones((3, 1, 1, 7), bool))
