"""How much compute each claim gets. FULL fits about 20 minutes on two quiet CPU cores; QUICK under 3 minutes,
at which several verdicts are expected to be "inconclusive at this budget"."""

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
)

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
