"""Strict settings for the whole suite: they turn silent shape bugs into errors. One compilation cache for the
whole run. And the library untuned, as a program that imports it gets it."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("MPLBACKEND", "Agg")
# The `jaxarch` command makes `jaxarch.tune_cpu`'s process-wide settings when it starts; tests call its `main` in
# this process and in subprocesses. Switched off here (and so in every subprocess, which inherits the variables),
# the suite runs as a program importing jaxarch does, whichever test runs first; a test of the settings turns them
# on in its own subprocess. Setting the switches to 1 runs the suite tuned.
os.environ.setdefault("JAXARCH_XLA_FLAGS", "0")
os.environ.setdefault("JAXARCH_HOST_ALLOCATOR", "0")


def _share_compilation_cache() -> None:
    """Points JAX's persistent compilation cache at a directory that lives for this run, before JAX is imported.

    Tests build the same training steps again and again (every experiment test, resume test and CLI run jits its
    own), and JAX's in-memory cache is keyed by the function object, so each one compiled anew. The persistent
    cache is keyed by the program (its HLO, the compile options, the XLA flags and the jaxlib version), so a hit
    is the very executable a fresh compile would build. On a 2-core Xeon the suite took 17 min 24 s without it
    and 14 min 32 s with it (one run each). The pytest-xdist workers and the subprocesses tests start inherit the
    variable and share the directory; the process that made it removes it at exit. A cache the caller set up is
    left as it is.
    Tests asserting that nothing compiles still see a hit: JAX's backend-compile event times the cache lookup too.
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    directory = tempfile.mkdtemp(prefix="jaxarch-tests-xla-cache-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
    # The default (1 s) would leave out most training and evaluation steps (0.7 s on average in the quick
    # report's runs); 0.5 s takes them in and leaves out the many tiny programs of eager operations.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


_share_compilation_cache()

import jax  # noqa: E402  (after the cache's environment variables, which JAX reads when imported)
import pytest  # noqa: E402

# An accidental [B] + [B, 1] broadcast is the classic silent bug in loss code; make it an error.
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
