"""Every verdict of `jaxarch report` is computed from its numbers: change a number and the verdict changes."""

import copy

import pytest

from jaxarch.report import (QUICK, Budget, attention_speed, equivariance, long_range, one_architecture,
                            parameter_sharing, pooling_invariance, receptive_field, vanishing_gradients)
from jaxarch.report.render import Report, to_html, to_markdown
from jaxarch.report.results import ClaimResult
from jaxarch.report.verdicts import Outcome, at_least, at_most, combine, ratio

HOLDS, FAILS, INCONCLUSIVE = Outcome.HOLDS, Outcome.FAILS, Outcome.INCONCLUSIVE


def changed(numbers: dict, path: tuple, value) -> dict:
    """A deep copy of `numbers` with the entry at `path` (keys / indices) replaced by `value`."""
    out = copy.deepcopy(numbers)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize("value, expected", [(5.0, HOLDS), (3.0, HOLDS), (2.0, INCONCLUSIVE), (1.0, FAILS),
                                             (float("nan"), INCONCLUSIVE)])
def test_at_least_has_a_band_between_its_thresholds(value, expected):
    assert at_least("x", value, holds=3.0, fails=1.5).outcome is expected


@pytest.mark.parametrize("value, expected", [(0.1, HOLDS), (0.5, HOLDS), (0.7, FAILS)])
def test_at_most_without_a_band_is_two_valued(value, expected):
    assert at_most("x", value, holds=0.5).outcome is expected


def test_a_precondition_never_refutes_it_leaves_the_claim_undecided():
    unmet = at_least("trained enough", 10, 100, precondition=True)
    assert unmet.outcome is INCONCLUSIVE
    assert combine([unmet, at_least("effect", 0.0, 1.0)]) is INCONCLUSIVE
    met = at_least("trained enough", 200, 100, precondition=True)
    assert combine([met, at_least("effect", 0.0, 1.0)]) is FAILS
    assert combine([met, at_least("effect", 2.0, 1.0)]) is HOLDS
    assert combine([met, at_least("effect", 0.5, 1.0, 0.0)]) is INCONCLUSIVE


def test_thresholds_on_the_wrong_side_and_empty_checks_are_errors():
    with pytest.raises(ValueError, match="thresholds of 'x'"):
        at_least("x", 1.0, holds=1.0, fails=2.0)
    with pytest.raises(ValueError, match="checks is empty"):
        combine([])


def test_ratio_of_an_underflowed_gradient():
    assert ratio(1.0, 0.0) == float("inf")
    assert ratio(0.0, 0.0) != ratio(0.0, 0.0)  # nan
    assert ratio(3.0, 2.0) == 1.5


def test_budget_checks_its_fields():
    with pytest.raises(ValueError, match="gradient_length"):
        Budget(**{**QUICK.__dict__, "gradient_length": 7})
    with pytest.raises(ValueError, match="adding_steps"):
        Budget(**{**QUICK.__dict__, "adding_steps": 0})


EQUIVARIANCE = {"1-D": {"conv": [0.0, 2e-7], "dense": [1.3, 1.4]}, "2-D": {"conv": [0.0, 0.0], "dense": [0.9, 1.5]}}
SHARING = {"accuracy": {"cnn": 98.0, "cnn-shuffled": 65.0, "mlp": 68.0, "mlp-shuffled": 67.0}}
RECEPTIVE = {"measured": [5, 14, 32], "formula": [5, 14, 32]}
POOLING = {"changes": {"no pooling": [0, 0.7, 1.0, 1.1, 1.1, 1.2, 1.2, 1.2, 1.2],
                       "max pool 2": [0, 0.5, 0.8, 1.0, 1.0, 1.1, 1.1, 1.1, 1.1],
                       "max pool 4": [0, 0.4, 0.6, 0.7, 0.9, 1.0, 1.0, 1.0, 1.0],
                       "global average pool": [0, 0.05, 0.08, 0.08, 0.08, 0.08, 0.08, 0.08, 0.08],
                       "global max pool": [0, 0.03, 0.04, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]}}
VANISHING = {"lengths": [50, 100],
             "test_mse": {"rnn": [0.16, 0.17], "lstm": [0.001, 0.1], "gru": [0.002, 0.01],
                          "transformer": [0.05, 0.08]},
             "first_step_share": {"init": {"rnn": 1e-5, "lstm": 1e-3, "gru": 1e-6},
                                  "trained": {"rnn": 1e-9, "lstm": 1e-2, "gru": 1e-3}}}
