"""The settings jaxarch makes at import (XLA flags, the host allocator) change how fast a training step runs,
never what it computes."""

import importlib.metadata
import os
import subprocess
import sys

import pytest

from jaxarch.host_allocator import _glibc, configure_host_allocator
from jaxarch.xla_flags import (CONVOLUTION_FLAG, CPU_FLAGS, SCHEDULER_FLAG, apply_xla_flags, cpu_flags, flag_name,
                               jaxlib_libraries, names_in_libraries)

# A few Adam steps of the reference CNN's layers (smaller batch); prints the flags in effect, a digest of the final
# parameters and loss, the loss and the parameters' sum of squares, and whether YNNPACK ran XLA's convolutions.
TRAIN = """
import hashlib, os
import jax, jax.numpy as jnp, numpy as np, optax
from jaxarch.models import CNN
from jaxarch.layers.conv_lowering import ynnpack_runs_convolutions
model = CNN(num_outputs=10, features=(8, 16), kernel_size=(3, 3), head="flatten")
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((16, 28, 28, 1)), jnp.float32)
y = jnp.asarray(rng.integers(0, 10, 16))
params = model.init(jax.random.key(0), x)["params"]
optimizer = optax.adam(1e-2)
opt_state = optimizer.init(params)

@jax.jit
def step(params, opt_state):
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

for _ in range(3):
    params, opt_state, loss = step(params, opt_state)
digest = hashlib.sha256(b"".join(np.asarray(leaf).tobytes() for leaf in jax.tree.leaves((params, loss))))
squares = sum(float(jnp.sum(leaf.astype(jnp.float64) ** 2)) for leaf in jax.tree.leaves(params))
print(os.environ.get("XLA_FLAGS", ""), "|", digest.hexdigest(), "|", float(loss), "|", squares, "|",
      ynnpack_runs_convolutions())
"""


# Training steps of a Transformer block, whose step's temporaries make one block of about 180 MB; prints the median
# count of minor page faults a step after warm-up (the heap may still grow now and then while it settles).
PAGE_FAULTS = """
import resource, statistics
import jax, jax.numpy as jnp
from jaxarch.layers.transformer import DecoderBlock
block = DecoderBlock(num_heads=4, mlp_ratio=4)
x = jax.random.normal(jax.random.key(0), (16, 256, 256))
params = block.init(jax.random.key(1), x)
grad = jax.jit(jax.grad(lambda p: jnp.sum(block.apply(p, x) ** 2)))
faults = []
for _ in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(grad(params))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults[5:]))
"""


def _run(script: str, **switches: str) -> str:
    environment = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    environment.update(switches)
    return subprocess.run([sys.executable, "-c", script], env=environment, check=True, capture_output=True, text=True,
                          timeout=300).stdout.strip().splitlines()[-1]


def _train(**switches: str) -> dict:
    flags, digest, loss, squares, ynnpack = (part.strip() for part in _run(TRAIN, **switches).split("|"))
    return dict(flags=flags, digest=digest, loss=float(loss), squares=float(squares), ynnpack=ynnpack == "True")


def test_the_scheduler_flag_leaves_training_bitwise_identical():
    scheduled = _train(JAXARCH_XLA_FLAGS="0", XLA_FLAGS=SCHEDULER_FLAG)
    default = _train(JAXARCH_XLA_FLAGS="0")
    assert scheduled["flags"] == SCHEDULER_FLAG and default["flags"] == ""
    assert scheduled["digest"] == default["digest"]


@pytest.mark.skipif(CONVOLUTION_FLAG not in CPU_FLAGS, reason="this jaxlib does not know the flag")
def test_the_convolution_flag_moves_convolutions_off_ynnpack_and_training_by_rounding_only():
    with_flags, without_flags = _train(JAXARCH_XLA_FLAGS="1"), _train(JAXARCH_XLA_FLAGS="0")
    assert with_flags["flags"] == " ".join(CPU_FLAGS) and without_flags["flags"] == ""
    assert not with_flags["ynnpack"] and without_flags["ynnpack"]
    # The second layer now runs as Eigen's convolution instead of the patch matmul: another order of float sums.
    assert with_flags["loss"] == pytest.approx(without_flags["loss"], rel=1e-5)
    assert with_flags["squares"] == pytest.approx(without_flags["squares"], rel=1e-5)


