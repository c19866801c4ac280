"""ResNet: the published parameter counts, the explicit BatchNorm mode, its statistics carried by the training
loop (updated in training, used in evaluation, kept by checkpoints), and the CIFAR-10 experiment end to end on
files in CIFAR's on-disk format."""

import importlib.util

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_data_standard import cifar_archive, data_dir, serve  # noqa: F401 - data_dir is an autouse fixture

from jaxarch import experiments
from jaxarch.compat import enable_x64
from jaxarch.data import load_dataset
from jaxarch.models import build_model
from jaxarch.train import train_and_evaluate
from jaxarch.train.checkpoint import Checkpointer
from jaxarch.train.configure import override_config
from jaxarch.train.loop import build_dataset_and_model, init_state
from jaxarch.train.steps import make_eval_step, make_train_step
from jaxarch.train.tasks import TASKS


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def count(model, shape):
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), jnp.zeros(shape))
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("depth,published", [(20, 0.27e6), (32, 0.46e6), (56, 0.85e6)])
def test_cifar_resnets_have_the_papers_parameter_counts(depth, published):
    # He et al. 2016, table 6 (option A shortcuts add no parameters); rounded there to 0.01M.
    assert count(build_model("resnet", 10, depth=depth), (1, 32, 32, 3)) == pytest.approx(published, abs=0.005e6)


@pytest.mark.parametrize("depth,torchvision", [(18, 11_689_512), (34, 21_797_672)])
def test_imagenet_resnets_have_torchvisions_parameter_counts(depth, torchvision):
    # torchvision.models.resnet18/34 (option B projections, 1000 classes): the same layers, the same count.
    assert count(build_model("resnet", 1000, depth=depth, stem="imagenet"), (1, 224, 224, 3)) == torchvision


def test_shortcut_options_and_shapes():
    x = jnp.zeros((3, 13, 11, 5))
    for shortcut, projections in (("A", False), ("B", True)):
        model = build_model("resnet", 7, depth=8, width=4, shortcut=shortcut)
        variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
        chex.assert_shape(jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x), (3, 7))
        assert ("projection" in variables["params"]["stage2_block1"]) == projections
        assert variables["params"]["stage3_block1"]["Conv_0"]["kernel"].shape == (3, 3, 8, 16)
    imagenet = build_model("resnet", 7, depth=18, stem="imagenet", width=2)
    variables = jax.eval_shape(lambda x: imagenet.init(jax.random.PRNGKey(0), x, train=False), x)
    chex.assert_shape(jax.eval_shape(lambda v, x: imagenet.apply(v, x, train=False), variables, x), (3, 7))


@pytest.mark.parametrize("options,call,message", [
    ({}, {}, r"^ResNet: mode is not given, expected train=True"),
    ({"use_running_average": True}, {"train": False}, r"^ResNet: mode is given both"),
    ({"depth": 21}, {"train": False}, r"^ResNet: depth is 21, expected 6n \+ 2"),
    ({"depth": 20, "stem": "imagenet"}, {"train": False}, r"^ResNet: depth is 20, expected one of \[18, 34\]"),
    ({"shortcut": "C"}, {"train": False}, r"^ResNet: shortcut is 'C', expected one of \['A', 'B'\]"),
    ({"stem": "tiny"}, {"train": False}, r"^ResNet: stem is 'tiny'"),
])
def test_bad_options_are_errors_naming_the_module(options, call, message):
    model = build_model("resnet", 3, **{"depth": 8, **options})
    with pytest.raises(ValueError, match=message):
        model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 3)), **call)


def test_the_mode_may_be_a_field_as_flax_batch_norm_has_it():
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
    by_call = build_model("resnet", 3, depth=8, width=2)
    variables = jax.jit(lambda x: by_call.init(jax.random.PRNGKey(0), x, train=False))(x)
    as_field = build_model("resnet", 3, depth=8, width=2, use_running_average=True)
    chex.assert_trees_all_equal(jax.jit(as_field.apply)(variables, x),
                                jax.jit(lambda v, x: by_call.apply(v, x, train=False))(variables, x))


def tiny_config(*extra):
    """A ResNet-8 of width 4 on scikit-learn's 8x8 digits."""
    config = experiments.get_config("digits-cnn")
    config.model = ml_collections.ConfigDict({"name": "resnet", "depth": 8, "width": 4})
    return override_config(config, [
        "train.batch_size=16", "train.steps=6", "train.log_every=3", "train.eval_every=0",
        "train.checkpoint_every=3", "train.eval_batch_size=300", "optim.warmup_steps=0", *extra])


