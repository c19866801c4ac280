"""`jaxarch report`: the chapter's claims about CNNs, pooling, RNNs and attention, each measured by small real
experiments and judged against stated thresholds (holds / does not hold / inconclusive at this budget).

One module per claim (`equivariance`, `parameter_sharing`, `receptive_field`, `pooling_invariance`,
`vanishing_gradients`, `attention_speed`, `long_range`, `one_architecture`), each with a `run(context)` that
measures and a pure `judge(numbers)` that turns the numbers into checks; `runner` runs them all and `render`
writes the Markdown and HTML.
"""

from jaxarch.report.budgets import FULL, QUICK, Budget
from jaxarch.report.runner import run_report

__all__ = ["FULL", "QUICK", "Budget", "run_report"]
