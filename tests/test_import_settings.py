"""Importing jaxarch changes nothing outside it; `jaxarch.tune_cpu` (which the `jaxarch` command makes at start-up)
changes how fast a training step runs, never what it computes beyond float rounding.

Each process-level check runs a fresh interpreter: the settings are made once, before JAX starts its backends.
"""

import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import pytest

import jaxarch
from jaxarch import tuning
from jaxarch.host_allocator import HUGE_PAGES_TUNABLE, glibc
from jaxarch.xla_flags import (CHECKED, CONVOLUTION_FLAG, EXPERIMENTAL, SCHEDULER_FLAG, add_xla_flags, cpu_flags,
                               flag_name, installed_cpu_flags, release)

SWITCHES = ("XLA_FLAGS", "JAXARCH_XLA_FLAGS", "JAXARCH_HOST_ALLOCATOR", "GLIBC_TUNABLES")
GLIBC = glibc() is not None

# Imports jaxarch the way the settings say (`how`: "import" alone, "cli": the `jaxarch` command's `main`,
# "tune_cpu": with `arguments`), then a few Adam steps of the reference CNN's layers (smaller batch). Prints, as
# JSON: which environment variables changed from before `import jaxarch` to the end (after the third-party
# imports: JAX itself sets some), XLA_FLAGS, whether glibc served a 64 MiB block with a fresh mapping (its default;
# not under jaxarch's settings) before and after, a digest of the final parameters and loss, the loss, the
# parameters' sum of squares, and whether YNNPACK ran XLA's convolutions.
TRAIN = """
import ctypes, ctypes.util, hashlib, json, os, sys
import flax, jax, jax.numpy as jnp, numpy as np, optax

settings = json.loads(sys.argv[1])


def large_block_is_mapped():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):  # not glibc (2.33 or later)
        return None

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                          "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    mapped = libc.mallinfo2().hblks  # blocks glibc holds as their own mappings
    block = libc.malloc(64 << 20)
    mapped = libc.mallinfo2().hblks - mapped
    libc.free(block)
    return mapped == 1


environ, mapped_before = dict(os.environ), large_block_is_mapped()
import jaxarch

if settings["how"] == "cli":
    from jaxarch.cli import main
    assert main(["list"]) == 0
elif settings["how"] == "tune_cpu":
    jaxarch.tune_cpu(**settings["arguments"])

from jaxarch.layers.conv_lowering import ynnpack_runs_convolutions
from jaxarch.models import CNN

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
print(json.dumps(dict(
    environ_changed=sorted(key for key in set(environ) | set(os.environ) if environ.get(key) != os.environ.get(key)),
    xla_flags=os.environ.get("XLA_FLAGS", ""), mapped_before=mapped_before, mapped_after=large_block_is_mapped(),
    digest=digest.hexdigest(), loss=float(loss),
    squares=sum(float(jnp.sum(leaf.astype(jnp.float64) ** 2)) for leaf in jax.tree.leaves(params)),
    ynnpack=ynnpack_runs_convolutions())))
"""


@functools.cache
def _train(how: str = "import", arguments: str = "{}", **environ: str) -> dict:
    """TRAIN's result in a fresh interpreter, with `environ` (e.g. the switches) over this process's environment
    less XLA_FLAGS and the switches (the suite's own setting, see conftest.py)."""
    environment = {key: value for key, value in os.environ.items() if key not in SWITCHES}
    environment.update(environ)
    settings = json.dumps({"how": how, "arguments": json.loads(arguments)})
    output = subprocess.run([sys.executable, "-c", TRAIN, settings], env=environment, check=True, capture_output=True,
                            text=True, timeout=300).stdout
    return json.loads(output.strip().splitlines()[-1])


def test_importing_jaxarch_changes_nothing_outside_it():
    result = _train()
    assert result["environ_changed"] == [] and result["xla_flags"] == ""
    if GLIBC:
        # glibc's default: a block this large gets its own mapping, before and after jaxarch built and trained.
        assert result["mapped_before"] is True and result["mapped_after"] is True


