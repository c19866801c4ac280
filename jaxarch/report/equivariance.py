"""Claim 1: a convolution is translation-equivariant, a dense layer is not.

For a layer f and a circular shift S of the input, the equivariance error is ||f(Sx) - S f(x)|| / ||f(x)||
over a batch of real inputs (MNIST-1D signals, 8x8 digits). Circular padding makes a conv layer exactly
equivariant to circular shifts, so its error is float rounding; a dense layer with the same input and output
shape has no reason to commute with S.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxarch.data import load_dataset
from jaxarch.layers.conv import Conv
from jaxarch.report.context import Context
from jaxarch.report.figures import line_plot
from jaxarch.report.results import ClaimResult, Table
from jaxarch.report.verdicts import Check, at_least, at_most

FEATURES = 8  # output channels of the probed layers
CONV_ERROR_MAX = 1e-5  # float32 epsilon is 1.2e-7: a relative error below 1e-5 is rounding
DENSE_ERROR_MIN = 0.1  # a shift changes the dense layer's output by at least 10%
_DISPLAY_FLOOR = 1e-10  # exact zeros drawn here on the log-scale figure


class _DenseLike(nn.Module):
    """A dense layer with the conv's input and output shapes: [batch, *spatial, 1] -> [batch, *spatial, F]."""

    features: int

    @nn.compact
    def __call__(self, x):
        spatial = x.shape[1:-1]
        y = nn.Dense(int(np.prod(spatial)) * self.features)(x.reshape(x.shape[0], -1))
        return y.reshape((x.shape[0], *spatial, self.features))


def equivariance_errors(layer: nn.Module, inputs: np.ndarray, shifts, seed: int = 0) -> list[float]:
    """||f(S x) - S f(x)|| / ||f(x)|| for each circular shift s (by s along every spatial axis)."""
    x = jnp.asarray(inputs)
    axes = tuple(range(1, x.ndim - 1))
    variables = layer.init(jax.random.PRNGKey(seed), x)
    apply = jax.jit(layer.apply)
    reference = apply(variables, x)
    errors = []
    for shift in shifts:
        shifted_output = apply(variables, jnp.roll(x, (shift,) * len(axes), axis=axes))
        expected = jnp.roll(reference, (shift,) * len(axes), axis=axes)
        errors.append(float(jnp.linalg.norm(shifted_output - expected) / jnp.linalg.norm(reference)))
    return errors


def judge(numbers: dict) -> tuple[Check, ...]:
    """`numbers`: {"1-D" / "2-D": {"conv": [errors], "dense": [errors]}}."""
    checks = []
    for rank, errors in numbers.items():
        checks.append(at_most(f"{rank} conv layer: largest equivariance error over shifts", max(errors["conv"]),
                              CONV_ERROR_MAX))
        checks.append(at_least(f"{rank} dense layer: smallest equivariance error over shifts",
                               min(errors["dense"]), DENSE_ERROR_MIN))
    return tuple(checks)


def run(context: Context) -> ClaimResult:
    count = context.budget.probe_examples
    signals = load_dataset("mnist1d").splits["test"][0][:count]  # [N, 40, 1]
    images = load_dataset("digits").splits["test"][0][:count]  # [N, 8, 8, 1]
    probes = {"1-D": (signals, (5,), range(1, 9)), "2-D": (images, (3, 3), range(1, 5))}
    numbers, shifts_by_rank, curves = {}, {}, {}
    for rank, (inputs, kernel, shifts) in probes.items():
        shifts_by_rank[rank] = list(shifts)
        numbers[rank] = {
            "conv": equivariance_errors(Conv(FEATURES, kernel, padding="CIRCULAR"), inputs, shifts),
            "dense": equivariance_errors(_DenseLike(FEATURES), inputs, shifts),
        }
        for layer, errors in numbers[rank].items():
            curves[f"{rank} {layer}"] = (list(shifts), [max(e, _DISPLAY_FLOOR) for e in errors])
    path, figure = context.figure("equivariance.png", "Equivariance error against shift size (log scale; "
                                  f"an error of exactly 0 is drawn at {_DISPLAY_FLOOR:g}).")
    line_plot(path, curves, xlabel="shift (samples / pixels per axis)", ylabel="||f(Sx) - S f(x)|| / ||f(x)||",
              title="Shift the input: does the output shift the same way?", log_y=True)
    rows = tuple((rank, layer, min(errors), max(errors)) for rank, by_layer in numbers.items()
                 for layer, errors in by_layer.items())
    return ClaimResult(
        number=1, title="Convolutions are translation-equivariant",
        claim="Shift the input and a conv layer's output shifts the same way; a dense layer's does not.",
        method=(f"A conv layer ({FEATURES} channels, circular padding) and a dense layer with the same input and "
                f"output shapes, both at initialisation, on {count} MNIST-1D test signals (kernel 5) and {count} "
                "8x8 digits (kernel 3x3); circular shifts of 1-8 samples and 1-4 pixels per axis."),
        checks=judge(numbers),
        tables=(Table(("input", "layer", "smallest error", "largest error"), rows),),
        figures=(figure,),
        numbers={"errors": numbers, "shifts": shifts_by_rank},
    )
