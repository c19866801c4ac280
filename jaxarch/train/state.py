"""The train state: everything a step reads and writes, and everything a checkpoint must hold."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


class TrainState(flax.struct.PyTreeNode):
    """step: [] int32; params: the "params" collection; model_state: the other mutable collections (e.g.
    "batch_stats"); opt_state: optax state; rng: the base key from which each step's dropout key is folded;
    skipped_steps: [] int32, steps whose update was skipped for a non-finite loss or gradient."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    rng: jax.Array
    skipped_steps: jax.Array
    apply_fn: Any = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, *, apply_fn, variables: dict, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
        variables = dict(variables)
        params = variables.pop("params")
        return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params, model_state=variables,
                   opt_state=tx.init(params), rng=rng, skipped_steps=jax.numpy.zeros((), jax.numpy.int32),
                   apply_fn=apply_fn, tx=tx)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
