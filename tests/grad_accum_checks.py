"""Gradient accumulation on a data-parallel mesh, run by tests/test_grad_accum.py in a child process that sees 4
simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=4`, set before JAX starts).

Usage: python tests/grad_accum_checks.py OUT_DIR. Writes OUT_DIR/report.json: per-step losses and the test loss
of a one-device run and of a data:4 run with 2 micro-batches, and the error for a batch that does not split.
The judging is the test's; this script only measures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")  # as tests/conftest.py

from jaxarch import experiments  # noqa: E402
from jaxarch.train import train_and_evaluate  # noqa: E402
from jaxarch.train.configure import override_config  # noqa: E402

TINY = ["model.dropout_rate=0.0", "optim.warmup_steps=0", "train.log_every=1", "train.eval_every=0",
        "train.checkpoint_every=0", "train.batch_size=16", "train.steps=4", "train.eval_batch_size=500"]


def run(out: Path, name: str, *extra: str) -> dict:
    config = override_config(experiments.get_config("mnist1d-mlp"), [*TINY, *extra])
    result = train_and_evaluate(config, out / name, progress=False)
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return {"losses": [r["train/loss"] for r in records if "train/loss" in r], "test_loss": result["test_loss"],
            "mesh": result["mesh"]}


def main(out: Path) -> None:
    assert jax.device_count() == 4, jax.devices()
    report = {"data:1": run(out, "one", "mesh=data:1"),
              "data:4,k=2": run(out, "four", "mesh=data:4", "train.grad_accum_steps=2")}
    try:
        run(out, "bad", "mesh=data:4", "train.grad_accum_steps=2", "train.batch_size=12")
    except ValueError as err:
        report["error"] = str(err)
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
