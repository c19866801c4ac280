"""The cuDNN LSTM path (`RNN.cudnn`, `jaxarch.layers.recurrent_cudnn`) against jaxarch's own LSTM, on CPU.

Off CUDA, `cudnn=True` runs `jax.experimental.rnn.lstm_ref`, JAX's reference of cuDNN's kernel, through the same
weight packing, lengths handling, reversal and loop-batched `custom_vjp` as the GPU call; outputs, final carries
and gradients must equal the differentiated scan's (`cudnn=False, fused_sequence=False`). Sizes differ on every
axis (batch 3, time 7, in 5, hidden 4) so a swapped axis fails.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn as jax_rnn

from jaxarch.layers import recurrent_cudnn
from jaxarch.layers.recurrent import HIDDEN_STATE_PERTURBATIONS, RNN, GRUCell, LSTMCell, StackedRNN

BATCH, TIME, IN, HIDDEN = 3, 7, 5, 4
SEQ_LENGTHS = np.array([7, 4, 0], np.int32)  # full, partial, empty
TOL = dict(atol=2e-5, rtol=2e-5)


@pytest.fixture(autouse=True)
def _full_float32_matmuls():
    """On a GPU both cuDNN (`allow_tf32`) and XLA's dots default to TF32; the comparisons are of float32 results.
    On the CPU this changes nothing."""
    with jax.default_matmul_precision("highest"):
        yield


def _inputs(key=0, shape=(BATCH, TIME, IN)):
    return jax.random.normal(jax.random.key(key), shape)


def _randomize(variables, key=1, scale=0.5):
    """Random values everywhere, biases included, so every parameter matters to the comparison."""
    rng = np.random.default_rng(key)
    return jax.tree.map(lambda p: jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype), variables)


def _loss(model, variables, x, carry, seq_lengths):
    """A scalar that reads every output and the final carry, weighted so that no term's gradient cancels."""
    final, outputs = model.apply(variables, x, seq_lengths=seq_lengths, initial_carry=carry, return_carry=True)
    leaves = [jnp.ravel(leaf) for leaf in jax.tree.leaves((final, outputs))]
    flat = jnp.concatenate(leaves)
    return jnp.sum(jnp.sin(flat) * jnp.arange(1, flat.size + 1) / flat.size)


def test_packed_weights_are_cudnns_layout():
    """JAX's own unpacking of the flat weights gives back the cell's kernels, transposed, and its biases."""
    rng = np.random.default_rng(0)
    input_kernel, recurrent_kernel = rng.standard_normal((IN, 4 * HIDDEN)), rng.standard_normal((HIDDEN, 4 * HIDDEN))
    input_bias, recurrent_bias = rng.standard_normal(4 * HIDDEN), rng.standard_normal(4 * HIDDEN)
    flat = recurrent_cudnn._pack_weights(input_kernel, input_bias, recurrent_kernel, recurrent_bias)
    assert flat.shape == (jax_rnn.get_num_params_in_lstm(IN, HIDDEN, 1, False),)
    w_ih, w_hh, b_ih, b_hh = jax_rnn.unpack_lstm_weights(flat, IN, HIDDEN, 1, False)
    chex.assert_trees_all_close((w_ih[0], w_hh[0], b_ih[0], b_hh[0]),
                                (input_kernel.T, recurrent_kernel.T, input_bias, recurrent_bias))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_rnn_equals_the_scan_outputs_carries_and_gradients(reverse, use_lengths):
    x = _inputs()
    seq_lengths = jnp.asarray(SEQ_LENGTHS) if use_lengths else None
    cudnn = RNN(LSTMCell(HIDDEN), cudnn=True, reverse=reverse)
    scan = RNN(LSTMCell(HIDDEN), cudnn=False, fused_sequence=False, reverse=reverse)
    variables = _randomize(cudnn.init(jax.random.key(0), x))
    carry = tuple(_randomize(LSTMCell(HIDDEN).initialize_carry(jax.random.key(0), (BATCH, IN)), key=2))
    got = cudnn.apply(variables, x, seq_lengths=seq_lengths, initial_carry=carry, return_carry=True)
    want = scan.apply(variables, x, seq_lengths=seq_lengths, initial_carry=carry, return_carry=True)
    chex.assert_trees_all_close(got, want, **TOL)
    if use_lengths:  # the empty sequence keeps its initial carry and outputs zeros
        chex.assert_trees_all_close(jax.tree.map(lambda c: c[2], got[0]), jax.tree.map(lambda c: c[2], carry))
        assert not np.any(np.asarray(got[1][2]))
    grads = [jax.jit(jax.grad(lambda v, x, c, m=m: _loss(m, v, x, c, seq_lengths), argnums=(0, 1, 2)))(
        variables, x, carry) for m in (cudnn, scan)]
    chex.assert_trees_all_close(grads[0], grads[1], **TOL)