SPEED = {"lengths": [50, 100], "seconds": {"LSTM": [0.02, 0.04], "Transformer": [0.01, 0.02]}}
LONG_RANGE = {"lengths": [10, 20], "source_attention": 0.9,
              "loss_share": {"lstm": [1.0, 1.0], "gru": [0.9, 0.8], "transformer": [0.01, 0.02]}}
ONE_ARCHITECTURE = {"gpt_bits": 2.5, "unigram_bits": 4.5, "vit_accuracy": 95.0, "logreg_accuracy": 92.0,
                    "block_mismatches": 0, "min_steps": 300}

# (claim module, numbers that hold, [(path to change, new value, verdict after the change)])
CASES = [
    (equivariance, EQUIVARIANCE, [(("1-D", "conv", 1), 1e-3, FAILS), (("2-D", "dense", 0), 0.01, FAILS)]),
    (parameter_sharing, SHARING, [(("accuracy", "mlp"), 40.0, INCONCLUSIVE),
                                  (("accuracy", "cnn-shuffled"), 90.0, FAILS),
                                  (("accuracy", "cnn-shuffled"), 75.0, INCONCLUSIVE),
                                  (("accuracy", "mlp-shuffled"), 60.0, FAILS)]),
    (receptive_field, RECEPTIVE, [(("measured", 1), 13, FAILS), (("measured", 2), 14, FAILS)]),
    (pooling_invariance, POOLING, [(("changes", "max pool 2", 1), 1.2, FAILS),
                                   (("changes", "max pool 4", 2), 1.2, INCONCLUSIVE),
                                   (("changes", "global average pool", 3), 4.0, FAILS)]),
    (vanishing_gradients, VANISHING, [(("first_step_share", "trained", "rnn"), 0.5, FAILS),
                                      (("first_step_share", "trained", "rnn"), 0.0, HOLDS),
                                      (("first_step_share", "trained", "gru"), 1e-10, FAILS),
                                      (("test_mse", "rnn", 1), 0.015, FAILS),
                                      (("test_mse", "gru", 1), 0.12, HOLDS),  # judged at T = 50 then
                                      (("test_mse", "rnn", 1), 0.05, INCONCLUSIVE),
                                      (("test_mse",), {m: [0.1, 0.1] for m in ("rnn", "lstm", "gru", "transformer")},
                                       INCONCLUSIVE)]),
    (attention_speed, SPEED, [(("seconds", "Transformer", 1), 0.05, FAILS),
                              (("seconds", "Transformer", 0), 0.019, INCONCLUSIVE)]),
    (long_range, LONG_RANGE, [(("loss_share", "transformer", 1), 0.99, FAILS),
                              (("loss_share", "transformer", 1), 0.6, INCONCLUSIVE),
                              (("loss_share",), {"lstm": [1, 1], "gru": [1, 1], "transformer": [1, 0.95]},
                               INCONCLUSIVE),
                              (("source_attention",), 0.05, FAILS)]),
    (one_architecture, ONE_ARCHITECTURE, [(("min_steps",), 10, INCONCLUSIVE), (("block_mismatches",), 2, FAILS),
                                          (("gpt_bits",), 4.6, FAILS), (("vit_accuracy",), 80.0, FAILS),
                                          (("vit_accuracy",), 90.0, INCONCLUSIVE)]),
]


@pytest.mark.parametrize("module, numbers, changes", CASES, ids=[case[0].__name__.split(".")[-1] for case in CASES])
def test_verdict_follows_the_numbers(module, numbers, changes):
    assert combine(module.judge(numbers)) is HOLDS
    for path, value, expected in changes:
        assert combine(module.judge(changed(numbers, path, value))) is expected, (path, value)


def _report(value: float) -> Report:
    claim = ClaimResult(number=1, title="A claim", claim="Something is large.", method="Measured once.",
                        checks=(at_least("the measured size", value, 3.0),))
    return Report((claim,), "quick", "jaxarch report --quick", "CPU (test)", "2024-01-01 00:00 UTC", 75.0, 130.0)


def test_rendered_verdicts_come_from_the_checks():
    holds, fails = _report(5.0), _report(1.0)
    assert "**Verdict: holds.**" in to_markdown(holds) and "**Verdict: does not hold.**" in to_markdown(fails)
    assert "<strong>Verdict: holds.</strong>" in to_html(holds)
    assert "<strong>Verdict: does not hold.</strong>" in to_html(fails)
    for render in (to_markdown, to_html):
        assert "1 min 15 s" in render(holds) and "2 min 10 s" in render(holds) and "CPU (test)" in render(holds)
    assert "| the measured size | 5 | >= 3 | < 3 | holds |" in to_markdown(holds)
    assert '<td class="fails">does not hold</td>' in to_html(fails)
