"""The LSTM through cuDNN's fused kernel (`jax.experimental.rnn.lstm`): `RNN`'s path for plain LSTM cells on CUDA.

PyTorch's `nn.LSTM` runs on cuDNN's fused RNN kernel on NVIDIA GPUs; JAX binds the same kernel as
`jax.experimental.rnn.lstm`. `RNN` hands a plain float32 `LSTMCell` to it (`RNN.cudnn`), one call per layer and
direction, with:

- the weights packed into cuDNN's flat layout (`_pack_weights`): per layer and direction `W_ih [4H, in]`,
  `W_hh [4H, H]`, `b_ih [4H]`, `b_hh [4H]`, gates in the order (i, f, g, o), which is PyTorch's and jaxarch's, so
  the kernels are transposed and nothing is reordered;
- `seq_lengths` passed through: cuDNN reads each sequence's first `seq_lengths[b]` steps, writes zeros after them
  and returns the carry after the last valid step. A reverse direction runs forward over each sequence's valid
  part reversed (`_flip_within_lengths`) and flips the outputs back, as `jax.experimental.rnn.lstm_ref` runs the
  backward half of a bidirectional LSTM. cuDNN fails on a length-0 sequence (CUDNN_STATUS_EXECUTION_FAILED,
  jax-ml/jax#17966): such a sequence is run for one step and its outputs and carry replaced by zeros and the
  initial carry, which is `RNN`'s meaning of length 0.

cuDNN's primitives have no batching rule, and `jax.vmap` over training is how `jaxarch sweep` trains members
together. The call is therefore a `jax.custom_vjp` whose forward and backward halves are each primal-only
functions batched by a loop (`jax.custom_batching.sequential_vmap`): under `vmap` the members' kernels run one
after another, and gradients still come from cuDNN's own backward kernel.

Off CUDA the same call runs `jax.experimental.rnn.lstm_ref`, JAX's reference of the function the kernel computes,
through the same weight packing, lengths handling and `custom_vjp`; that is how the path is tested on CPU against
jaxarch's own LSTM.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_batching import sequential_vmap
from jax.experimental import rnn as jax_rnn

from jaxarch.layers.recurrent_cells import Array, Carry
from jaxarch.layers.recurrent_kernels import _flip_within_lengths, _lstm_sequence, _masked


def cuda_available() -> bool:
    """Whether cuDNN's LSTM can run here: the default backend is an NVIDIA GPU and jaxlib has its RNN binding."""
    if jax.default_backend() != "gpu" or jax_rnn.gpu_rnn is None:
        return False
    # ROCm's MIOpen binding orders the gates differently (jax.experimental.rnn.swap_lstm_gates); only CUDA's is
    # the layout `_pack_weights` writes. A client that does not say which it is keeps jaxarch's own path.
    version = getattr(getattr(jax.devices()[0], "client", None), "platform_version", "")
    return "cuda" in str(version).lower()


def _pack_weights(input_kernel: Array, input_bias: Array, recurrent_kernel: Array, recurrent_bias: Array) -> Array:
    """jaxarch's `[in, 4H]`, `[4H]`, `[H, 4H]`, `[4H]` -> cuDNN's flat weights for one layer and direction.

    cuDNN's layout (`jax.experimental.rnn`'s module docstring): every layer's `W_ih`, `W_hh` (`[4H, in]`,
    `[4H, H]`, row-major) and then every layer's `b_ih`, `b_hh`; with one layer that is the four in a row.
    """
    return jnp.concatenate([input_kernel.T.ravel(), recurrent_kernel.T.ravel(), input_bias.ravel(),
                            recurrent_bias.ravel()])


def _sizes(x: Array, h0: Array) -> dict:
    return dict(input_size=x.shape[-1], hidden_size=h0.shape[-1], num_layers=1, dropout=0.0, bidirectional=False)


def _cudnn_forward(x, h0, c0, weights, lengths):
    """cuDNN's forward kernel: `x: [B, T, in]`, `h0, c0: [1, B, H]` -> `((y, h_n, c_n), residuals)`."""
    return jax_rnn.lstm_fwd(x, h0, c0, weights, lengths, precision=None, **_sizes(x, h0))


def _cudnn_backward(residuals, cotangents):
    x, h0 = residuals[0], residuals[1]
    sizes = _sizes(x, h0)
    return jax_rnn.lstm_bwd(sizes["input_size"], sizes["hidden_size"], sizes["num_layers"], sizes["dropout"],
                            sizes["bidirectional"], None, residuals, cotangents)