def test_the_command_line_tunes_its_process():
    tuned = _train("cli")
    assert tuned["xla_flags"] == " ".join(installed_cpu_flags()) and tuned["xla_flags"]
    assert set(tuned["environ_changed"]) <= {"XLA_FLAGS", "MPLBACKEND"}
    if GLIBC:
        assert tuned["mapped_before"] is True and tuned["mapped_after"] is False
    switched_off = _train("cli", JAXARCH_XLA_FLAGS="0", JAXARCH_HOST_ALLOCATOR="0")
    assert switched_off["xla_flags"] == "" and switched_off["mapped_after"] is not False
    # The digest covers the loss: the command line's settings changed the training at most by float rounding.
    untuned = _train()
    assert switched_off["digest"] == untuned["digest"]
    assert tuned["loss"] == pytest.approx(untuned["loss"], rel=1e-5)
    assert tuned["squares"] == pytest.approx(untuned["squares"], rel=1e-5)


@pytest.mark.skipif(not GLIBC, reason="glibc's tunable")
def test_huge_pages_for_the_heap_leave_training_bitwise_identical():
    # What the `jaxarch` command starts with (jaxarch/host_allocator.py): where the memory lies, not what is computed.
    huge = _train("tune_cpu", GLIBC_TUNABLES=HUGE_PAGES_TUNABLE)
    assert huge["digest"] == _train("tune_cpu")["digest"]


def test_the_scheduler_flag_leaves_training_bitwise_identical():
    scheduled = _train(XLA_FLAGS=SCHEDULER_FLAG)
    assert scheduled["xla_flags"] == SCHEDULER_FLAG and scheduled["environ_changed"] == []
    assert scheduled["digest"] == _train()["digest"]


def test_host_allocator_leaves_training_bitwise_identical():
    kept = _train("tune_cpu", json.dumps({"xla_flags": False, "host_allocator": True}))
    assert kept["xla_flags"] == ""
    if GLIBC:
        assert kept["mapped_after"] is False
    assert kept["digest"] == _train()["digest"]


@pytest.mark.slow  # which kernel XLA picks: a fact about the installed jaxlib, not about jaxarch
@pytest.mark.skipif(release(importlib.metadata.version("jaxlib")) < (0, 10, 1) or CONVOLUTION_FLAG not in
                    installed_cpu_flags(), reason="YNNPACK runs convolutions by default from jaxlib 0.10.1")
def test_the_convolution_flag_moves_convolutions_off_ynnpack():
    assert _train()["ynnpack"] and not _train("cli")["ynnpack"]


@pytest.mark.slow  # a measurement of the kernel's page faults, see benchmarks/page_faults.py
@pytest.mark.skipif(not GLIBC, reason="the allocator settings are glibc's")
def test_host_allocator_stops_the_per_step_page_faults():
    from jaxarch.benchmarks.page_faults import minor_page_faults_per_step

    (took, kept), (_, remapped) = minor_page_faults_per_step(True), minor_page_faults_per_step(False)
    assert took and remapped > 10_000, remapped
    assert kept < remapped / 10, (kept, remapped)


def test_flags_follow_the_checked_jaxlib_versions():
    both = (SCHEDULER_FLAG, CONVOLUTION_FLAG)
    assert cpu_flags("0.4.35") == cpu_flags("0.8.0") == (SCHEDULER_FLAG,)  # the convolution flag aborts these
    assert cpu_flags("0.8.2") == cpu_flags("0.9.1") == cpu_flags("0.9.0.1") == cpu_flags("0.10.2") == both
    # Newer than any checked: the long-standing flag, not the experimental one (a later XLA may drop it).
    assert cpu_flags("0.10.3") == cpu_flags("1.0.0rc1") == cpu_flags("0.11.0.dev20270101") == (SCHEDULER_FLAG,)
    assert cpu_flags("0.4.34") == ()  # older than any checked
    for flag, versions in CHECKED.items():
        assert all(flag in cpu_flags(version) for version in versions)
    assert EXPERIMENTAL == {CONVOLUTION_FLAG}
    assert installed_cpu_flags() == cpu_flags(importlib.metadata.version("jaxlib"))
    assert (flag_name(SCHEDULER_FLAG), flag_name(CONVOLUTION_FLAG)) == (
        "xla_cpu_enable_concurrency_optimized_scheduler", "xla_cpu_experimental_ynn_fusion_type")
    assert release("0.9.0.1") == (0, 9, 0) and release("1.0") == (1, 0, 0)
    with pytest.raises(ValueError, match="jaxlib version is 'unknown', expected numbers"):
        release("unknown")


