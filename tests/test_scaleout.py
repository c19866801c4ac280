"""Scale-out: meshes from the config, logical axis names on Transformer parameters, training on 8 simulated
devices that matches one device, checkpoints restored onto other device counts, and a two-process run."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType

from jaxarch import experiments
from jaxarch.benchmarks.scaling import default_meshes
from jaxarch.benchmarks.suite import QUICK_DEVICE_SCALING_EXPERIMENTS
from jaxarch.cli import main
from jaxarch.layers import MultiHeadAttention
from jaxarch.layers.partitioning import with_axes
from jaxarch.models import build_model
from jaxarch.train import train_and_evaluate, validate_config
from jaxarch.train.configure import override_config
from jaxarch.train.distributed import initialize
from jaxarch.train.mesh import make_mesh, parse_mesh, place_batch
from jaxarch.train.sharding import LOGICAL_AXIS_RULES, param_shardings

REPO = Path(__file__).resolve().parents[1]

TOLERANCE = 1e-5  # Same global batch on any mesh: only the order of floating-point sums differs.
STEPS = 4  # tests/scaleout_checks.py's STEPS


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# ---- meshes --------------------------------------------------------------------------------------------------


def test_mesh_spec_parses_and_defaults_to_every_device_on_data():
    assert parse_mesh("data:4,model:2") == {"data": 4, "model": 2}
    assert parse_mesh(" model:2 ") == {"model": 2}
    assert parse_mesh("") == {}
    mesh = make_mesh("")
    assert mesh.axis_names == ("data", "model") and dict(mesh.shape) == {"data": jax.device_count(), "model": 1}


@pytest.mark.parametrize("spec, message", [
    ("data4", r"mesh: entry 'data4' of 'data4' is malformed, expected AXIS:SIZE"),
    ("tensor:2", r"mesh: entry 'tensor:2' of 'tensor:2' is malformed, expected AXIS:SIZE with AXIS one of"),
    ("data:0", r"mesh: entry 'data:0' of 'data:0' is malformed"),
    ("data:1,data:1", r"mesh: axis 'data' in 'data:1,data:1' is given twice"),
])
def test_malformed_mesh_spec_is_an_error(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_mesh(spec)
    config = override_config(experiments.get_config("mnist1d-logreg"), [f"mesh={spec}"])
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_mesh_larger_than_the_devices_is_an_error():
    count = jax.device_count()
    with pytest.raises(ValueError, match=rf"mesh: device count of 'data:{2 * count}' \(data {2 * count} x model 1\) "
                                         rf"is {2 * count}, expected at most {count}, the devices available"):
        make_mesh(f"data:{2 * count}")
    with pytest.raises(ValueError, match=rf"mesh: model axis size of 'model:{2 * count}' is {2 * count}, expected a "
                                         rf"divisor of the {count} devices"):
        make_mesh(f"model:{2 * count}")


def test_command_line_reports_a_mesh_larger_than_the_devices(tmp_path, capsys):
    spec = f"data:{2 * jax.device_count()}"
    code = main(["run", "mnist1d-logreg", f"mesh={spec}", "train.steps=1", "--workdir", str(tmp_path)])
    assert code == 2
    assert f"jaxarch: error: mesh: device count of '{spec}'" in capsys.readouterr().err


def test_place_batch_keeps_values_and_splits_rows_along_data():
    mesh = make_mesh("")
    batch = {"inputs": np.arange(24, dtype=np.float32).reshape(4, 3, 2), "targets": np.arange(4)}
    placed = place_batch(mesh, batch)
    for name, values in batch.items():
        np.testing.assert_array_equal(np.asarray(placed[name]), values)
        assert placed[name].sharding.spec == jax.sharding.PartitionSpec("data")


def test_process_arguments_are_checked_before_joining():
    with pytest.raises(ValueError, match=r"distributed: process_id is 2, expected an int in \[0, 2\)"):
        initialize("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match=r"distributed: num_processes is 0, expected a positive int"):
        initialize("localhost:1234", 0, 0)
    with pytest.raises(ValueError, match=r"distributed: coordinator_address is 'localhost', expected 'host:port'"):
        initialize("localhost", 2, 0)


def test_default_scaling_meshes_double_up_to_every_device():
    assert default_meshes(1) == ["data:1"]
    assert default_meshes(8) == ["data:1", "data:2", "data:4", "data:8"]
    assert default_meshes(6) == ["data:1", "data:2", "data:4", "data:6"]
    with pytest.raises(ValueError, match="default_meshes: device_count is 0"):
        default_meshes(0)


# ---- logical axis names --------------------------------------------------------------------------------------

MESH_4x2 = AbstractMesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def _boxed_params(model, *inputs):
    with nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))["params"]


def _specs(shardings):
    return {"/".join(key.key for key in path): tuple(sharding.spec) for path, sharding
            in jax.tree_util.tree_flatten_with_path(shardings)[0]}


def test_parameters_are_plain_arrays_unless_logical_rules_are_active():
    model = build_model("gpt", 12, embed_dim=8, num_layers=1, num_heads=2, max_length=6)
    ids = jnp.zeros((2, 6), jnp.int32)
    plain = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids))["params"]
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(plain))
    boxed = _boxed_params(model, ids)
    names = nn.get_partition_spec(boxed)
    assert tuple(names["token_embedding"]["embedding"]) == ("vocab", "embed")
    assert tuple(names["decoder"]["layers_0"]["mlp"]["hidden"]["kernel"]) == ("embed", "mlp")
    assert jax.tree.map(lambda x: x.shape, nn.unbox(boxed)) == jax.tree.map(lambda x: x.shape, plain)


def test_model_axis_splits_heads_mlp_and_vocabulary_of_a_scanned_stack():
    model = build_model("gpt", 12, embed_dim=8, num_layers=3, num_heads=2, max_length=6, scan_layers=True,
                        tie_embeddings=False)
    specs = _specs(param_shardings(_boxed_params(model, jnp.zeros((2, 6), jnp.int32)), MESH_4x2))
    layer = "decoder/layers/"
    assert specs[layer + "self_attention/query/kernel"] == (None, None, "model", None)  # [L, D, H, Dh]
    assert specs[layer + "self_attention/value/bias"] == (None, "model", None)
    assert specs[layer + "self_attention/out/kernel"] == (None, "model", None, None)
    assert specs[layer + "mlp/hidden/kernel"] == (None, None, "model")  # [L, D, 4D]
    assert specs[layer + "mlp/output/kernel"] == (None, "model", None)
    assert specs["token_embedding/embedding"] == ("model", None)  # [V=12, D]
    assert specs["head/kernel"] == (None, "model")
    assert specs[layer + "mlp_norm/scale"] == (None, None)


def test_dimensions_that_do_not_divide_stay_replicated_and_fsdp_takes_the_largest_free_one():
    attention = MultiHeadAttention(num_heads=4, num_kv_heads=1, head_dim=6)
    x = jnp.zeros((2, 5, 16))
    specs = _specs(param_shardings(_boxed_params(attention, x), MESH_4x2))
    assert specs["query/kernel"] == (None, "model", None)
    assert specs["key/kernel"] == (None, None, None)  # One KV head cannot be split in two.
    fsdp = _specs(param_shardings(_boxed_params(attention, x), MESH_4x2, fsdp=True))
    assert fsdp["query/kernel"] == ("data", "model", None)  # [16, 4, 6]: 16 is the largest multiple of 4.
    assert fsdp["key/kernel"] == ("data", None, None)
    assert fsdp["query/bias"] == ("model", None)  # [4, 6]: 6 does not divide by 4.
    assert fsdp["out/kernel"] == ("model", None, "data")


def test_unknown_logical_axis_name_is_an_error():
    with pytest.raises(ValueError, match=r"with_axes: names is \('embed', 'hidden'\), expected entries from"):
        with_axes(nn.initializers.zeros_init(), ("embed", "hidden"))


# ---- 8 simulated devices -------------------------------------------------------------------------------------


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE)


def _simulated_devices(count: int) -> dict[str, str]:
    """A child process environment with `count` CPU devices. They share the machine's few cores, so each runs its
    operations on one thread rather than oversubscribing the cores."""
    flags = (f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count} "
             "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    return {**os.environ, "XLA_FLAGS": flags, "MPLBACKEND": "Agg"}


def test_eight_devices_match_one_and_checkpoints_move_between_device_counts(tmp_path):
    env = _simulated_devices(8)
    subprocess.run([sys.executable, str(REPO / "tests" / "scaleout_checks.py"), str(tmp_path)], env=env, check=True,
                   timeout=900, stdout=subprocess.DEVNULL)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["device_count"] == 8

    # A batch that does not split evenly across the data axis is refused before anything compiles.
    assert report["errors"]["batch_size"] == ("mesh: train.batch_size is 12, expected a multiple of the data axis "
                                              "size 8 (mesh 'data:8'), e.g. 8")

    # CNN through train_and_evaluate: 8 devices with FSDP, resumed at step 2 on 4 devices.
    cnn = report["cnn"]
    assert len(cnn["data:1"]["losses"]) == STEPS
    _close(cnn["data:8"]["losses"], cnn["data:1"]["losses"])
    assert cnn["data:8"]["result"]["mesh"] == "data:8"
    resumed = cnn["resumed"]["result"]
    assert resumed["resumed_from"] == 2 and resumed["mesh"] == "data:4"
    _close(cnn["resumed"]["losses"], cnn["data:8"]["losses"])
    _close(resumed["test_loss"], cnn["data:8"]["result"]["test_loss"])  # 500-example batches, padded on 8.
    assert resumed["test_accuracy"] == cnn["data:8"]["result"]["test_accuracy"]

    for name in ("lstm", "gpt"):
        runs = report[name]
        for spec in runs:
            if spec != "checkpoint":
                _close(runs[spec]["losses"], runs["data:1"]["losses"])
        # Written on 8 devices at step 2, restored on one: steps 3 and 4 as in the uninterrupted runs.
        checkpoint = runs["checkpoint"]
        assert checkpoint["resumed_from"] == 2 and checkpoint["restored_on"] == "data:1"
        _close(checkpoint["losses"], runs[checkpoint["written_on"]]["losses"][2:])
        _close(checkpoint["losses"], runs["data:1"]["losses"][2:])
        assert checkpoint["params"] == runs["data:1"]["params"]  # Placed as the one-device template says.

    # Declared shardings after training: CNN split by FSDP, LSTM replicated, GPT tensor-parallel.
    assert report["lstm"]["data:8"]["devices"] == 8
    assert all(spec == [None] * len(spec) for spec in report["lstm"]["data:8"]["params"].values())
    tensor_parallel = report["gpt"]["data:4,model:2"]
    layer = "decoder/layers_0/"
    assert tensor_parallel["params"][layer + "self_attention/query/kernel"] == ["data", "model", None]
    assert tensor_parallel["params"][layer + "self_attention/out/kernel"] == ["model", None, "data"]
    assert tensor_parallel["params"][layer + "mlp/hidden/kernel"] == ["data", "model"]
    assert tensor_parallel["params"][layer + "mlp/output/kernel"] == ["model", "data"]
    assert tensor_parallel["params"][layer + "mlp_norm/scale"] == ["data"]
    # Adam's moments follow their parameters.
    moments = {path.split("/mu/")[1]: spec for path, spec in tensor_parallel["opt_state"].items() if "/mu/" in path}
    assert moments == tensor_parallel["params"]
    data_parallel = report["gpt"]["data:8"]["params"]
    assert data_parallel[layer + "self_attention/query/kernel"] == [None, "model", None]  # model axis of size 1
    assert data_parallel[layer + "mlp_norm/scale"] == [None]

    # The throughput function a benchmark suite plugs in: one row per mesh, no claims about speed.
    rows = report["scaling"]
    assert [(row["mesh"], row["devices"], row["batch_size"]) for row in rows] == [
        ("data:1", 1, 16), ("data:2", 2, 16), ("data:4,model:2", 8, 16)]
    assert rows[0]["speedup"] == 1.0
    for row in rows:
        assert row["steps_per_second"] > 0 and row["compile_seconds"] > 0 and row["repetitions"] == 2
        assert row["examples_per_second"] == pytest.approx(16 * row["steps_per_second"])
    assert list(report["suite"]) == list(QUICK_DEVICE_SCALING_EXPERIMENTS)
    assert [row["mesh"] for row in report["suite"]["mnist1d-logreg"]] == ["data:1", "data:2", "data:4", "data:8"]


# ---- two processes -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


MLP_RUN = ["mnist1d-mlp", "train.steps=4", "train.batch_size=16", "train.log_every=1", "train.eval_every=0",
           "train.checkpoint_every=2", "optim.warmup_steps=0", "optim.schedule=constant"]


def _train_losses(workdir: Path) -> list[float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [record["train/loss"] for record in records if "train/loss" in record]


def test_two_processes_train_like_one_device_from_their_checkpoint(tmp_path):
    """Two processes with 4 CPU devices each form one 8-device mesh (jax.distributed over localhost), each feeding
    its own half of every batch; process 0 alone writes the records. Resumed on one device from their step-2
    checkpoint, steps 3 and 4 see whole batches: a process feeding the wrong rows would change the losses."""
    env = _simulated_devices(4)
    workdir = tmp_path / "two"
    command = [sys.executable, "-m", "jaxarch.cli", "run", *MLP_RUN, "mesh=data:8", "--workdir", str(workdir),
               "--coordinator-address", f"localhost:{_free_port()}", "--num-processes", "2"]
    processes = [subprocess.Popen([*command, "--process-id", str(index)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True) for index in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    results = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
    assert results[0]["test_loss"] == results[1]["test_loss"] and results[0]["mesh"] == "data:8"
    assert [result["local_batch_rows"] for result in results] == ["0:8", "8:16"]  # each loaded only its half
    two_processes = _train_losses(workdir)
    assert len(two_processes) == STEPS
    # Process 1 wrote its shards' digests beside process 0's record; the restore below merges them.
    integrity = workdir / "checkpoints" / "2" / "integrity"
    assert json.loads((integrity / "metadata").read_text())["processes"] == 2
    assert (integrity / "shards.1.json").is_file()

    shutil.rmtree(workdir / "checkpoints" / str(STEPS))
    config = override_config(experiments.get_config(MLP_RUN[0]), [*MLP_RUN[1:], "mesh=data:1"])
    resumed = train_and_evaluate(config, workdir, progress=False)
    assert resumed["resumed_from"] == 2 and resumed["mesh"] == "data:1"
    _close(_train_losses(workdir), two_processes)
    _close(resumed["test_loss"], results[0]["test_loss"])
