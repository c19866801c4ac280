"""Claim 4: pooling makes a representation (approximately) invariant to small translations.

The trained first conv layer of mnist1d-cnn (claim 2's run) with its ReLU gives feature maps of MNIST-1D test
signals; the representation is those maps as they are, after local max pooling, or after global pooling. For a
circular shift S of the input by s samples, the change is ||r(Sx) - r(x)|| / ||r(x)||, averaged over signals.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxarch.layers.conv import Conv
from jaxarch.layers.pooling import global_avg_pool, global_max_pool, max_pool
from jaxarch.report import parameter_sharing
from jaxarch.report.context import Context
from jaxarch.report.figures import line_plot
from jaxarch.report.results import ClaimResult, Table
from jaxarch.report.verdicts import Check, at_most

SHIFTS = tuple(range(0, 9))
NO_POOLING = "no pooling"
GLOBAL = "global average pool"
LOCAL_WINDOWS = (2, 4)  # 2: the pooling the CNN itself uses
READOUTS: dict[str, Callable] = {
    NO_POOLING: lambda maps: maps,
    **{f"max pool {w}": (lambda maps, w=w: max_pool(maps, w)) for w in LOCAL_WINDOWS},
    GLOBAL: global_avg_pool,
    "global max pool": global_max_pool,
}
# Change left relative to no pooling: local pooling must remove a quarter of it for the shifts it can absorb
# (smaller than its window), global pooling three quarters for every shift.
LOCAL_RATIO_MAX, LOCAL_RATIO_FAIL = 0.75, 1.0
GLOBAL_RATIO_MAX, GLOBAL_RATIO_FAIL = 0.25, 0.5


def representation_changes(feature_maps: Callable, readout: Callable, inputs: np.ndarray, shifts) -> list[float]:
    """Mean over signals of ||r(S_s x) - r(x)|| / ||r(x)|| for each shift s, r = readout(feature_maps(x))."""
    x = jnp.asarray(inputs)
    represent = jax.jit(lambda x: readout(feature_maps(x)).reshape(x.shape[0], -1))
    reference = represent(x)
    norms = jnp.linalg.norm(reference, axis=-1)
    return [float(jnp.mean(jnp.linalg.norm(represent(jnp.roll(x, s, axis=1)) - reference, axis=-1) / norms))
            for s in shifts]


def relative_change(changes: dict[str, list[float]], readout: str, shifts) -> float:
    """Summed change of `readout` over `shifts`, relative to the same sum without pooling."""
    total = lambda name: sum(changes[name][SHIFTS.index(s)] for s in shifts)
    return total(readout) / total(NO_POOLING)


def judge(numbers: dict) -> tuple[Check, ...]:
    """`numbers["changes"]`: {readout: [change per shift in SHIFTS]}."""
    changes = numbers["changes"]
    checks = [at_most(f"max pool {w}: change under shifts smaller than its window relative to no pooling",
                      relative_change(changes, f"max pool {w}", range(1, w)), LOCAL_RATIO_MAX, LOCAL_RATIO_FAIL)
              for w in LOCAL_WINDOWS]
    checks.append(at_most(f"{GLOBAL}: change under shifts {SHIFTS[1]}-{SHIFTS[-1]} relative to no pooling",
                          relative_change(changes, GLOBAL, SHIFTS[1:]), GLOBAL_RATIO_MAX, GLOBAL_RATIO_FAIL))
    return tuple(checks)


def run(context: Context) -> ClaimResult:
    trained = context.runs.trained(parameter_sharing.CNN_RUN)
    conv_params = trained.variables["params"]["Conv_0"]
    kernel = conv_params["kernel"]  # [width, channels, features]
    conv = Conv(kernel.shape[-1], kernel.shape[:-2])
    feature_maps = lambda x: jax.nn.relu(conv.apply({"params": conv_params}, x))
    inputs = trained.dataset.splits["test"][0][:context.budget.probe_examples]
    changes = {name: representation_changes(feature_maps, readout, inputs, SHIFTS)
               for name, readout in READOUTS.items()}

    path, figure = context.figure("pooling_invariance.png", "Relative change of the representation against the "
                                  "size of a circular input shift, with and without pooling.")
    line_plot(path, {name: (SHIFTS, values) for name, values in changes.items()}, xlabel="shift (samples)",
              ylabel="||r(Sx) - r(x)|| / ||r(x)||", title="First conv layer of the trained CNN, MNIST-1D test signals")
    rows = tuple((name, *values[1:]) for name, values in changes.items())
    return ClaimResult(
        number=4, title="Pooling gives translation invariance",
        claim="Small shifts of the input change a pooled representation less; global pooling hardly at all.",
        method=(f"ReLU feature maps of the trained mnist1d-cnn's first conv layer on {len(inputs)} test signals, "
                "read out as they are, after max pooling (window = stride = 2 or 4) or after global average / max "
                f"pooling; circular input shifts of {SHIFTS[1]}-{SHIFTS[-1]} samples."),
        checks=judge({"changes": changes}),
        tables=(Table(("representation", *(f"shift {s}" for s in SHIFTS[1:])), rows),),
        figures=(figure,),
        numbers={"shifts": list(SHIFTS), "changes": changes},
    )
