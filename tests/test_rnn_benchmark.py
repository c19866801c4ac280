"""The recurrent training-step benchmark runs end to end and writes its documented JSON (no claims about speed)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK_SHAPE = dict(batch=16, time=32, features_in=16, hidden=64)  # benchmarks/rnn.py's QUICK_SHAPE


def test_quick_benchmark_writes_every_model(tmp_path):
    out = tmp_path / "rnn.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "rnn.py"), "--quick", "--out", str(out)], cwd=REPO,
                   check=True, timeout=300)
    result = json.loads(out.read_text())

    assert result["benchmark"] == "rnn_train_step" and result["quick"] is True
    assert result["matmul_ceiling_gflops_per_second"] > 0
    (entry,) = result["shapes"]
    assert entry["shape"] == QUICK_SHAPE
    expected = {"jaxarch_lstm", "jaxarch_gru", "jaxarch_lstm_scan", "jaxarch_gru_scan", "flax_lstm", "flax_gru"}
    if importlib.util.find_spec("torch") is not None:
        expected |= {"torch_lstm", "torch_gru"}
        assert result["torch_threads"] >= 1
    assert set(entry["results"]) == expected
    for name, model in entry["results"].items():
        assert model["kind"] in ("lstm", "gru"), name
        for key in ("steps_per_second", "median_seconds", "compile_seconds", "gflops_per_second",
                    "fraction_of_matmul_ceiling"):
            assert model[key] > 0, (name, key)
        assert model["repetitions"] >= 1
    peers = [p for p in expected if not p.startswith("jaxarch_")] + ["jaxarch_lstm_scan", "jaxarch_gru_scan"]
    want_ratios = {f"jaxarch_{rnn_kind}/{peer}" for peer in peers for rnn_kind in ("lstm", "gru")
                   if peer.startswith(("flax_", "torch_", "jaxarch_")) and rnn_kind in peer}
    assert set(entry["ratios"]) == want_ratios
    assert all(value > 0 for value in entry["ratios"].values())
