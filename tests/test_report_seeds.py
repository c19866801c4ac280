"""`jaxarch report --seeds N`: numbers measured over seeds are judged by the 95% interval of their mean. A check
holds only when the whole interval is on the claim's side, does not hold only when the whole interval is past the
other threshold, and is inconclusive in between; change the per-seed numbers and the verdict changes."""

import copy
import json

import pytest

from jaxarch.report import FULL, QUICK, long_range, one_architecture, parameter_sharing, vanishing_gradients
from jaxarch.report.budgets import with_seeds
from jaxarch.report.render import Report, to_markdown
from jaxarch.report.results import ClaimResult
from jaxarch.report.runs import Runs, seed_values
from jaxarch.report.verdicts import Outcome, at_least, at_most, combine, per_seed

HOLDS, FAILS, INCONCLUSIVE = Outcome.HOLDS, Outcome.FAILS, Outcome.INCONCLUSIVE


@pytest.mark.parametrize("samples, expected", [
    ([5.0, 5.2, 4.9], HOLDS),  # the whole interval >= 3
    ([3.1, 5.9, 3.2], INCONCLUSIVE),  # mean 4.07 >= 3, but the interval reaches below 3
    ([0.9, 1.0, 1.1], FAILS),  # the whole interval < 1.5
    ([1.0, 1.4, 2.0], INCONCLUSIVE),  # mean 1.47 < 1.5, but the interval reaches above it
    ([2.0, 2.0, 2.0], INCONCLUSIVE),  # no spread: the value itself, between the thresholds
    ([4.0, 4.0, 4.0], HOLDS),
])
def test_an_interval_decides_only_when_it_is_whole_on_one_side(samples, expected):
    check = at_least("x", samples, holds=3.0, fails=1.5)
    assert check.outcome is expected
    assert check.value == pytest.approx(sum(samples) / len(samples))


def test_at_most_mirrors_it_and_a_precondition_never_refutes():
    assert at_most("x", [0.1, 0.12, 0.11], 0.5, 1.0).outcome is HOLDS
    assert at_most("x", [0.1, 0.9, 0.2], 0.5, 1.0).outcome is INCONCLUSIVE
    assert at_most("x", [2.0, 2.1, 1.9], 0.5, 1.0).outcome is FAILS
    assert at_least("trained", [10.0, 11.0, 12.0], 50.0, precondition=True).outcome is INCONCLUSIVE
    assert at_least("x", [1.0, float("nan"), 2.0], 0.5).outcome is INCONCLUSIVE


def test_per_seed_pairs_seeds_and_broadcasts_single_numbers():
    assert per_seed(lambda a, b: a - b, [3.0, 5.0], [1.0, 1.0]) == [2.0, 4.0]
    assert per_seed(lambda a, b: a - b, [3.0, 5.0], 1.0) == [2.0, 4.0]
    assert per_seed(lambda a, b: a - b, 3.0, 1.0) == 2.0
    with pytest.raises(ValueError, match="per-seed value counts"):
        per_seed(lambda a, b: a - b, [1.0, 2.0], [1.0, 2.0, 3.0])


def with_seeds_numbers(numbers: dict, key: str, seeds: dict) -> dict:
    out = copy.deepcopy(numbers)
    out["seeds"] = {key: seeds}
    return out


SHARING = {"accuracy": {"cnn": 98.0, "cnn-shuffled": 65.0, "mlp": 68.0, "mlp-shuffled": 67.0}}
SHARING_SEEDS = {"cnn": [98.0, 97.5, 98.3], "cnn-shuffled": [65.0, 64.0, 66.0], "mlp": [68.0, 67.5, 68.4],
                 "mlp-shuffled": [67.0, 67.2, 66.8]}


def test_parameter_sharing_is_judged_on_its_seeds():
    numbers = with_seeds_numbers(SHARING, "accuracy", SHARING_SEEDS)
    assert combine(parameter_sharing.judge(numbers)) is HOLDS
    checks = parameter_sharing.judge(numbers)
    assert checks[1].samples == pytest.approx((30.0, 30.0, 29.9))  # CNN minus MLP, seed by seed
    # One seed of the shuffled CNN far ahead: the mean gap is 5 points, at the threshold, and its interval
    # reaches past 10, so the seeds cannot say whether the advantage vanished.
    spread = copy.deepcopy(SHARING_SEEDS)
    spread["cnn-shuffled"] = [70.0, 64.0, 82.0]
    assert combine(parameter_sharing.judge(with_seeds_numbers(SHARING, "accuracy", spread))) is INCONCLUSIVE
    # All three seeds far ahead: the whole interval is past 10 points: does not hold.
    ahead = copy.deepcopy(SHARING_SEEDS)
    ahead["cnn-shuffled"] = [90.0, 91.0, 89.0]
    assert combine(parameter_sharing.judge(with_seeds_numbers(SHARING, "accuracy", ahead))) is FAILS


VANISHING = {"lengths": [50, 100],
             "test_mse": {"rnn": [0.16, 0.17], "lstm": [0.001, 0.1], "gru": [0.002, 0.01],
                          "transformer": [0.05, 0.08]},
             "first_step_share": {"init": {"rnn": 1e-5, "lstm": 1e-3, "gru": 1e-6},
                                  "trained": {"rnn": 1e-9, "lstm": 1e-2, "gru": 1e-3}}}


