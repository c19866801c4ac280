"""Claim 5: a vanilla RNN's gradient vanishes going back in time; the gates of the LSTM and GRU keep it alive.

Two measurements. (a) ||dLoss/dh_t|| at every step t of the adding problem (`hidden_state_grad_norms`), at
initialisation and after training, summarised by the share that reaches the first step, n_0 / n_{T-1}.
(b) Test MSE on the adding problem against its length T for the RNN, LSTM, GRU and a Transformer encoder,
all trained with the same steps; always predicting 1 scores 1/6.
"""

from __future__ import annotations

import numpy as np

from jaxarch.data.synthetic import ADDING_BASELINE_MSE
from jaxarch.diagnostics import plot_hidden_state_grad_norms
from jaxarch.report.context import Context
from jaxarch.report.figures import line_plot
from jaxarch.report.results import ClaimResult, Table
from jaxarch.report.runs import seed_values
from jaxarch.report.verdicts import Check, at_least, at_most, per_seed, ratio
from jaxarch.vanishing import CELLS, adding_gradient_norms

MODELS = (*CELLS, "transformer")
GATED = ("lstm", "gru")
# The recurrent models of this claim (and claim 6): one layer of 64 units; the step size suits that width.
RECURRENT_OVERRIDES = ("model.hidden_sizes=(64,)", "train.batch_size=32", "optim.learning_rate=5e-3")
SOLVED = 0.1 * ADDING_BASELINE_MSE  # a tenth of the predict-1 error
# Judged after training: the claim is that gates can learn to keep the gradient, not that they start out so
# (a GRU's update gate starts half open, so its gradient at initialisation can decay as fast as an RNN's).
RNN_SHARE_MAX, RNN_SHARE_FAIL = 1e-3, 1e-1  # share of dLoss/dh_{T-1} still present at h_0
GATE_GAIN_MIN, GATE_GAIN_FAIL = 100.0, 1.0  # gated share of gradient at step 0 over the RNN's
RNN_GAP_MIN, RNN_GAP_FAIL = 10.0, 2.0  # RNN test MSE over the best gated cell's where a gated cell solves it


def adding_run(model: str, seq_len: int, context: Context) -> tuple[str, str, tuple[str, ...]]:
    """(label, experiment, overrides) of one model on the adding problem at length `seq_len`."""
    budget = context.budget
    common = (f"data.seq_len={seq_len}", f"data.test_size={budget.test_size}", f"train.steps={budget.adding_steps}")
    extra = RECURRENT_OVERRIDES if model in CELLS else ()
    if model == "lstm":
        extra = (*extra, "model.chrono_max=0")  # the textbook LSTM (forget bias 1), not adding-lstm's chrono gates
    return f"adding-{model}-T{seq_len}", f"adding-{model}", (*common, *extra)


def first_step_share(norms: np.ndarray) -> float:
    """How much of the gradient reaching the last hidden state also reaches the first: n_0 / n_{T-1}."""
    return ratio(norms[0], norms[-1])


def judge(numbers: dict) -> tuple[Check, ...]:
    """`numbers`: {"first_step_share": {"init" / "trained": {cell: share}}, "lengths": [T],
    "test_mse": {model: [MSE per T]}}; over several seeds also "seeds": {"test_mse": {model: [[MSE per seed]
    per T]}}, by which the RNN's gap to the gated cells is judged (the gradient shares are seed 0's runs')."""
    trained = numbers["first_step_share"]["trained"]
    checks = [at_most("trained RNN: share of the gradient that reaches step 0", trained["rnn"],
                      RNN_SHARE_MAX, RNN_SHARE_FAIL)]
    checks += [at_least(f"trained {cell.upper()}: share of gradient at step 0 over the trained RNN's",
                        ratio(trained[cell], trained["rnn"]), GATE_GAIN_MIN, GATE_GAIN_FAIL, unit="x")
               for cell in GATED]
    mse = {model: np.asarray(values, dtype=np.float64) for model, values in numbers["test_mse"].items()}
    gated = np.minimum(*(mse[cell] for cell in GATED))
    solved = np.flatnonzero(gated <= SOLVED)
    checks.append(at_least(f"a gated cell solves the adding problem (MSE <= {SOLVED:.3g}) at some T",
                           len(solved), 1, unit=" lengths", precondition=True))
    longest = solved[-1] if solved.size else len(gated) - 1
    seeds = numbers.get("seeds", {}).get("test_mse")
    if seeds is None:
        gap = ratio(mse["rnn"][longest], gated[longest])
    else:  # seed by seed: the RNN's MSE over the better of the two gated cells of the same seed
        gap = per_seed(lambda rnn, *cells: ratio(rnn, min(cells)), *(seeds[m][longest] for m in ("rnn", *GATED)))
    checks.append(at_least(f"RNN test MSE over the best gated cell's at T = {numbers['lengths'][longest]}, the "
                           "longest T a gated cell solves (else the longest T)", gap, RNN_GAP_MIN, RNN_GAP_FAIL,
                           unit="x"))
    return tuple(checks)


