"""Models: output shapes over spatial ranks, registry lookup, and errors that name the model."""

import chex
import jax
import jax.numpy as jnp
import pytest

from jaxarch.models import MODELS, build_model


@pytest.mark.parametrize("kernel_size,spatial", [((5,), (40,)), ((3, 3), (8, 12)), ((3, 3, 3), (4, 8, 4))])
@pytest.mark.parametrize("head", ["avg", "max", "flatten"])
def test_cnn_output_shapes_over_ranks(kernel_size, spatial, head):
    model = build_model("cnn", 7, kernel_size=kernel_size, features=(5, 11), head=head)
    x = jnp.ones((3, *spatial, 2))
    variables = model.init(jax.random.PRNGKey(0), x)
    chex.assert_shape(model.apply(variables, x), (3, 7))
    assert variables["params"]["Conv_0"]["kernel"].shape == (*kernel_size, 2, 5)


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_dense_models_flatten_any_input(name):
    model = build_model(name, 7)
    x = jnp.ones((3, 5, 11))
    chex.assert_shape(model.apply(model.init(jax.random.PRNGKey(0), x), x), (3, 7))


def test_dropout_needs_and_uses_an_rng_only_in_training():
    model = build_model("mlp", 7, dropout_rate=0.5)
    x = jnp.ones((3, 11))
    variables = model.init(jax.random.PRNGKey(0), x)
    eval_a, eval_b = model.apply(variables, x), model.apply(variables, x)
    chex.assert_trees_all_equal(eval_a, eval_b)
    train_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert not jnp.allclose(train_a, eval_a)


def test_batch_norm_variant_keeps_running_statistics():
    model = build_model("cnn", 7, kernel_size=(3,), features=(5,), norm="batch")
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 9, 2))
    variables = model.init(jax.random.PRNGKey(0), x)
    assert "batch_stats" in variables
    _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not jnp.allclose(updated["batch_stats"]["BatchNorm_0"]["mean"], 0.0)


def test_registry_holds_the_foundation_models():
    assert {"logreg", "mlp", "cnn"} <= set(MODELS.names())


@pytest.mark.parametrize("options,x_shape,message", [
    ({"kernel_size": (3, 3)}, (2, 40, 1), r"CNN: input rank is 3 .*expected rank 4"),
    ({"kernel_size": (5,), "features": (4, 4, 4, 4, 4, 4)}, (2, 40, 1), "CNN: spatial size"),
    ({"kernel_size": (5,), "head": "mean"}, (2, 40, 1), "CNN: head is 'mean'"),
    ({"kernel_size": (5,), "activation": "swishy"}, (2, 40, 1), "CNN: activation is 'swishy'"),
])
def test_cnn_rejects_bad_inputs_by_name(options, x_shape, message):
    model = build_model("cnn", 3, **options)
    with pytest.raises(ValueError, match=message):
        model.init(jax.random.PRNGKey(0), jnp.ones(x_shape))


def test_integer_inputs_are_rejected():
    model = build_model("mlp", 3)
    with pytest.raises(ValueError, match="MLP: input dtype is int32"):
        model.init(jax.random.PRNGKey(0), jnp.ones((2, 5), jnp.int32))


def test_unknown_model_option_is_named():
    with pytest.raises(ValueError, match="model 'mlp': unknown option 'hidden'.*hidden_sizes"):
        build_model("mlp", 3, hidden=(4,))