def test_the_convolution_flag_needs_a_jaxlib_that_knows_it():
    assert cpu_flags("0.8.2") == (SCHEDULER_FLAG,)
    assert cpu_flags("0.9.0") == cpu_flags("0.10.2") == cpu_flags("1.0.0rc1") == (SCHEDULER_FLAG, CONVOLUTION_FLAG)
    # A later jaxlib whose libraries no longer name a flag does not get it (XLA would abort on it).
    scheduler, convolution = flag_name(SCHEDULER_FLAG), flag_name(CONVOLUTION_FLAG)
    assert (scheduler, convolution) == ("xla_cpu_enable_concurrency_optimized_scheduler",
                                        "xla_cpu_experimental_ynn_fusion_type")
    assert cpu_flags("1.0.0", known_names={scheduler}) == (SCHEDULER_FLAG,)
    assert cpu_flags("1.0.0", known_names=set()) == ()
    assert cpu_flags("0.8.2", known_names={scheduler, convolution}) == (SCHEDULER_FLAG,)  # the version still counts


def test_flag_names_are_read_from_the_libraries(tmp_path):
    names = ("xla_flag_alpha", "xla_flag_beta")
    first, second, empty = tmp_path / "first.so", tmp_path / "second.so", tmp_path / "empty.so"
    first.write_bytes(b"\0" * 4096 + b"xla_flag_alpha\0")
    second.write_bytes(b"xla_flag_beta")
    empty.write_bytes(b"")
    assert names_in_libraries(names, [str(first)]) == {"xla_flag_alpha"}
    assert names_in_libraries(names, [str(empty), str(first), str(second)]) == set(names)
    assert names_in_libraries(names, [str(empty), str(tmp_path / "absent.so")]) is None  # nothing readable
    # This jaxlib's libraries name both flags wherever the version rule gives them: the check removes none here.
    libraries = jaxlib_libraries()
    assert libraries and names_in_libraries([flag_name(SCHEDULER_FLAG)], libraries) == {flag_name(SCHEDULER_FLAG)}
    assert names_in_libraries(["xla_cpu_no_such_flag_in_any_jaxlib"], libraries) == set()
    assert CPU_FLAGS == cpu_flags(importlib.metadata.version("jaxlib"))


def test_user_flags_win_and_the_switch_is_checked():
    environ = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true --xla_dump_to=/tmp/x"}
    assert apply_xla_flags(environ) == list(CPU_FLAGS[1:])
    assert environ["XLA_FLAGS"].startswith("--xla_cpu_enable_concurrency_optimized_scheduler=true --xla_dump_to=/tmp/x")
    environ = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}
    assert SCHEDULER_FLAG in apply_xla_flags(environ) and CONVOLUTION_FLAG not in environ["XLA_FLAGS"]
    environ = {}
    assert apply_xla_flags(environ) == list(CPU_FLAGS) and environ["XLA_FLAGS"] == " ".join(CPU_FLAGS)
    assert apply_xla_flags({"JAXARCH_XLA_FLAGS": "0"}) == []
    with pytest.raises(ValueError, match="JAXARCH_XLA_FLAGS is 'yes', expected '0'"):
        apply_xla_flags({"JAXARCH_XLA_FLAGS": "yes"})


def test_host_allocator_leaves_training_bitwise_identical():
    assert _train(JAXARCH_HOST_ALLOCATOR="1")["digest"] == _train(JAXARCH_HOST_ALLOCATOR="0")["digest"]


@pytest.mark.skipif(_glibc() is None, reason="the allocator settings are glibc's")
def test_host_allocator_stops_the_per_step_page_faults():
    # Without the settings every step maps its temporaries afresh and faults in each page (about 46,000 a step).
    kept, remapped = (float(_run(PAGE_FAULTS, JAXARCH_HOST_ALLOCATOR=switch)) for switch in ("1", "0"))
    assert remapped > 10_000, remapped
    assert kept < remapped / 10, (kept, remapped)


def test_host_allocator_switch_is_checked():
    assert configure_host_allocator({"JAXARCH_HOST_ALLOCATOR": "0"}) is False
    with pytest.raises(ValueError, match="JAXARCH_HOST_ALLOCATOR is 'on', expected '0'"):
        configure_host_allocator({"JAXARCH_HOST_ALLOCATOR": "on"})
