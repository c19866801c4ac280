"""Training on several devices, run by tests/test_scaleout.py in a child process that sees 8 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8` must be set before JAX starts, hence the child).

Usage: python tests/scaleout_checks.py OUT_DIR. Writes OUT_DIR/report.json: per-step losses on each mesh,
parameter shardings, losses after restoring checkpoints onto other meshes, error messages and scaling rows.
The judging is the test's; this script only measures.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")  # as tests/conftest.py

from jaxarch import experiments  # noqa: E402
from jaxarch.train import TASKS, init_state, train_and_evaluate  # noqa: E402
from jaxarch.train.checkpoint import Checkpointer  # noqa: E402
from jaxarch.train.configure import override_config  # noqa: E402
from jaxarch.train.loop import build_dataset_and_model  # noqa: E402
from jaxarch.train.mesh import make_mesh, place_batch  # noqa: E402
from jaxarch.train.sharding import make_sharded_train_step  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jaxarch.benchmarks import suite  # noqa: E402
from jaxarch.benchmarks.scaling import measure_scaling  # noqa: E402

STEPS = 4
TINY = ["optim.schedule=constant", "optim.warmup_steps=0", "train.log_every=1", "train.eval_every=0",
        "train.checkpoint_every=0", "train.batch_size=16", f"train.steps={STEPS}"]
LSTM = ["model.hidden_sizes=(16,)"]  # Bidirectional, dropout 0.1: the dropout masks must not depend on the mesh.
GPT = ["data.seq_len=16", "data.max_chars=20000", "model.max_length=16", "model.embed_dim=32", "model.num_layers=1",
       "data.max_eval_windows=16", "train.eval_batch_size=16", "sample.num_tokens=2"]


def config(name: str, *extra: str):
    return override_config(experiments.get_config(name), [*TINY, *extra])


def shardings(tree) -> dict[str, list]:
    """Every array's PartitionSpec by path, e.g. {"decoder/layers_0/mlp/hidden/kernel": [None, "model"]}."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path):
            [axis for axis in leaf.sharding.spec] + [None] * (leaf.ndim - len(leaf.sharding.spec))
            for path, leaf in flat}


class Trainer:
    """The training core's pieces on one mesh: what `train_and_evaluate` does per step, without its records."""

    def __init__(self, cfg, dataset, model, mesh_spec: str):
        self.cfg, self.dataset, self.mesh = cfg, dataset, make_mesh(mesh_spec)
        self.state = init_state(cfg, dataset, model, self.mesh)
        self.step = make_sharded_train_step(TASKS.get(dataset.task), self.state, self.mesh)

    def run(self, until: int, checkpointer: Checkpointer | None = None) -> list[float]:
        losses = []
        for step in range(int(self.state.step), until):
            batch = place_batch(self.mesh, self.dataset.train_batch(self.cfg.seed, step, self.cfg.train.batch_size))
            self.state, metrics = self.step(self.state, batch)
            losses.append(float(metrics["loss"]))
            if checkpointer is not None and checkpointer.should_save(step + 1):
                checkpointer.save(self.state, step + 1)
        return losses


def losses_on_meshes(name: str, overrides: list[str], meshes: dict[str, list[str]], out: Path) -> dict:
    """Per-step losses and final parameter shardings for each mesh (mesh spec -> extra overrides). The first
    mesh that is not `data:1` writes a checkpoint every 2 steps, restored afterwards on `data:1`."""
    dataset, model = build_dataset_and_model(config(name, *overrides))
    workdir = out / name
    report, trainers = {}, {}
    for spec, extra in meshes.items():
        cfg = config(name, *overrides, f"mesh={spec}", *extra)
        trainers[spec] = Trainer(cfg, dataset, model, spec)
        checkpointer = None
        if spec != "data:1" and "checkpoint" not in report:
            checkpointer = Checkpointer(workdir, every=2, keep=STEPS)
            report["checkpoint"] = {"written_on": spec}
        losses = trainers[spec].run(STEPS, checkpointer)
        if checkpointer is not None:
            checkpointer.close()
        state = trainers[spec].state
        report[spec] = {"losses": losses, "params": shardings(state.params),
                        "opt_state": shardings(state.opt_state), "devices": trainers[spec].mesh.size}
    # Restore the step-2 checkpoint onto one device (the 1-device state is the template: shapes and
    # shardings) and train on with that device's compiled step.
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))  # As if the run had died after step 2.
    one = trainers["data:1"]
    checkpointer = Checkpointer(workdir, every=2, keep=STEPS)
    one.state, _ = checkpointer.restore(one.state)
    checkpointer.close()
    report["checkpoint"].update(restored_on="data:1", resumed_from=int(one.state.step),
                                params=shardings(one.state.params), losses=one.run(STEPS))
    return report


def loop_runs(out: Path) -> dict:
    """The CNN: `train_and_evaluate` end to end on 8 devices with FSDP (evaluation batches of 500 padded to 504),
    then resumed on 4 devices from that run's step-2 checkpoint; the one-device losses come from `Trainer`."""
    def train_losses(workdir: Path) -> list[float]:
        records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [record["train/loss"] for record in records if "train/loss" in record]

    cfg = config("mnist1d-cnn", "model.features=(8,16,32)", "train.checkpoint_every=2", "train.eval_batch_size=500",
                 "train.fsdp=true")
    dataset, model = build_dataset_and_model(cfg)
    one = Trainer(cfg, dataset, model, "data:1")
    report = {"data:1": {"losses": one.run(STEPS)}}
    eight = out / "data:8"
    result = train_and_evaluate(override_config(cfg, ["mesh=data:8"]), eight, progress=False)
    report["data:8"] = {"result": result, "losses": train_losses(eight)}
    shutil.copytree(eight, out / "resumed")
    shutil.rmtree(out / "resumed" / "checkpoints" / str(STEPS))
    result = train_and_evaluate(override_config(cfg, ["mesh=data:4"]), out / "resumed", progress=False)
    report["resumed"] = {"result": result, "losses": train_losses(out / "resumed")}
    return report


def errors(out: Path) -> dict:
    try:
        train_and_evaluate(config("mnist1d-cnn", "mesh=data:8", "train.batch_size=12"), out / "unused",
                           progress=False)
    except ValueError as error:
        return {"batch_size": str(error)}
    return {"batch_size": None}


def main(out: Path) -> None:
    checks = {
        "errors": lambda: errors(out),
        "cnn": lambda: loop_runs(out / "cnn"),
        "lstm": lambda: losses_on_meshes("mnist1d-lstm", LSTM, {"data:1": [], "data:8": []}, out),
        "gpt": lambda: losses_on_meshes("charlm-gpt", GPT, {"data:1": [], "data:4,model:2": ["train.fsdp=true"],
                                                            "data:8": []}, out),
        "scaling": lambda: measure_scaling(config("mnist1d-logreg"), ["data:1", "data:2", "data:4,model:2"],
                                           repetitions=2, warmup=1),
        # What `jaxarch bench` adds when it sees several devices.
        "suite": lambda: suite.device_scaling(quick=True, log=lambda line: None),
    }
    report = {"device_count": jax.device_count(), "seconds": {}}
    for name, check in checks.items():
        start = time.perf_counter()
        report[name] = check()
        report["seconds"][name] = round(time.perf_counter() - start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