def test_vanishing_gradients_gap_is_judged_seed_by_seed():
    seeds = {"rnn": [[0.16] * 3, [0.17, 0.17, 0.17]], "lstm": [[0.001] * 3, [0.1] * 3],
             "gru": [[0.002] * 3, [0.01, 0.011, 0.0105]], "transformer": [[0.05] * 3, [0.08] * 3]}
    numbers = with_seeds_numbers(VANISHING, "test_mse", seeds)
    assert combine(vanishing_gradients.judge(numbers)) is HOLDS
    # One seed's GRU no better than the RNN: the gap's interval spans both thresholds.
    seeds["gru"][1] = [0.01, 0.17, 0.009]
    assert combine(vanishing_gradients.judge(numbers)) is INCONCLUSIVE


LONG_RANGE = {"lengths": [10, 20], "source_attention": 0.9,
              "loss_share": {"lstm": [1.0, 1.0], "gru": [0.9, 0.8], "transformer": [0.01, 0.02]}}


def test_long_range_advantage_is_judged_seed_by_seed():
    seeds = {"lstm": [[1.0] * 3, [1.0] * 3], "gru": [[0.9] * 3, [0.8, 0.7, 0.9]],
             "transformer": [[0.01] * 3, [0.02, 0.03, 0.01]]}
    numbers = with_seeds_numbers(LONG_RANGE, "loss_share", seeds)
    assert combine(long_range.judge(numbers)) is HOLDS
    seeds["transformer"][1] = [0.02, 0.9, 0.01]
    assert combine(long_range.judge(numbers)) is INCONCLUSIVE
    seeds["gru"][1], seeds["transformer"][1] = [0.5, 0.5, 0.5], [0.95, 0.9, 0.99]  # ratios 1.8-2.0 > 1
    assert combine(long_range.judge(numbers)) is FAILS


def test_one_architecture_vision_gain_is_judged_seed_by_seed():
    numbers = {"gpt_bits": 2.5, "unigram_bits": 4.5, "vit_accuracy": 95.0, "logreg_accuracy": 92.0,
               "block_mismatches": 0, "min_steps": 300,
               "seeds": {"gpt_bits": [2.5, 2.6, 2.4], "vit_accuracy": [95.0, 94.8, 95.3],
                         "logreg_accuracy": [92.0, 92.1, 91.8]}}
    assert combine(one_architecture.judge(numbers)) is HOLDS
    numbers["seeds"]["vit_accuracy"] = [95.0, 80.0, 99.0]
    assert combine(one_architecture.judge(numbers)) is INCONCLUSIVE


def test_rendered_check_shows_mean_interval_and_n():
    check = at_least("the measured size", [5.0, 5.2, 4.9], 3.0)
    claim = ClaimResult(number=1, title="A claim", claim="Something is large.", method="Three seeds.",
                        checks=(check,))
    text = to_markdown(Report((claim,), "full", "jaxarch report", "CPU (test)", "2024-01-01 00:00 UTC", 1.0, 1.0))
    low, high = check.interval
    assert f"| the measured size | 5.033 [{low:.4g}, {high:.4g}] (n=3) | >= 3 | < 3 | holds |" in text
    saved = claim.to_json()["checks"][0]
    assert saved["samples"] == [5.0, 5.2, 4.9] and saved["interval_95"] == [low, high]


def test_full_report_takes_at_least_three_seeds():
    assert FULL.seeds == 3 and QUICK.seeds == 1
    assert with_seeds(FULL, 5).seeds == 5 and with_seeds(QUICK, 2).seeds == 2 and with_seeds(FULL, None) is FULL
    with pytest.raises(ValueError, match=r"seeds is 2, expected an integer >= 3"):
        with_seeds(FULL, 2)
    with pytest.raises(ValueError, match=r"seeds is 0, expected an integer >= 1"):
        with_seeds(QUICK, 0)


def test_runs_over_seeds_return_means_and_per_seed_values(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path / "cache"))
    runs = Runs(tmp_path, seeds=2)
    result = runs.train("logreg", "mnist1d-logreg", ("train.steps=6", "train.log_every=3"))
    singles = [json.loads((tmp_path / "logreg" / f"seed={s}" / "result.json").read_text()) for s in (0, 1)]
    assert result["per_seed"]["test_accuracy"] == [r["test_accuracy"] for r in singles]
    assert result["test_loss"] == pytest.approx((singles[0]["test_loss"] + singles[1]["test_loss"]) / 2)
    assert seed_values(result, "test_accuracy", 100) == [100 * r["test_accuracy"] for r in singles]
    assert seed_values(singles[0], "test_accuracy") is None
    trained = runs.trained("logreg")  # seed 0's final checkpoint
    assert trained.config.seed == 0 and set(trained.variables) == {"params"}


def test_tiny_report_over_two_seeds_judges_trained_claims_by_their_seeds(tmp_path, monkeypatch):
    import dataclasses

    import jaxarch.report
    from test_report_run import TINY, check_report_files  # tests/ is on the path: no package

    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path / "cache"))
    # Two of the four claims that train (the other two judge their seeds the same way, tested above): 14 runs.
    claims = (parameter_sharing, long_range)
    jaxarch.report.run_report(tmp_path, dataclasses.replace(TINY, seeds=2), claims=claims)
    data = check_report_files(tmp_path, [2, 7])
    for claim in data["claims"]:
        assert "seeds" in claim["numbers"], claim["number"]
        judged = [check for check in claim["checks"] if "samples" in check]
        assert judged and all(len(check["samples"]) == 2 for check in judged), claim["number"]
    assert "(n=2)" in (tmp_path / "index.md").read_text()
