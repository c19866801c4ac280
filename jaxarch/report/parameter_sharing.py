"""Claim 2: parameter sharing makes CNNs efficient on spatial data, and the advantage needs spatial order.

The mnist1d-cnn and mnist1d-mlp experiments are trained on MNIST-1D and on shuffled MNIST-1D (one fixed
permutation of the time axis). Published (Greydanus 2020): CNN 94% -> 56% when shuffled, MLP 68% either way.
"""

from __future__ import annotations

import numpy as np

from jaxarch.report.context import Context
from jaxarch.report.figures import new_figure, save
from jaxarch.report.results import ClaimResult, Table
from jaxarch.report.runs import seed_values
from jaxarch.report.verdicts import Check, at_least, at_most, per_seed

PUBLISHED = {"cnn": (94.0, 56.0), "mlp": (68.0, 68.0)}  # test accuracy %, (ordered, shuffled)
RUNS = {  # label -> (experiment, extra overrides)
    "cnn": ("mnist1d-cnn", ()),
    "cnn-shuffled": ("mnist1d-cnn-shuffled", ()),
    "mlp": ("mnist1d-mlp", ()),
    "mlp-shuffled": ("mnist1d-mlp", ("data.shuffle_seq=True",)),
}
CNN_RUN = "mnist1d-cnn"  # the run label claims 3 and 4 reuse


def run_label(name: str) -> str:
    return f"mnist1d-{name}"


def train_all(context: Context) -> dict[str, dict]:
    steps = f"train.steps={context.budget.mnist1d_steps}"
    return {name: context.runs.train(run_label(name), experiment, (steps, *extra))
            for name, (experiment, extra) in RUNS.items()}


def judge(numbers: dict) -> tuple[Check, ...]:
    """`numbers["accuracy"]`: test accuracy in % for "cnn", "cnn-shuffled", "mlp", "mlp-shuffled";
    `numbers["seeds"]["accuracy"]` (over several seeds): the same, seed by seed, judged instead of the means."""
    acc = numbers.get("seeds", {}).get("accuracy", numbers["accuracy"])

    def difference(a, b):
        return a - b

    return (
        at_least("MLP test accuracy on MNIST-1D: the models trained far enough to compare (published 68%)",
                 acc["mlp"], 50.0, unit="%", precondition=True),
        at_least("CNN minus MLP test accuracy on MNIST-1D (published +26 points)",
                 per_seed(difference, acc["cnn"], acc["mlp"]), 10.0, 0.0, unit=" points"),
        at_most("CNN minus MLP test accuracy on shuffled MNIST-1D: the advantage vanishes (published -12 points)",
                per_seed(difference, acc["cnn-shuffled"], acc["mlp-shuffled"]), 5.0, 10.0, unit=" points"),
        at_most("MLP accuracy change when shuffled (its dense layer has no notion of order)",
                per_seed(lambda a, b: abs(a - b), acc["mlp-shuffled"], acc["mlp"]), 3.0, 6.0, unit=" points"),
    )


def _layer_parameter_rows(params: dict, length: int, pool_size: int) -> tuple[tuple, ...]:
    """Per conv layer of the trained CNN: its parameters beside a dense layer mapping the same activations."""
    rows = []
    for index in range(len([k for k in params if k.startswith("Conv_")])):
        kernel = np.shape(params[f"Conv_{index}"]["kernel"])  # [k, in, out]
        conv = int(np.prod(kernel)) + kernel[-1]
        dense = (length * kernel[-2] + 1) * length * kernel[-1]
        rows.append((f"conv {index + 1} ({length} positions, {kernel[-2]} -> {kernel[-1]} channels)", conv, dense,
                     dense / conv))
        length //= pool_size
    return tuple(rows)


def run(context: Context) -> ClaimResult:
    results = train_all(context)
    accuracy = {name: 100 * result["test_accuracy"] for name, result in results.items()}
    params = {name: result["params"] for name, result in results.items()}
    numbers = {"accuracy": accuracy, "params": params}
    if context.runs.seeds > 1:
        numbers["seeds"] = {"accuracy": {name: seed_values(result, "test_accuracy", 100)
                                         for name, result in results.items()}}
    trained = context.runs.trained(CNN_RUN)
    layer_rows = _layer_parameter_rows(trained.variables["params"], trained.dataset.input_shape[0],
                                       trained.model.pool_size)

    path, figure = context.figure("parameter_sharing.png", "Test accuracy on MNIST-1D, ordered and shuffled, "
                                  "measured beside the published numbers.")
    plot = new_figure(7, 4)
    axes = plot.add_subplot()
    positions = np.arange(2)
    for offset, (model, label) in enumerate((("cnn", "CNN"), ("mlp", "MLP"))):
        measured = [accuracy[model], accuracy[f"{model}-shuffled"]]
        axes.bar(positions + 0.2 * (2 * offset - 1), measured, width=0.4, label=f"{label} (measured)")
        axes.scatter(positions + 0.2 * (2 * offset - 1), PUBLISHED[model], color="black", marker="_", s=400,
                     zorder=3, label="published" if offset else None)
    axes.set_xticks(positions, ["MNIST-1D", "shuffled MNIST-1D"])
    axes.set_ylabel("test accuracy (%)")
    axes.set_ylim(0, 100)
    axes.legend()
    save(plot, path)

    rows = tuple((label, params[name], accuracy[name], accuracy[f"{name}-shuffled"], *PUBLISHED[name])
                 for name, label in (("cnn", "CNN"), ("mlp", "MLP")))
    steps = context.budget.mnist1d_steps
    return ClaimResult(
        number=2, title="Parameter sharing makes CNNs efficient on spatial data",
        claim=("A CNN beats an MLP on MNIST-1D, and the advantage comes from spatial order: shuffle the time axis "
               "and it vanishes, while the MLP does not care."),
        method=(f"mnist1d-cnn and mnist1d-mlp trained for {steps} steps each on MNIST-1D and on shuffled MNIST-1D "
                "(mnist1d-cnn-shuffled; mnist1d-mlp with data.shuffle_seq=True); test accuracy on the 1000 "
                "test signals."),
        checks=judge(numbers),
        tables=(Table(("model", "params", "MNIST-1D %", "shuffled %", "published %", "published shuffled %"), rows),
                Table(("layer", "conv params", "dense params for the same maps", "ratio"), layer_rows,
                      "Weight sharing: each trained conv layer beside a dense layer connecting the same "
                      "activation maps.")),
        figures=(figure,),
        numbers=numbers,
    )