def test_training_updates_batch_stats_and_evaluation_uses_them_deterministically(tmp_path):
    config = tiny_config()
    dataset, model = build_dataset_and_model(config)
    state = init_state(config, dataset, model)
    initial = jax.device_get(state.model_state)
    assert set(initial) == {"batch_stats"}
    task = TASKS.get(dataset.task)
    train_step, eval_step = make_train_step(task, donate=False), make_eval_step(task)
    for step in range(3):
        state, _ = train_step(state, dataset.train_batch(config.seed, step, 16))
    stats = jax.device_get(state.model_state["batch_stats"])
    means = jax.tree.leaves(jax.tree.map(lambda new, old: float(np.max(np.abs(new - old))), stats,
                                         initial["batch_stats"]))
    assert min(means) > 0  # Every BatchNorm's running statistics moved.

    batch = next(dataset.eval_batches("test", 300))
    first, second = eval_step(state, batch), eval_step(state, batch)
    chex.assert_trees_all_equal(first, second)
    # Evaluation normalises by the running averages, not by the batch: other running averages, other outputs.
    variables = {"params": state.params, **state.model_state}
    with_running = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, batch["inputs"])
    with_batch, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables,
                                                                                              batch["inputs"])
    assert not np.allclose(with_running, with_batch, atol=1e-3)

    checkpointer = Checkpointer(tmp_path, every=1, keep=1)
    checkpointer.save(state, 3)
    checkpointer.wait()
    restored, step = checkpointer.restore(init_state(config, dataset, model))
    checkpointer.close()
    assert step == 3
    chex.assert_trees_all_equal(jax.device_get(restored.model_state), jax.device_get(state.model_state))


def test_cifar10_resnet20_runs_end_to_end_on_files_in_cifars_format(monkeypatch, tmp_path):
    serve(monkeypatch, "cifar10", {"archive": cifar_archive(num_per_batch=4)})
    config = override_config(experiments.get_config("cifar10-resnet20"), [
        "train.steps=3", "train.batch_size=8", "train.eval_batch_size=4", "train.log_every=1",
        "train.eval_every=0", "train.checkpoint_every=0"])
    assert load_dataset("cifar10", augment="crop_flip").input_shape == (32, 32, 3)
    result = train_and_evaluate(config, tmp_path / "run", progress=False)
    assert result["steps"] == 3 and result["params"] == 269_722  # ResNet-20 as the config builds it.
    assert 0.0 <= result["test_accuracy"] <= 1.0 and np.isfinite(result["test_loss"])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (an optional peer)")
def test_resnet_equals_the_pytorch_cifar_resnet_with_the_same_weights():
    """Against the benchmark's PyTorch ResNet (option A, padding 1) with copied weights and random running
    statistics: evaluation on the running averages and training on the batch's statistics agree."""
    import torch

    from jaxarch.benchmarks.torch_models import CifarResNet

    torch.manual_seed(0)
    reference = CifarResNet(channels=3, depth=8).double()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    layers = list(reference.net)
    convs = [m for m in reference.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    names = ["stem"] + [f"stage{s}_block1/Conv_{i}" for s in (1, 2, 3) for i in (0, 1)]
    norm_names = ["stem_norm"] + [f"stage{s}_block1/BatchNorm_{i}" for s in (1, 2, 3) for i in (0, 1)]
    params, stats = {}, {}

    def put(tree, path, value):
        *parents, leaf = path.split("/")
        for key in parents:
            tree = tree.setdefault(key, {})
        tree[leaf] = value

    for name, conv in zip(names, convs):
        put(params, f"{name}/kernel", conv.weight.detach().numpy().transpose(2, 3, 1, 0))
    for name, norm in zip(norm_names, norms):
        put(params, f"{name}/scale", norm.weight.detach().numpy())
        put(params, f"{name}/bias", norm.bias.detach().numpy())
        put(stats, f"{name}/mean", norm.running_mean.numpy().copy())
        put(stats, f"{name}/var", norm.running_var.numpy().copy())
    head = layers[-1]
    params["head"] = {"kernel": head.weight.detach().numpy().T, "bias": head.bias.detach().numpy()}
    model = build_model("resnet", 10, depth=8)
    x = np.random.default_rng(0).standard_normal((5, 12, 10, 3))
    with enable_x64(True):
        variables = jax.tree.map(jnp.asarray, {"params": params, "batch_stats": stats})
        chex.assert_trees_all_equal_shapes(variables, jax.eval_shape(
            lambda x: model.init(jax.random.PRNGKey(0), x, train=False), jnp.asarray(x)))
        evaluated = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(x))
        trained, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables,
                                                                                                jnp.asarray(x))
    images = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        expected_eval = reference.eval()(images).numpy()
        expected_train = reference.train()(images).numpy()
    np.testing.assert_allclose(np.asarray(evaluated), expected_eval, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.asarray(trained), expected_train, rtol=1e-9, atol=1e-9)


def test_sgd_l2_is_the_papers_sgd_decay_added_to_the_gradient_before_heavy_ball_momentum():
    from jaxarch.train.optim import make_optimizer

    optim = override_config(experiments.get_config("cifar10-resnet20"), ["optim.schedule=constant"]).optim
    tx = make_optimizer(optim, 100)
    lr, momentum, decay = optim.learning_rate, optim.b1, optim.weight_decay
    params, grads = np.array([1.0, -2.0, 3.0]), np.array([0.5, 0.25, -1.0])
    state, velocity = tx.init(jnp.asarray(params)), np.zeros(3)
    for _ in range(3):  # PyTorch's SGD(momentum, weight_decay), step by step: v = m v + (g + wd p); p -= lr v.
        velocity = momentum * velocity + grads + decay * params
        updates, state = tx.update(jnp.asarray(grads), state, jnp.asarray(params))
        np.testing.assert_allclose(np.asarray(updates), -lr * velocity, rtol=1e-6)
        params = params - lr * velocity