def test_flags_the_user_set_win():
    both = (SCHEDULER_FLAG, CONVOLUTION_FLAG)
    environ = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true --xla_dump_to=/tmp/x"}
    assert add_xla_flags(both, environ) == [CONVOLUTION_FLAG]
    assert environ["XLA_FLAGS"] == ("--xla_cpu_enable_concurrency_optimized_scheduler=true --xla_dump_to=/tmp/x "
                                    + CONVOLUTION_FLAG)
    environ = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}
    assert add_xla_flags(both, environ) == [SCHEDULER_FLAG] and CONVOLUTION_FLAG not in environ["XLA_FLAGS"]
    environ = {}
    assert add_xla_flags(both, environ) == list(both) and environ["XLA_FLAGS"] == " ".join(both)
    assert add_xla_flags(both, environ) == []  # a second call adds nothing


def test_tune_cpu_after_the_backends_started_changes_nothing_and_warns(monkeypatch):
    jax.block_until_ready(jnp.ones(3) + 1)  # this process's backends have started
    assert tuning.jax_backends_started()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAXARCH_XLA_FLAGS", "1")
    monkeypatch.setenv("JAXARCH_HOST_ALLOCATOR", "1")
    configured = []
    monkeypatch.setattr(tuning, "configure_host_allocator", lambda: configured.append(True) or True)
    with pytest.warns(RuntimeWarning, match="JAX's backends have started, so it changed nothing"):
        result = jaxarch.tune_cpu()
    assert result == jaxarch.CpuTuning(xla_flags=(), host_allocator=False, too_late=True)
    assert "XLA_FLAGS" not in os.environ and configured == []
    # Both parts switched off: nothing to make, nothing to warn about.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not jaxarch.tune_cpu(xla_flags=False, host_allocator=False).too_late


def test_tune_cpu_makes_what_it_reports(monkeypatch):
    # As if in a fresh process: the flags go into XLA_FLAGS, the allocator is configured. (This process's backends
    # start first, so that XLA never reads the variable set here.)
    jax.block_until_ready(jnp.ones(3) + 1)
    monkeypatch.setattr(tuning, "jax_backends_started", lambda: False)
    monkeypatch.setattr(tuning, "configure_host_allocator", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    monkeypatch.delenv("JAXARCH_XLA_FLAGS", raising=False)
    monkeypatch.delenv("JAXARCH_HOST_ALLOCATOR", raising=False)
    result = jaxarch.tune_cpu()
    assert result == jaxarch.CpuTuning(xla_flags=installed_cpu_flags(), host_allocator=True, too_late=False)
    assert os.environ["XLA_FLAGS"] == " ".join(("--xla_dump_to=/tmp/x",) + installed_cpu_flags())
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAXARCH_XLA_FLAGS", "0")
    assert jaxarch.tune_cpu() == jaxarch.CpuTuning(xla_flags=(), host_allocator=True, too_late=False)
    assert jaxarch.tune_cpu(xla_flags=True, host_allocator=False).xla_flags == installed_cpu_flags()


@pytest.mark.parametrize("name,value", [("JAXARCH_XLA_FLAGS", "yes"), ("JAXARCH_HOST_ALLOCATOR", "on")])
def test_tune_cpu_checks_its_switches(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"jaxarch.tune_cpu: {name} is '{value}', expected '0'"):
        jaxarch.tune_cpu()