def run(context: Context) -> ClaimResult:
    budget = context.budget
    lengths = list(budget.adding_lengths)
    mse = {model: [] for model in MODELS}
    mse_seeds = {model: [] for model in MODELS}
    for seq_len in lengths:
        for model in MODELS:
            result = context.runs.train(*adding_run(model, seq_len, context))
            mse[model].append(result["test_loss"])
            mse_seeds[model].append(seed_values(result, "test_loss"))

    norms, shares = {"init": {}, "trained": {}}, {"init": {}, "trained": {}}
    for cell in CELLS:
        trained = context.runs.trained(adding_run(cell, budget.gradient_length, context)[0])
        for stage, variables in (("init", trained.initial_variables()), ("trained", trained.variables)):
            norms[stage][cell] = adding_gradient_norms(trained.model, variables, budget.gradient_length)
            shares[stage][cell] = first_step_share(norms[stage][cell])

    figures = []
    for stage, title in (("init", "at initialisation"), ("trained", f"after {budget.adding_steps} steps")):
        path, figure = context.figure(f"gradient_norms_{stage}.png", f"||dLoss/dh_t|| over t, adding problem "
                                      f"T = {budget.gradient_length}, {title}.")
        plot_hidden_state_grad_norms({cell.upper(): n for cell, n in norms[stage].items()}, path,
                                     title=f"Adding problem, T = {budget.gradient_length}, {title}")
        figures.append(figure)
    path, figure = context.figure("adding_mse.png", "Adding problem: test MSE against sequence length.")
    line_plot(path, {model.upper() if model in CELLS else "Transformer": (lengths, values)
                     for model, values in mse.items()}, xlabel="sequence length T", ylabel="test MSE",
              title=f"Adding problem after {budget.adding_steps} training steps", log_x=True, log_y=True,
              reference=(ADDING_BASELINE_MSE, "predict 1 (1/6)"))
    figures.append(figure)

    numbers = {"lengths": lengths, "test_mse": mse, "first_step_share": shares}
    if context.runs.seeds > 1:
        numbers["seeds"] = {"test_mse": mse_seeds}
    return ClaimResult(
        number=5, title="Vanilla RNNs suffer vanishing gradients; LSTM and GRU gates fix it",
        claim=("The gradient reaching an RNN's early hidden states shrinks geometrically with distance, so it cannot "
               "learn long-range dependencies; gated cells keep the gradient and learn them."),
        method=(f"adding-rnn, adding-lstm, adding-gru ({' '.join(RECURRENT_OVERRIDES)}) and adding-transformer, "
                f"each trained for {budget.adding_steps} steps at T = {', '.join(map(str, lengths))}; "
                f"||dLoss/dh_t|| on one batch of 64 at T = {budget.gradient_length} at step 0 and after "
                f"training (the shares are judged after training; the curves at step 0 are for reference). Test MSE "
                f"on {budget.test_size} fixed sequences."),
        checks=judge(numbers),
        tables=(Table(("T", *(m.upper() if m in CELLS else "Transformer" for m in MODELS)),
                      tuple((t, *(mse[m][i] for m in MODELS)) for i, t in enumerate(lengths)),
                      "Test MSE (predict-1 baseline 0.1667)."),
                Table(("cell", "share of gradient at step 0, init", "after training"),
                      tuple((cell.upper(), shares["init"][cell], shares["trained"][cell]) for cell in CELLS))),
        figures=tuple(figures),
        numbers=numbers,
        notes="A share of 0 is a gradient that underflowed float32: nothing of it reaches step 0.",
    )
