"""Claim 3: stacked convolutions build a feature hierarchy, each layer seeing a wider window of the input.

The receptive field of a conv layer is measured on the trained mnist1d-cnn (claim 2's run) as the span of input
positions with a non-zero gradient of one output unit (the middle position, all channels, summed over test
signals), and compared with the textbook recurrence r_l = r_{l-1} + (k_l - 1) j_{l-1}, j_l = j_{l-1} s_l over
the conv (kernel k, stride 1) and pooling (window = stride = p) layers in between.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxarch.report import parameter_sharing
from jaxarch.report.context import Context
from jaxarch.report.figures import new_figure, save
from jaxarch.report.results import ClaimResult, Table
from jaxarch.report.verdicts import Check, at_least, at_most


def receptive_field_formula(kernel_size: int, pool_size: int, num_layers: int) -> list[int]:
    """Receptive field of each conv layer's output in a stack of conv (stride 1) -> pool (window = stride)."""
    field, jump, fields = 1, 1, []
    for _ in range(num_layers):
        field += (kernel_size - 1) * jump
        fields.append(field)
        field += (pool_size - 1) * jump  # the pooling after this conv layer
        jump *= pool_size
    return fields


def gradient_support(model, variables, inputs: np.ndarray, layer: int) -> np.ndarray:
    """sum over signals and channels of |d conv_layer[middle position] / d input|: `[length]` per position."""

    def middle_unit(signal):  # signal: [length, channels] -> [features] of the middle output position
        _, state = model.apply(variables, signal[None], capture_intermediates=True, mutable=["intermediates"])
        (output,) = state["intermediates"][f"Conv_{layer}"]["__call__"]  # [1, positions, features]
        return output[0, output.shape[1] // 2]

    jacobians = jax.jit(jax.vmap(jax.jacrev(middle_unit)))(jnp.asarray(inputs))  # [N, features, length, channels]
    return np.asarray(jnp.sum(jnp.abs(jacobians), axis=(0, 1, 3)))


def span(magnitudes: np.ndarray) -> int:
    """Width of the interval from the first to the last position with a non-zero value."""
    nonzero = np.flatnonzero(magnitudes > 0)
    return int(nonzero[-1] - nonzero[0] + 1) if nonzero.size else 0


def judge(numbers: dict) -> tuple[Check, ...]:
    """`numbers`: {"measured": [width per layer], "formula": [width per layer]}."""
    measured, formula = numbers["measured"], numbers["formula"]
    checks = [at_most(f"conv layer {index + 1}: |measured - formula| receptive field", abs(m - f), 0,
                      unit=" positions")
              for index, (m, f) in enumerate(zip(measured, formula))]
    growth = min(b - a for a, b in zip(measured, measured[1:])) if len(measured) > 1 else float("nan")
    checks.append(at_least("smallest growth of the measured receptive field from one layer to the next", growth, 1,
                           unit=" positions"))
    return tuple(checks)


def _plot_supports(path, supports: list[np.ndarray], measured: list[int], formula: list[int]) -> None:
    figure = new_figure(7, 1.6 + 1.4 * len(supports))
    for index, support in enumerate(supports):
        axes = figure.add_subplot(len(supports), 1, index + 1)
        axes.bar(np.arange(support.size), support / max(support.max(), 1e-30), width=0.9)
        axes.set_ylabel(f"conv {index + 1}")
        axes.set_title(f"measured {measured[index]} positions, formula {formula[index]}", fontsize=9)
        axes.set_yticks([])
    axes.set_xlabel("input position")
    save(figure, path)


def _plot_filters(path, kernel: np.ndarray) -> None:
    """kernel: [width, 1, filters] -> one small plot per filter."""
    filters = kernel.shape[-1]
    columns = 8
    rows = -(-filters // columns)
    figure = new_figure(8, 1.1 * rows + 0.6)
    for index in range(filters):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.plot(kernel[:, 0, index], marker=".")
        axes.axhline(0.0, color="grey", linewidth=0.5)
        axes.set_xticks([])
        axes.set_yticks([])
    figure.suptitle("First-layer filters of the trained MNIST-1D CNN (weight against tap)")
    save(figure, path)


def run(context: Context) -> ClaimResult:
    trained = context.runs.trained(parameter_sharing.CNN_RUN)
    params = trained.variables["params"]
    cnn = trained.model
    (kernel_size,) = cnn.kernel_size
    num_layers = len(cnn.features)
    inputs = trained.dataset.splits["test"][0][:context.budget.probe_examples]
    supports = [gradient_support(trained.model, trained.variables, inputs, layer) for layer in range(num_layers)]
    measured = [span(s) for s in supports]
    formula = receptive_field_formula(kernel_size, cnn.pool_size, num_layers)

    path, support_figure = context.figure("receptive_field.png", "Gradient of the middle unit of each conv layer "
                                          "with respect to the input (normalised), summed over test signals.")
    _plot_supports(path, supports, measured, formula)
    path, filter_figure = context.figure("first_layer_filters.png", "The learned first-layer filters.")
    _plot_filters(path, np.asarray(params["Conv_0"]["kernel"]))
    rows = tuple((index + 1, m, f) for index, (m, f) in enumerate(zip(measured, formula)))
    return ClaimResult(
        number=3, title="Stacked convolutions build a feature hierarchy",
        claim="Each conv layer sees a wider window of the input than the one before, as the formula predicts.",
        method=(f"The trained mnist1d-cnn ({num_layers} conv layers, kernel {kernel_size}, max pooling "
                f"{cnn.pool_size} after each); receptive field = span of input positions with a non-zero "
                f"gradient of the middle output unit of a layer, over {len(inputs)} test signals."),
        checks=judge({"measured": measured, "formula": formula}),
        tables=(Table(("conv layer", "measured receptive field", "formula"), rows),),
        figures=(support_figure, filter_figure),
        numbers={"measured": measured, "formula": formula},
    )
