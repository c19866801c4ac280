"""The input stage shared by sequence models: float features pass through, token ids are embedded."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxarch.checks import check_floating, check_integer, check_rank


def embed_or_check(module: str, x: jax.Array, vocab_size: int, embed_dim: int, dtype=None) -> jax.Array:
    """x: [batch, time] int ids (when vocab_size > 0) -> [batch, time, embed_dim]; or [batch, time, features]
    floats, returned as they are. Call inside a compact method: the embedding is created in the caller."""
    if vocab_size > 0:
        check_rank(module, "inputs", x, 2, "[batch, time] token ids (vocab_size > 0)")
        check_integer(module, "inputs", x)
        return nn.Embed(vocab_size, embed_dim, dtype=dtype, name="embed")(x)
    check_rank(module, "inputs", x, 3, "[batch, time, features] (or set vocab_size for token ids)")
    check_floating(module, "inputs", x)
    return x if dtype is None else x.astype(dtype)
