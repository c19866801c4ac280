"""Models: output shapes over spatial ranks, registry lookup, and errors that name the model."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
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


def test_recurrent_frames_equal_a_recurrence_over_stacked_steps():
    """frame_size=f runs the recurrence over [B, T / f, f * F]: the same as feeding those frames directly."""
    x = jax.random.normal(jax.random.key(0), (3, 12, 2))
    framed = build_model("rnn", 5, cell="gru", hidden_sizes=(7,), frame_size=4)
    plain = build_model("rnn", 5, cell="gru", hidden_sizes=(7,))
    variables = framed.init(jax.random.key(1), x)
    chex.assert_shape(variables["params"]["StackedRNN_0"]["layer_0"]["cell"]["input_kernel"], (8, 21))
    np.testing.assert_allclose(framed.apply(variables, x), plain.apply(variables, x.reshape(3, 3, 8)),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="RecurrentNet.*multiple of frame_size 5"):
        build_model("rnn", 5, frame_size=5).init(jax.random.key(1), x)
    with pytest.raises(ValueError, match="RecurrentNet.*frame_size"):
        build_model("rnn", 5, frame_size=2, readout="sequence").init(jax.random.key(1), x)


def test_recurrent_chrono_option_reaches_the_cells_and_is_refused_for_tanh():
    x = jnp.zeros((2, 6, 3))
    params = build_model("rnn", 4, cell="lstm", hidden_sizes=(16,), chrono_max=50).init(jax.random.key(0), x)
    bias = params["params"]["StackedRNN_0"]["layer_0"]["cell"]["input_bias"]
    np.testing.assert_array_equal(bias[:16], -bias[16:32])
    assert float(bias[16:32].max()) > 1.0  # beyond the plain forget bias of 1
    with pytest.raises(ValueError, match="RecurrentNet.*chrono_max"):
        build_model("rnn", 4, cell="rnn", chrono_max=50).init(jax.random.key(0), x)
