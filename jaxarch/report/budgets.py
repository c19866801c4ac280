"""How much compute each claim gets. FULL trains every arm with 3 seeds and judges the seeds' 95% intervals (one
seed fitted about 20 minutes on two quiet CPU cores; three take about three times as long); QUICK trains one
seed each, in under 3 minutes, and several verdicts are expected to be "inconclusive at this budget"."""

from __future__ import annotations

import dataclasses

from jaxarch.checks import check_positive_ints, fail


@dataclasses.dataclass(frozen=True)
class Budget:
    name: str
    mnist1d_steps: int  # CNN and MLP, ordered and shuffled MNIST-1D (claim 2; claims 3 and 4 reuse the CNN)
    probe_examples: int  # test signals for the receptive-field and invariance probes
    adding_lengths: tuple[int, ...]  # sequence lengths T of the adding problem (claim 5)
    adding_steps: int
    gradient_length: int  # the adding run whose dLoss/dh_t is plotted; one of adding_lengths
    timing_lengths: tuple[int, ...]  # sequence lengths at which train steps are timed (claim 6)
    timing_repetitions: int  # timed steps per model and length
    copy_lengths: tuple[int, ...]  # blanks T of the copy task (claim 7)
    copy_steps: int
    charlm_steps: int  # claim 8
    charlm_batch_size: int
    vision_steps: int  # the ViT and its linear baseline on the digits
    test_size: int  # test examples of the synthetic tasks
    seeds: int = 1  # seeds of every training run; above 1 the checks judge the interval of their mean

    def __post_init__(self):
        module = f"Budget {self.name!r}"
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "name":
                check_positive_ints(module, field.name, value)
        if self.gradient_length not in self.adding_lengths:
            fail(module, "gradient_length", self.gradient_length, f"one of adding_lengths {self.adding_lengths}")


FULL = Budget(
    name="full",
    mnist1d_steps=1500,
    probe_examples=64,
    adding_lengths=(50, 100, 200, 400),
    adding_steps=600,
    gradient_length=100,
    timing_lengths=(50, 100, 200, 400, 800),
    timing_repetitions=6,
    copy_lengths=(10, 20, 40),
    copy_steps=1000,
    charlm_steps=400,
    charlm_batch_size=16,
    vision_steps=300,
    test_size=500,
    seeds=3,
)
MIN_FULL_SEEDS = 3  # the full report's verdicts rest on intervals, which need a few seeds

QUICK = Budget(
    name="quick",
    mnist1d_steps=150,
    probe_examples=16,
    adding_lengths=(50,),
    adding_steps=60,
    gradient_length=50,
    timing_lengths=(25, 100),
    timing_repetitions=3,
    copy_lengths=(10,),
    copy_steps=60,
    charlm_steps=8,
    charlm_batch_size=8,
    vision_steps=20,
    test_size=200,
)


def with_seeds(budget: Budget, seeds: int | None) -> Budget:
    """`budget` with `seeds` seeds per run (None: its own); the full budget takes at least `MIN_FULL_SEEDS`."""
    if seeds is None:
        return budget
    least = MIN_FULL_SEEDS if budget.name == FULL.name else 1
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < least:
        fail(f"Budget {budget.name!r}", "seeds", seeds, f"an integer >= {least}"
             + (" (the full report judges intervals over seeds)" if least > 1 else ""))
    return dataclasses.replace(budget, seeds=seeds)
