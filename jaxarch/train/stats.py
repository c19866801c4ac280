"""Summaries of a metric measured over several seeds: mean, spread and a Student-t confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

CONFIDENCE = 0.95


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """mean, std (sample, ddof=1), ci_low/ci_high (the `confidence` Student-t interval of the mean), min, max, n.

    With one value the spread and the interval are unknown: std, ci_low and ci_high are None.
    """
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("stats.describe: got no values, expected at least one")
    mean = math.fsum(values) / n
    std = ci_low = ci_high = None
    if n > 1:
        from scipy import stats  # scipy comes with scikit-learn; imported here, as only summaries need it

        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
        ci_low, ci_high = mean - half, mean + half
    return {"mean": mean, "std": std, "ci_low": ci_low, "ci_high": ci_high, "min": min(values), "max": max(values),
            "n": n}


def format_spread(summary: dict, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    """"97.9 +- 0.4% (n=5)"; a single value is shown as "97.9% (n=1)"."""
    mean = f"{scale * summary['mean']:.{digits}f}"
    if summary["std"] is None:
        return f"{mean}{unit} (n={summary['n']})"
    return f"{mean} +- {scale * summary['std']:.{digits}f}{unit} (n={summary['n']})"


def format_interval(summary: dict, scale: float = 1.0, digits: int = 1, spec: str | None = None) -> str:
    """"[97.3, 98.5]", the confidence interval, its ends in the format `spec` (default `digits` decimals); "-" when
    it is unknown (one value)."""
    if summary["ci_low"] is None:
        return "-"
    spec = spec or f".{digits}f"
    return f"[{scale * summary['ci_low']:{spec}}, {scale * summary['ci_high']:{spec}}]"