def test_bidirectional_stacked_padded_equals_jaxarchs_lstm():
    """Two bidirectional layers on a padded batch: each layer and direction is its own call, with reversal within
    the lengths; equal to the same stack on jaxarch's whole-sequence kernel, values and gradients."""
    x = _inputs(shape=(BATCH, TIME, IN))
    seq_lengths = jnp.asarray(SEQ_LENGTHS)
    make = lambda cudnn: StackedRNN("lstm", (HIDDEN, HIDDEN + 2), bidirectional=True, cudnn=cudnn, return_carry=True)
    variables = _randomize(make(True).init(jax.random.key(0), x))

    def run(model, variables, x):
        return model.apply(variables, x, seq_lengths=seq_lengths)

    chex.assert_trees_all_close(run(make(True), variables, x), run(make(False), variables, x), **TOL)

    def loss(model, variables, x):
        carries, outputs = run(model, variables, x)
        flat = jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves((carries, outputs))])
        return jnp.sum(jnp.sin(flat) * jnp.arange(1, flat.size + 1) / flat.size)

    grads = [jax.grad(lambda v, x, m=make(c): loss(m, v, x), argnums=(0, 1))(variables, x) for c in (True, False)]
    chex.assert_trees_all_close(grads[0], grads[1], **TOL)


def test_vmap_over_members_equals_each_member_alone():
    """`jaxarch sweep` vmaps training over members; the call's halves are loop-batched, so a vmapped gradient over
    stacked parameters equals each member's own."""
    x = _inputs()
    model = RNN(LSTMCell(HIDDEN), cudnn=True)
    members = [_randomize(model.init(jax.random.key(0), x), key=k) for k in range(3)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)
    loss = lambda v: jnp.sum(jnp.sin(model.apply(v, x, seq_lengths=jnp.asarray(SEQ_LENGTHS))))
    batched = jax.jit(jax.vmap(jax.value_and_grad(loss)))(stacked)
    alone = [jax.value_and_grad(loss)(member) for member in members]
    chex.assert_trees_all_close(batched, jax.tree.map(lambda *leaves: jnp.stack(leaves), *alone), **TOL)


@pytest.mark.parametrize("cell", [GRUCell(HIDDEN), LSTMCell(HIDDEN, peephole=True),
                                  LSTMCell(HIDDEN, layer_norm=True), LSTMCell(HIDDEN, dtype=jnp.bfloat16)],
                         ids=["gru", "peephole", "layer_norm", "bfloat16"])
def test_cudnn_true_with_a_cell_it_cannot_run_is_a_value_error(cell):
    x = _inputs()
    with pytest.raises(ValueError, match=r"RNN: cudnn=True with the cell is .*expected a plain LSTMCell"):
        RNN(cell, cudnn=True).init(jax.random.key(0), x)


def test_cudnn_true_with_hidden_state_diagnostics_is_a_value_error():
    x = _inputs()
    model = RNN(LSTMCell(HIDDEN), cudnn=True)
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="hidden-state diagnostics"):
        model.apply(variables, x, mutable=[HIDDEN_STATE_PERTURBATIONS])


def test_auto_uses_cudnn_only_on_cuda():
    """The default (cudnn=None) takes the loop-batched call on CUDA and keeps jaxarch's own kernel elsewhere."""
    x = _inputs()
    model = RNN(LSTMCell(HIDDEN))
    variables = model.init(jax.random.key(0), x)
    auto = str(jax.make_jaxpr(model.apply)(variables, x))
    forced = str(jax.make_jaxpr(RNN(LSTMCell(HIDDEN), cudnn=True).apply)(variables, x))
    assert ("custom_vmap" in auto) == recurrent_cudnn.cuda_available()
    assert "custom_vmap" in forced
