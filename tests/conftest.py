"""Strict settings for the whole suite: they turn silent shape bugs into errors."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import pytest

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
