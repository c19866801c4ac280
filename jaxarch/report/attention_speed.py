"""Claim 6: attention processes a sequence in parallel, so a Transformer trains faster than an LSTM.

The train step of claim 5's LSTM (one layer of 64) and Transformer encoder (one block of width 32) is timed on
the adding problem at several lengths on the device the report runs on: the LSTM's T steps run one after
another, the Transformer's attention handles all T positions in one batched product (whose cost grows as T^2).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxarch.benchmarks.timing import time_interleaved
from jaxarch.report.context import Context
from jaxarch.report.device import device_description
from jaxarch.report.figures import line_plot
from jaxarch.report.results import ClaimResult, Table
from jaxarch.report.vanishing_gradients import RECURRENT_OVERRIDES
from jaxarch.report.verdicts import Check, at_least, ratio

MODELS = {"LSTM": ("adding-lstm", RECURRENT_OVERRIDES), "Transformer": ("adding-transformer", ())}
SPEEDUP_MIN, SPEEDUP_FAIL = 1.1, 0.9  # within 10% either way is timing noise on a shared machine


def step_runner(experiment: str, overrides, seq_len: int) -> tuple[Callable[[], None], int]:
    """A self-synchronising call of one train step of `experiment` at length `seq_len` (the training loop's
    step, on the config's mesh), and the model's parameter count."""
    from jaxarch import experiments
    from jaxarch.train import TASKS, count_params, init_state
    from jaxarch.train.configure import override_config
    from jaxarch.train.loop import build_dataset_and_model
    from jaxarch.train.mesh import load_batch, make_mesh
    from jaxarch.train.sharding import make_sharded_train_step

    config = override_config(experiments.get_config(experiment), [*overrides, f"data.seq_len={seq_len}"])
    dataset, model = build_dataset_and_model(config)
    mesh = make_mesh(config.mesh)
    state = [init_state(config, dataset, model, mesh)]  # replaced by each call: the step donates it
    step = make_sharded_train_step(TASKS.get(dataset.task), state[0], mesh)
    batch = load_batch(mesh, dataset, config.seed, 0, config.train.batch_size)

    def run() -> None:
        state[0], metrics = step(state[0], batch)
        jax.block_until_ready((state[0], metrics))

    return run, count_params(state[0].params)


def judge(numbers: dict) -> tuple[Check, ...]:
    """`numbers`: {"lengths": [T], "seconds": {"LSTM": [s per T], "Transformer": [s per T]}}."""
    seconds = numbers["seconds"]
    return tuple(at_least(f"T = {t}: LSTM step time over Transformer step time", ratio(lstm, transformer),
                          SPEEDUP_MIN, SPEEDUP_FAIL, unit="x")
                 for t, lstm, transformer in zip(numbers["lengths"], seconds["LSTM"], seconds["Transformer"]))


def run(context: Context) -> ClaimResult:
    budget = context.budget
    lengths = list(budget.timing_lengths)
    seconds = {name: [] for name in MODELS}
    params = {}
    for seq_len in lengths:
        runners = {}
        for name, (experiment, overrides) in MODELS.items():
            runners[name], params[name] = step_runner(experiment, overrides, seq_len)
        # One step of each model per round, the models taking turns, after a compiling and a warm-up call.
        timings = time_interleaved(runners, rounds=budget.timing_repetitions, repetitions=1, warmup=1)
        for name, timing in timings.items():
            seconds[name].append(timing.median_seconds)

    device = device_description()
    path, figure = context.figure("step_time.png", f"Median train-step time against sequence length on {device}.")
    line_plot(path, {name: (lengths, values) for name, values in seconds.items()}, xlabel="sequence length T",
              ylabel="seconds per train step", title="Adding problem, batch 32", log_x=True, log_y=True)
    numbers = {"lengths": lengths, "seconds": seconds, "params": params}
    rows = tuple((t, 1e3 * seconds["LSTM"][i], 1e3 * seconds["Transformer"][i],
                  ratio(seconds["LSTM"][i], seconds["Transformer"][i])) for i, t in enumerate(lengths))
    return ClaimResult(
        number=6, title="Attention processes sequences in parallel and is faster",
        claim="A Transformer block trains faster than an LSTM of similar size, because it does not step through time.",
        method=(f"Median of {budget.timing_repetitions} timed train steps (after compilation and one warm-up step, "
                f"the two models taking turns) of adding-lstm ({params['LSTM']:,} parameters) and "
                f"adding-transformer ({params['Transformer']:,} parameters), batch 32, on {device}."),
        checks=judge(numbers),
        tables=(Table(("T", "LSTM ms/step", "Transformer ms/step", "LSTM / Transformer"), rows),),
        figures=(figure,),
        numbers=numbers,
        notes="Timings on a machine shared with other jobs are noisy; the 10% band around 1 reads as inconclusive.",
    )
