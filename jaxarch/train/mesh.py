"""The device mesh a run trains on, and batches placed on it.

A mesh has two named axes: `data` (batches are split along it; data parallelism) and `model` (Transformer heads,
MLP hidden units and vocabularies are split along it; tensor parallelism, see `jaxarch.train.sharding`). The
config's `mesh` string sets their sizes: `"data:8"`, `"data:4,model:2"`, `"model:2"` (data takes the remaining
devices); `""` puts every device on `data`. A mesh may use fewer devices than there are (the first ones) in a
single-process run, which is how throughput is compared across device counts.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxarch.checks import fail
from jaxarch.compat import make_auto_mesh

DATA, MODEL = "data", "model"
MESH_AXES = (DATA, MODEL)

_MODULE = "mesh"


def parse_mesh(spec: str) -> dict[str, int]:
    """`"data:4,model:2"` -> `{"data": 4, "model": 2}`; `""` -> `{}`. Sizes are positive ints."""
    if not isinstance(spec, str):
        fail(_MODULE, "spec", repr(spec), "a string such as 'data:8' or 'data:4,model:2'")
    sizes: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, size = (text.strip() for text in item.partition(":"))
        if not sep or name not in MESH_AXES or not size.isdigit() or int(size) < 1:
            fail(_MODULE, f"entry {item!r} of {spec!r}", "malformed",
                 f"AXIS:SIZE with AXIS one of {list(MESH_AXES)} and SIZE a positive int, e.g. 'data:4,model:2'")
        if name in sizes:
            fail(_MODULE, f"axis {name!r} in {spec!r}", "given twice", "each axis at most once")
        sizes[name] = int(size)
    return sizes


def make_mesh(spec: str = "", devices: list | None = None) -> Mesh:
    """The `(data, model)` mesh described by `spec` over `devices` (default `jax.devices()`, every process's).

    Axes are "auto" (GSPMD): the compiler propagates shardings from parameters and batches through the step.
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = parse_mesh(spec)
    model = sizes.get(MODEL, 1)
    if DATA in sizes:
        data = sizes[DATA]
    elif len(devices) % model:
        fail(_MODULE, f"model axis size of {spec!r}", model, f"a divisor of the {len(devices)} devices available "
             "when the data axis size is left out")
    else:
        data = len(devices) // model
    needed = data * model
    if needed > len(devices):
        fail(_MODULE, f"device count of {spec!r} (data {data} x model {model})", needed,
             f"at most {len(devices)}, the devices available (jax.devices())")
    if needed < len(devices) and jax.process_count() > 1:
        fail(_MODULE, f"device count of {spec!r}", needed,
             f"all {len(devices)} devices of the {jax.process_count()} processes in a multi-process run")
    return make_auto_mesh((data, model), MESH_AXES, devices[:needed])


def describe(mesh: Mesh) -> str:
    """The mesh as a config string: `"data:4,model:2"`, or `"data:8"` without a model axis."""
    return ",".join(f"{name}:{size}" for name, size in mesh.shape.items() if name == DATA or size > 1)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split along `data`, everything else replicated (across `model` too)."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def check_batch_size(mesh: Mesh, batch_size: int, name: str = "batch size") -> None:
    """A batch is split into equal per-device parts along `data`: its size must be a multiple of that axis."""
    data = mesh.shape[DATA]
    if batch_size % data:
        fail(_MODULE, name, batch_size, f"a multiple of the data axis size {data} (mesh {describe(mesh)!r}), "
             f"e.g. {max(data, batch_size // data * data)}")


def padded_batch_size(mesh: Mesh, batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the data axis, for batches whose padding rows are masked."""
    if batch_size < 1:
        fail(_MODULE, "batch size to pad", batch_size, "a positive int")
    return math.ceil(batch_size / mesh.shape[DATA]) * mesh.shape[DATA]


def place_batch(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """The global batch `{name: [batch, ...]}` as global arrays split along `data`.

    Each process copies only the rows its own devices hold (`jax.make_array_from_callback` asks for exactly
    those); `load_batch` also reads only those rows from the dataset.
    """
    sharding = batch_sharding(mesh)
    placed = {}
    for name, values in batch.items():
        values = np.asarray(values)
        check_batch_size(mesh, values.shape[0], f"batch {name!r} rows (shape {values.shape})")
        placed[name] = jax.make_array_from_callback(values.shape, sharding, lambda index, v=values: v[index])
    return placed


def local_rows(mesh: Mesh, batch_size: int) -> slice | None:
    """The rows of a `batch_size` batch that this process's devices hold along `data`, as one slice; None when
    they are every row (a single process) or not one contiguous block (then the whole batch is loaded)."""
    if jax.process_count() == 1:
        return None
    held = batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values()
    ranges = sorted({index[0].indices(batch_size)[:2] for index in held})
    start, stop = ranges[0][0], ranges[-1][1]
    contiguous = all(a[1] == b[0] or a == b for a, b in zip(ranges, ranges[1:]))
    return slice(start, stop) if contiguous and (start, stop) != (0, batch_size) else None


def load_batch(mesh: Mesh, dataset, seed: int, step: int, batch_size: int) -> dict[str, jax.Array]:
    """Training batch `step` as global arrays split along `data`. In a multi-process run each process reads only
    its own rows (`dataset.train_batch(..., rows=)`) and the global arrays are assembled from those parts."""
    check_batch_size(mesh, batch_size, "train.batch_size")
    rows = local_rows(mesh, batch_size)
    if rows is None:
        return place_batch(mesh, dataset.train_batch(seed, step, batch_size))
    part = dataset.train_batch(seed, step, batch_size, rows=rows)
    sharding = batch_sharding(mesh)
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(values),
                                                         (batch_size, *np.shape(values)[1:]))
            for name, values in part.items()}