def _reference(x, h0, c0, weights, lengths):
    """`jax.experimental.rnn.lstm_ref` on the flat weights: the function cuDNN's kernel computes."""
    sizes = _sizes(x, h0)
    w_ih, w_hh, b_ih, b_hh = jax_rnn.unpack_lstm_weights(weights, sizes["input_size"], sizes["hidden_size"], 1,
                                                         False)
    return jax_rnn.lstm_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, sizes["input_size"], sizes["hidden_size"],
                            1, 0.0, False)


def _reference_forward(x, h0, c0, weights, lengths):
    return _reference(x, h0, c0, weights, lengths), (x, h0, c0, weights, lengths)


def _reference_backward(residuals, cotangents):
    *floats, lengths = residuals
    _, pullback = jax.vjp(lambda *a: _reference(*a, lengths), *floats)
    # The lengths are integers: their cotangent is zeros, as `jax.experimental.rnn.lstm_bwd` returns it.
    return (*pullback(cotangents), jnp.zeros_like(lengths))


def _loop_batched_vjp(forward, backward):
    """`jax.custom_vjp` of `forward(*args) -> (outputs, residuals)` and `backward(residuals, cotangents)`, each a
    primal-only function that `jax.vmap` batches by a loop (`sequential_vmap`): a primitive without a batching rule
    inside them stays unbatched, in forward and in reverse mode."""
    forward_loop, backward_loop = sequential_vmap(forward), sequential_vmap(backward)

    @jax.custom_vjp
    def call(x, h0, c0, weights, lengths):
        return forward_loop(x, h0, c0, weights, lengths)[0]

    call.defvjp(forward_loop, backward_loop)
    return call


_cudnn_call = _loop_batched_vjp(_cudnn_forward, _cudnn_backward)
_reference_call = _loop_batched_vjp(_reference_forward, _reference_backward)


def lstm_sequence(x: Array, seq_lengths: Array | None, carry: Carry, input_kernel: Array, input_bias: Array,
                  recurrent_kernel: Array, recurrent_bias: Array, reverse: bool, *,
                  use_cuda: bool) -> tuple[Carry, Array]:
    """The LSTM over `x: [T, B, in]` (padding already zeroed) from `carry (c0, h0)`, each `[B, H]` ->
    `((c_T, h_T), ys: [T, B, H])`, as `RNN`'s whole-sequence kernels return it; cuDNN's kernel with `use_cuda`,
    else its reference. The biases are `[4H]` or `[1, 4H]`."""
    num_steps, batch, _ = x.shape
    c0, h0 = carry
    full = seq_lengths is None
    lengths = jnp.full((batch,), num_steps, jnp.int32) if full else seq_lengths.astype(jnp.int32)
    if reverse:
        x = jnp.flip(x, 0) if full else _flip_within_lengths(x, lengths)
    weights = _pack_weights(input_kernel, input_bias, recurrent_kernel, recurrent_bias)
    call = _cudnn_call if use_cuda else _reference_call
    # Within [1, T]: cuDNN fails on length 0 (replaced below), and traced lengths escape RNN's range check.
    y, h_n, c_n = call(jnp.swapaxes(x, 0, 1), h0[None], c0[None], weights, jnp.clip(lengths, 1, num_steps))
    ys = jnp.swapaxes(y, 0, 1)  # [T, B, H]
    if reverse:
        ys = jnp.flip(ys, 0) if full else _flip_within_lengths(ys, lengths)
    if full:
        return (c_n[0], h_n[0]), ys
    valid = lengths > 0
    mask = jnp.arange(num_steps)[:, None] < lengths[None, :]  # [T, B]
    ys = jnp.where(mask[..., None], ys, jnp.zeros((), ys.dtype))
    return (_masked(valid, c_n[0], c0), _masked(valid, h_n[0], h0)), ys


def eligible(kernel, x: Array) -> bool:
    """Whether cuDNN's call computes what the cell does: `kernel` is the whole-sequence kernel `RNN` found for it
    (`_sequence_kernel`: a plain LSTM whose inputs, parameters, carry and compute share one dtype) and that dtype,
    the inputs', is float32, the only one the binding takes."""
    return kernel is _lstm_sequence and jnp.dtype(x.dtype) == jnp.float32

