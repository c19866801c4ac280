"""Training steps with evaluation, the non-finite guard and checkpoints: nothing compiles after the warm-up (a
thousand steps, in the normal suite), and over a few thousand resident memory stays flat (`slow`: a bound on
memory depends on the machine's allocator and load, so a shared CI machine could break it)."""

import resource

import jax
import pytest

from jaxarch import experiments
from jaxarch.data import load_dataset
from jaxarch.models import build_model
from jaxarch.train import TASKS, evaluate, init_state, make_eval_step
from jaxarch.train.checkpoint import Checkpointer
from jaxarch.train.mesh import load_batch, make_mesh
from jaxarch.train.nonfinite import NonFiniteGuard, flag_names
from jaxarch.train.sharding import make_sharded_train_step

def resident_megabytes() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _soak(tmp_path, monkeypatch, steps: int, warm_up: int, every: int) -> tuple[int, list[str], list[float]]:
    """Trains MNIST-1D's MLP for `steps`, evaluating and checkpointing every `every`; returns the step's compiled
    versions, the compilations after `warm_up` steps, and the resident megabytes every 250 steps from `warm_up` on."""
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path / "cache"))
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kwargs: compiles.append(event)
        if event == "/jax/core/compile/backend_compile_duration" else None)
    config = experiments.get_config("mnist1d-mlp")
    dataset = load_dataset("mnist1d")
    mesh = make_mesh("data:1")
    state = init_state(config, dataset, build_model("mlp", dataset.num_outputs, hidden_sizes=(64, 64),
                                                    dropout_rate=0.1), mesh)
    task = TASKS.get("classification")
    # The training loop's step and batches: the state keeps its mesh layout from call to call.
    train_step, eval_step = make_sharded_train_step(task, state, mesh), make_eval_step(task)
    guard = NonFiniteGuard(flag_names(state.params), "stop")
    checkpointer = Checkpointer(tmp_path, every=every, keep=2, best_metric="test/accuracy")

    memory, compiled_after_warm_up = [], None
    for step in range(1, steps + 1):
        state, metrics = train_step(state, load_batch(mesh, dataset, 0, step - 1, 64))
        guard.record(step, metrics["finite"])
        if step % every == 0:
            guard.check()
            results = evaluate(eval_step, state, dataset.eval_batches("test", 500))
            checkpointer.save(state, step, {f"test/{k}": v for k, v in results.items()})
        if step == warm_up:
            checkpointer.manager.wait_until_finished()
            compiled_after_warm_up = len(compiles)
        if step >= warm_up and step % 250 == 0:
            checkpointer.manager.wait_until_finished()
            memory.append(resident_megabytes())
    checkpointer.close()
    return train_step._cache_size(), compiles[compiled_after_warm_up:], memory


def test_soak_nothing_recompiles(tmp_path, monkeypatch):
    # Evaluations and checkpoints at steps 500, 750 and 1000 come after the warm-up.
    cache_size, compiled_after_warm_up, _ = _soak(tmp_path, monkeypatch, steps=1000, warm_up=250, every=250)
    assert cache_size == 1
    assert compiled_after_warm_up == []


@pytest.mark.slow
def test_soak_memory_stays_flat(tmp_path, monkeypatch):
    cache_size, compiled_after_warm_up, memory = _soak(tmp_path, monkeypatch, steps=3000, warm_up=1000, every=500)
    assert cache_size == 1 and compiled_after_warm_up == []
    # A leak of even one batch (64 x 40 floats) or one checkpoint's host copy per step would add tens of MB
    # over 2000 steps; allocator noise stays within a few.
    assert max(memory) - memory[0] < 20, memory
