"""The version shims of jaxarch.compat on both sides of each JAX change they bridge, and the declared lower
bounds of pyproject.toml kept equal to the pinned minimum versions that CI tests."""

import json
import re
import tomllib
from contextlib import nullcontext
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType

from jaxarch import compat, experiments
from jaxarch.train import train_and_evaluate
from jaxarch.train.configure import override_config
from jaxarch.train.mesh import make_mesh

REPO = Path(__file__).resolve().parents[1]
MINIMUM_VERSIONS = REPO / ".ci" / "minimum-versions.txt"


def test_the_training_mesh_has_auto_axes_whatever_make_mesh_defaults_to():
    mesh = make_mesh("data:1")
    assert dict(mesh.shape) == {"data": 1, "model": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 2


def test_make_auto_mesh_asks_for_auto_axes(monkeypatch):
    """A JAX whose `make_mesh` defaults to explicit axes (0.10 does) still gets an auto mesh."""
    calls = []
    real = jax.make_mesh

    def explicit_by_default(shape, names, axis_types=None, **kwargs):
        calls.append(axis_types)
        types = (AxisType.Explicit,) * len(names) if axis_types is None else axis_types
        return real(shape, names, axis_types=types, **kwargs)

    monkeypatch.setattr(jax, "make_mesh", explicit_by_default)
    mesh = compat.make_auto_mesh((1, 1), ("data", "model"), jax.devices()[:1])
    assert calls == [(AxisType.Auto,) * 2]
    assert mesh.axis_types == (AxisType.Auto,) * 2


def test_enable_x64_switches_64_bit_types_on_and_back_off():
    with compat.enable_x64():
        assert jnp.zeros(2).dtype == jnp.float64  # the default float type follows the switch
    assert jnp.zeros(2).dtype == jnp.float32


def test_enable_x64_uses_jax_experimental_where_jax_has_no_enable_x64(monkeypatch):
    """JAX before 0.8 has only `jax.experimental.enable_x64`."""
    import jax.experimental

    calls = []
    monkeypatch.delattr(jax, "enable_x64", raising=False)
    monkeypatch.setattr(jax.experimental, "enable_x64", lambda enabled: calls.append(enabled) or nullcontext(),
                        raising=False)
    with compat.enable_x64(False):
        pass
    assert calls == [False]


def test_concrete_or_none_is_the_value_outside_transforms_and_none_inside():
    np.testing.assert_array_equal(compat.concrete_or_none(jnp.arange(3)), [0, 1, 2])
    assert compat.concrete_or_none(7) == 7
    seen = []

    def record(x):
        seen.append(compat.concrete_or_none(x))
        return x * 2

    jax.jit(record)(jnp.ones(2))
    jax.vmap(record)(jnp.ones(2))
    jax.grad(lambda x: record(x).sum())(jnp.ones(2))
    assert seen == [None, None, None]


def test_concrete_or_none_needs_no_jax_core_tracer(monkeypatch):
    """The shim uses only `jax.errors`, so it keeps working where `jax.core.Tracer` is gone."""
    monkeypatch.delattr(jax.core, "Tracer", raising=False)
    assert compat.concrete_or_none(jnp.int32(3)) == 3
    assert jax.jit(lambda x: jnp.asarray(compat.concrete_or_none(x) is None))(1.0)


# ---- the recurrent family end to end -----------------------------------------------------------------------------
# The minimum-versions subset trains one tiny run per model family; tests/test_train.py has the convolutional and
# dense ones, tests/test_transformer_models.py the attention ones, and this is the recurrent one (nn.scan, the
# cells' custom kernels, optax and orbax together).


def test_a_recurrent_experiment_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path / "cache"))
    config = override_config(experiments.get_config("mnist1d-gru"), [
        "model.hidden_sizes=(32,)", "optim.learning_rate=1e-2", "optim.schedule=constant", "optim.warmup_steps=3", "train.steps=60",
        "train.batch_size=64", "train.log_every=10", "train.eval_every=0", "train.checkpoint_every=0"])
    result = train_and_evaluate(config, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 6
    assert losses[-1] < 0.85 * losses[0], losses  # At least 15% below the first 10 steps' mean.
    assert result["test_accuracy"] > 0.2  # Chance is 0.1.
    assert (tmp_path / "run" / "checkpoints" / "60").is_dir()


# ---- declared bounds ---------------------------------------------------------------------------------------------


def _lower_bounds() -> dict[str, str]:
    """`{name: version}` of every `name>=version` in pyproject's dependencies and dev extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bounds = {}
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)(,<[^;\s]+)?", requirement.strip())
        assert match, f"pyproject requirement {requirement!r} has no '>=' lower bound"
        bounds[match[1].lower().replace("_", "-")] = match[2]
    return bounds


def _pins() -> dict[str, str]:
    pins = {}
    for line in MINIMUM_VERSIONS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_every_lower_bound_is_the_pinned_minimum_that_ci_tests():
    """A bound raised in pyproject.toml without the pin (or the reverse) would test versions nobody declared."""
    bounds, pins = _lower_bounds(), _pins()
    assert sorted(bounds) == sorted(pins)
    # A pin may carry a post-release suffix the bound leaves out (mnist1d 0.0.2 exists only as 0.0.2.post1).
    differ = {name: (bounds[name], pins[name]) for name in bounds
              if pins[name] != bounds[name] and not pins[name].startswith(bounds[name] + ".post")}
    assert differ == {}
