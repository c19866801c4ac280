"""Where every array of the train state lives on the mesh, and the train step compiled for those places.

- Parameters named with logical axes (`jaxarch.layers.partitioning`) are split along the mesh axis that
  `LOGICAL_AXIS_RULES` gives their name: heads, MLP hidden units and vocabularies along `model`. Everything
  else (all CNN and RNN parameters, norms, biases of the residual stream) is replicated.
- With `fsdp`, each parameter is further split along `data` on its largest dimension that is not yet split and
  divides evenly (fully sharded data parallelism, Zhao et al. 2023 / ZeRO-3): memory per device falls with the
  data axis, and XLA gathers each parameter where it is used.
- A dimension that does not divide evenly by its mesh axis stays replicated (an odd vocabulary, one KV head).
- The optimizer state follows the parameters (`optax.tree_map_params`); counters, the step, the RNG key and
  other model state (batch statistics) are replicated.

The step itself is `jaxarch.train.steps.make_train_step`'s, jitted with these shardings: XLA (GSPMD) inserts the
gradient all-reduce across `data` and the tensor-parallel collectives across `model`.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxarch.layers import partitioning as axes
from jaxarch.train.mesh import DATA, MODEL, batch_sharding, replicated
from jaxarch.train.state import TrainState
from jaxarch.train.steps import make_train_step
from jaxarch.train.tasks import Task

# Logical axis name -> mesh axis. Names not listed (embed, head_dim, layers) are never split.
LOGICAL_AXIS_RULES = ((axes.HEADS, MODEL), (axes.KV_HEADS, MODEL), (axes.MLP, MODEL), (axes.VOCAB, MODEL))


def _mesh_spec(logical: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, fsdp: bool) -> PartitionSpec:
    """The mesh PartitionSpec of one parameter from its logical names (`PartitionSpec()` when it has none)."""
    spec = list(nn.logical_to_mesh_axes(tuple(logical), LOGICAL_AXIS_RULES)) if len(logical) else []
    spec += [None] * (len(shape) - len(spec))
    spec = [axis if axis is not None and size % mesh.shape[axis] == 0 else None for axis, size in zip(spec, shape)]
    if fsdp and mesh.shape[DATA] > 1:
        free = [i for i, (axis, size) in enumerate(zip(spec, shape)) if axis is None and size % mesh.shape[DATA] == 0]
        if free:
            spec[max(free, key=lambda i: shape[i])] = DATA
    return PartitionSpec(*spec)


def param_shardings(boxed_params, mesh: Mesh, *, fsdp: bool = False):
    """NamedShardings for a parameter tree of arrays or ShapeDtypeStructs, some boxed with logical names
    (`nn.LogicallyPartitioned`, as `model.init` returns them under `nn.logical_axis_rules`)."""
    logical = nn.get_partition_spec(boxed_params)
    return jax.tree.map(lambda spec, leaf: NamedSharding(mesh, _mesh_spec(spec, leaf.shape, mesh, fsdp)),
                        logical, nn.unbox(boxed_params), is_leaf=lambda x: isinstance(x, PartitionSpec))


def init_sharded_state(init_variables: Callable[[], dict], apply_fn: Callable, tx: optax.GradientTransformation,
                       rng: jax.Array, mesh: Mesh, *, fsdp: bool = False) -> TrainState:
    """Builds the train state directly in its sharded layout: no device ever holds more than its part.

    `init_variables()` returns the model's variables (`model.init(...)`, closed over its inputs); the values
    do not depend on the mesh (with `jax_threefry_partitionable`, JAX's default, random bits are the same
    however their output is split).
    """
    with nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        boxed = jax.eval_shape(init_variables)

    def create() -> TrainState:
        return TrainState.create(apply_fn=apply_fn, variables=init_variables(), tx=tx, rng=rng)

    abstract = jax.eval_shape(create)
    params = param_shardings(boxed["params"], mesh, fsdp=fsdp)
    everywhere = replicated(mesh)
    shardings = abstract.replace(
        step=everywhere, rng=everywhere, skipped_steps=everywhere, params=params,
        model_state=jax.tree.map(lambda _: everywhere, abstract.model_state),
        opt_state=optax.tree_map_params(tx, lambda _, sharding: sharding, abstract.opt_state, params,
                                        transform_non_params=lambda _: everywhere))
    return jax.jit(create, out_shardings=shardings)()


def make_sharded_train_step(task: Task, state: TrainState, mesh: Mesh, *, skip_nonfinite: bool = False,
                            donate: bool = True, grad_accum_steps: int = 1):
    """`make_train_step`'s step, jitted to take and return the state in the shardings `state` has now (donated
    unless `donate` is False) and a batch split along `data`; the metrics come back replicated.

    With `grad_accum_steps` > 1 each device keeps its own rows: micro-batch i takes every k-th row of the batch
    (`jaxarch.train.steps.split_micro_batches`), so when the batch per device is a multiple of k every device
    holds an equal part of every micro-batch and no rows move. GSPMD all-reduces each micro-batch's gradient
    inside the loop (k gradient all-reduces per step rather than one); the values are the same."""
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step = make_train_step(task, jit=False, skip_nonfinite=skip_nonfinite, grad_accum_steps=grad_accum_steps)
    return jax.jit(step, donate_argnums=0 if donate else (),
                   in_shardings=(shardings, batch_sharding(mesh)), out_shardings=(shardings, replicated(mesh)))
