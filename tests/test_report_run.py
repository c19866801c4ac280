"""`jaxarch report --quick` end to end: every claim measured on the quick budget and the report's files written.
The verdicts themselves are tested against their numbers in test_report_verdicts.py."""

import dataclasses
import json

import pytest

import jaxarch.report
from jaxarch.cli import main
from jaxarch.report import QUICK
from jaxarch.report.runner import CLAIMS
from jaxarch.report.verdicts import Outcome

TINY = dataclasses.replace(
    QUICK, name="tiny", mnist1d_steps=2, probe_examples=4, adding_lengths=(8,), adding_steps=2, gradient_length=8,
    timing_lengths=(8,), timing_repetitions=1, copy_lengths=(4,), copy_steps=2, charlm_steps=1, charlm_batch_size=2,
    vision_steps=2, test_size=16)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def check_report_files(out_dir, numbers):
    data = json.loads((out_dir / "report.json").read_text())
    assert [claim["number"] for claim in data["claims"]] == numbers
    markdown, page = (out_dir / "index.md").read_text(), (out_dir / "index.html").read_text()
    assert "Wall time" in markdown and data["device"] in markdown and data["device"] in page
    outcomes = {o.value for o in Outcome}
    for claim in data["claims"]:
        assert claim["verdict"] in outcomes and claim["checks"]
        assert f"**Verdict: {claim['verdict']}.**" in markdown
        assert all(check["outcome"] in outcomes for check in claim["checks"])
        for figure in claim["figures"]:
            assert (out_dir / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({figure})" in markdown and f'src="{figure}"' in page
    return data


def test_claims_outside_the_report_are_an_error(tmp_path):
    with pytest.raises(ValueError, match="claims are"):
        jaxarch.report.run_report(tmp_path, TINY, claims=(json,))
    with pytest.raises(ValueError, match="budget is dict"):
        jaxarch.report.run_report(tmp_path, {})


def test_quick_report_writes_every_claim(tmp_path, capsys):
    # The real --quick budget (about 1.5 minutes on two cores): every claim measured, every file written.
    assert main(["report", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    data = check_report_files(tmp_path, list(range(1, len(CLAIMS) + 1)))
    assert data["budget"] == "quick" and data["command"] == "jaxarch report --quick"
    out = capsys.readouterr().out
    for claim in data["claims"]:
        assert f"{claim['number']}. {claim['title']}: {claim['verdict']}" in out
