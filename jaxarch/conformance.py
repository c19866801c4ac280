"""Every public layer and model with small example inputs, for the conformance suite (tests/test_conformance.py).

Each registered `Case` is run through the same checks: jit equals eager, `vmap` over an extra leading axis,
gradients finite and equal to finite differences, bfloat16 compute finite and close to float32, no retrace on
a second call with the same shapes, strict rank promotion throughout, parameters initialised under
`nn.logical_axis_rules` (boxed, as the sharding recipe of Flax and MaxText makes them) applying exactly as plain
ones, and one `ValueError` naming the module for each kind of bad input it lists. A new layer or model joins the
suite by being registered here; the suite also fails if a name in `jaxarch.layers.__all__` or in `MODELS` has no
case and no entry in `NOT_CASES`.

Example sizes are small and all different (3, 5, 7, ...) so that a swapped axis shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxarch import layers
from jaxarch.layers.partitioning import AXIS_NAMES
from jaxarch.models import build_model
from jaxarch.registry import Registry

Args = tuple[Any, ...]

# Public names of jaxarch.layers that are not computations on arrays, and why they have no case.
NOT_CASES = {
    "CELLS": "a table of cell classes by name; each cell has its own case",
    "RoPEConfig": "a settings record for MultiHeadAttention(rope=...)",
    "alibi_slopes": "a constant table computed from a Python int",
    "alibi_bias": "a constant table computed from Python ints",
    "sinusoidal_positions": "a constant table computed from Python ints",
}


@dataclasses.dataclass(frozen=True)
class Subject:
    """`fn(params, *args)` is the computation under test; `params` is `{}` for plain functions."""

    fn: Callable[..., Any]
    params: Any
    args: Args


@dataclasses.dataclass(frozen=True)
class Case:
    """A layer or model and how to call it.

    module: the name its error messages start with.
    example: `(rng, dtype) -> args`; floating arguments in `dtype`, integer ones (ids, lengths, masks) as they are.
    build: `dtype -> nn.Module` (compute dtype; None: float32 defaults), or None for a plain function.
    function: the plain function `function(*args)` when `build` is None.
    call_kwargs: keyword arguments for every call (`train=False` for models).
    keyword_args: names under which the last `len(keyword_args)` of `args` are passed (`mask=`, ...).
    differentiable: indices of `args` that gradients are checked against (besides the parameters); None for
      computations whose outputs are not floating (mask builders): only jit, vmap and retrace checks apply.
    invalid: label -> `args -> bad args`; each must raise a ValueError starting with `module`.
    """

    module: str
    example: Callable[[np.random.Generator, Any], Args]
    build: Callable[[Any], nn.Module] | None = None
    function: Callable[..., Any] | None = None
    call_kwargs: dict = dataclasses.field(default_factory=dict)
    keyword_args: tuple[str, ...] = ()
    differentiable: tuple[int, ...] | None = (0,)
    invalid: dict[str, Callable[[Args], Args]] = dataclasses.field(default_factory=dict)

    def subject(self, dtype=None, params=None, seed: int = 0) -> Subject:
        """The computation in compute `dtype` on example arguments drawn from `seed`, with `params` (by default
        initialised from `seed`; parameters are stored in float32 whatever the compute dtype, so one set
        serves every dtype)."""
        args = self.example(np.random.default_rng(seed), dtype or jnp.float32)
        if self.build is None:
            return Subject(lambda params, *a: self.function(*self._positional(a), **self._keywords(a)), {}, args)
        module = self.build(dtype)
        if params is None:
            # Jitted: initialising op by op compiles every initialiser separately, several times slower.
            params = jax.jit(lambda key, *a: module.init(key, *self._positional(a), **self._keywords(a)))(
                jax.random.PRNGKey(seed), *args)
        return Subject(lambda params, *a: module.apply(params, *self._positional(a), **self._keywords(a)),
                       params, args)

    def logically_boxed(self, params, seed: int = 0):
        """`(abstract, boxed)`: `init` on the float32 example traced under `LOGICAL_AXIS_RULES` (`jax.eval_shape`,
        no compile), whose parameters that declare logical axes are `nn.LogicallyPartitioned` boxes of shapes,
        and `params` (a plain tree, e.g. `subject().params`) put into those boxes, as such an `init` returns
        them. The values are those of an `init` under the rules from the same key: the rules add names, never
        randomness."""
        args = self.example(np.random.default_rng(seed), jnp.float32)
        module = self.build(None)
        with nn.logical_axis_rules(LOGICAL_AXIS_RULES):
            abstract = jax.eval_shape(lambda key: module.init(key, *self._positional(args), **self._keywords(args)),
                                      jax.random.PRNGKey(seed))
        boxed = jax.tree.map(lambda box, value: box.replace_boxed(value) if isinstance(box, nn.Partitioned) else value,
                             abstract, params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        return abstract, boxed

    def _positional(self, args: Args) -> Args:
        return args[:len(args) - len(self.keyword_args)]

    def _keywords(self, args: Args) -> dict:
        named = dict(zip(self.keyword_args, args[len(args) - len(self.keyword_args):]))
        return {**self.call_kwargs, **named}


CASES: Registry[Case] = Registry("conformance case")

# Every logical axis name, mapped to no mesh axis: parameters are boxed with their names, nothing is sharded.
LOGICAL_AXIS_RULES = tuple((name, None) for name in AXIS_NAMES)


def _normal(rng: np.random.Generator, shape, dtype) -> jax.Array:
    return jnp.asarray(rng.standard_normal(shape), dtype)


def _ids(rng: np.random.Generator, shape, vocab: int) -> jax.Array:
    return jnp.asarray(rng.integers(1, vocab, size=shape), jnp.int32)


def _register(name: str, case: Case) -> None:
    CASES.register(name)(case)


# Bad inputs shared by many cases: the first argument one rank short or reduced to a vector (for layers that
# also take unbatched inputs), as integers, or with other features than at init.
def _rank_short(args: Args) -> Args:
    return (args[0][0], *args[1:])


def _vector(args: Args) -> Args:
    return (args[0][(0,) * (args[0].ndim - 1)], *args[1:])


def _as_integers(args: Args) -> Args:
    return (args[0].astype(jnp.int32), *args[1:])


def _fewer_features(args: Args) -> Args:
    return (args[0][..., :-1], *args[1:])


_FLOAT_INPUT_ERRORS = {"rank": _rank_short, "dtype": _as_integers}
_TRAINED_INPUT_ERRORS = {**_FLOAT_INPUT_ERRORS, "features": _fewer_features}
# For layers that accept several ranks (unbatched inputs, any number of spatial axes).
_ANY_RANK_ERRORS = {"rank": _vector, "dtype": _as_integers}
_ANY_RANK_TRAINED_ERRORS = {**_ANY_RANK_ERRORS, "features": _fewer_features}


# ---------------------------------------------------------------------------------------------------------
# Convolution and pooling: inputs [batch, *spatial, features].

def _image(rng, dtype):
    return (_normal(rng, (2, 5, 7, 3), dtype),)


_register("Conv", Case("Conv", _image, build=lambda dtype: layers.Conv(4, (3, 2), padding="SAME", dtype=dtype),
                       invalid=_ANY_RANK_TRAINED_ERRORS))
_register("ConvTranspose", Case("ConvTranspose", _image,
                                build=lambda dtype: layers.ConvTranspose(4, (3, 2), strides=2, dtype=dtype),
                                invalid=_ANY_RANK_TRAINED_ERRORS))
_register("max_pool", Case("max_pool", _image, function=lambda x: layers.max_pool(x, (2, 3)),
                           invalid={**_ANY_RANK_ERRORS, "window larger than input": lambda a: (a[0][:, :1],)}))
_register("min_pool", Case("min_pool", _image,
                           function=lambda x: layers.min_pool(x, (3, 3), strides=2, padding="SAME"),
                           invalid=_ANY_RANK_ERRORS))
_register("avg_pool", Case("avg_pool", _image,
                           function=lambda x: layers.avg_pool(x, (2, 2), strides=1, padding=((1, 0), (0, 1)),
                                                              count_include_pad=False),
                           invalid=_ANY_RANK_ERRORS))
_register("global_avg_pool", Case("global_avg_pool", _image, function=layers.global_avg_pool,
                                  invalid=_ANY_RANK_ERRORS))
_register("global_max_pool", Case("global_max_pool", _image, function=layers.global_max_pool,
                                  invalid=_ANY_RANK_ERRORS))
_register("adaptive_avg_pool", Case("adaptive_avg_pool", _image,
                                    function=lambda x: layers.adaptive_avg_pool(x, (3, 4)),
                                    invalid=_ANY_RANK_ERRORS))
_register("adaptive_max_pool", Case("adaptive_max_pool", _image,
                                    function=lambda x: layers.adaptive_max_pool(x, (2, 3)),
                                    invalid=_ANY_RANK_ERRORS))


# ---------------------------------------------------------------------------------------------------------
# Attention and positions: tokens [batch, time, features]; heads [batch, time, heads, head_dim].

def _tokens(rng, dtype):
    return (_normal(rng, (2, 5, 6), dtype),)


def _tokens_and_mask(rng, dtype):
    mask = jnp.asarray(np.tril(np.ones((5, 5), bool)) | (rng.random((2, 1, 5, 5)) < 0.3))  # [B, 1, T, T]
    return (_normal(rng, (2, 5, 6), dtype), mask)


def _bad_mask(args: Args) -> Args:
    return (args[0], args[1][:, :, :3])


def _qkv(rng, dtype):
    return (_normal(rng, (2, 5, 4, 3), dtype), _normal(rng, (2, 7, 2, 3), dtype), _normal(rng, (2, 7, 2, 3), dtype))


_register("MultiHeadAttention", Case(
    "MultiHeadAttention", _tokens_and_mask,
    build=lambda dtype: layers.MultiHeadAttention(num_heads=2, num_kv_heads=1, qk_norm=True, dtype=dtype),
    keyword_args=("mask",), invalid={**_TRAINED_INPUT_ERRORS, "mask shape": _bad_mask}))
_register("dot_product_attention", Case(
    "dot_product_attention", _qkv, function=lambda q, k, v: layers.dot_product_attention(
        q, k, v, is_causal=True, kv_seq_lengths=jnp.array([7, 4]), implementation="xla"),
    differentiable=(0, 1, 2),
    invalid={"rank": _rank_short, "dtype": _as_integers, "head_dim": lambda a: (a[0], a[1][..., :2], a[2]),
             "heads": lambda a: (a[0][:, :, :3], a[1], a[2])}))
_register("dot_product_attention[blockwise]", Case(
    "dot_product_attention", _qkv, function=lambda q, k, v: layers.dot_product_attention(
        q, k, v, window_size=3, implementation="blockwise", q_chunk_size=2, kv_chunk_size=3),
    differentiable=(0, 1, 2), invalid={"rank": _rank_short}))
_register("apply_rope", Case(
    "apply_rope", lambda rng, dtype: (_normal(rng, (2, 5, 3, 4), dtype),), function=layers.apply_rope,
    invalid={**_FLOAT_INPUT_ERRORS, "odd head_dim": _fewer_features}))
_register("LearnedPositionEmbedding", Case(
    "LearnedPositionEmbedding", _tokens, build=lambda dtype: layers.LearnedPositionEmbedding(7, dtype=dtype),
    invalid={**_TRAINED_INPUT_ERRORS, "longer than max_length":
             lambda a: (jnp.concatenate([a[0], a[0]], axis=1),)}))


class _RelativeBiasAt(nn.Module):
    """`RelativePositionBias` at fixed lengths (they are shapes, so static); the query offset is the array input."""

    @nn.compact
    def __call__(self, offset):
        return layers.RelativePositionBias(3, 4, bidirectional=False, embedding_init=nn.initializers.normal(1.0),
                                           name="bias")(5, 7, offset)


_register("RelativePositionBias", Case(
    "RelativePositionBias", lambda rng, dtype: (jnp.asarray(rng.integers(0, 3), jnp.int32),),
    build=lambda dtype: _RelativeBiasAt(), differentiable=(),
    invalid={"offset dtype": lambda a: (a[0].astype(jnp.float32),), "offset rank": lambda a: (a[0][None],)}))


def _lengths(rng, dtype):
    del dtype
    return (jnp.asarray(rng.integers(1, 6, size=3), jnp.int32),)


_register("causal_mask", Case("causal_mask", _lengths, function=lambda offset: layers.causal_mask(4, 6, offset),
                              differentiable=None, invalid={"offset dtype": lambda a: (a[0].astype(jnp.float32),)}))
_register("sliding_window_mask", Case(
    "sliding_window_mask", _lengths, function=lambda offset: layers.sliding_window_mask(4, 6, 2, offset=offset),
    differentiable=None, invalid={"offset rank": lambda a: (a[0][None],)}))
_register("padding_mask", Case(
    "padding_mask", _lengths, function=lambda lengths: layers.padding_mask(kv_lengths=lengths, kv_len=6),
    differentiable=None, invalid={"lengths rank": lambda a: (a[0][None],)}))
_register("combine_masks", Case(
    "combine_masks", lambda rng, dtype: (jnp.asarray(rng.random((3, 1, 4, 6)) < 0.5),
                                         jnp.asarray(rng.random((1, 2, 4, 1)) < 0.5)),
    function=layers.combine_masks, differentiable=None,
    invalid={"dtype": lambda a: (a[0].astype(jnp.float32), a[1]), "shapes": lambda a: (a[0], a[1][:, :, :3])}))


# ---------------------------------------------------------------------------------------------------------
# Recurrence: cells take (carry, x [batch, in]); the wrappers take [batch, time, in].

def _cell_case(name: str, cell: Callable[..., nn.Module], carry_shape) -> Case:
    def example(rng, dtype):
        x = _normal(rng, (3, 4), dtype)
        # The carry is kept in at least float32 (see `carry_dtype`), whatever the compute dtype.
        carry_dtype = jnp.promote_types(dtype, jnp.float32)
        carry = jax.tree.map(lambda shape: _normal(rng, shape, carry_dtype), carry_shape,
                             is_leaf=lambda s: isinstance(s, tuple) and all(isinstance(n, int) for n in s))
        return carry, x

    def bad_carry(args):
        return jax.tree.map(lambda c: c[..., :2], args[0]), args[1]

    return Case(name, example, build=lambda dtype: cell(5, dtype=dtype), differentiable=(0, 1),
                invalid={"carry shape": bad_carry, "input features": lambda a: (a[0], a[1][:, :2])})


_register("LSTMCell", _cell_case("LSTMCell", layers.LSTMCell, ((3, 5), (3, 5))))
_register("GRUCell", _cell_case("GRUCell", layers.GRUCell, (3, 5)))
_register("SimpleRNNCell", _cell_case("SimpleRNNCell", layers.SimpleRNNCell, (3, 5)))


def _sequence(rng, dtype):
    return (_normal(rng, (3, 6, 4), dtype),)


def _sequence_and_lengths(rng, dtype):
    return (_normal(rng, (3, 6, 4), dtype), jnp.asarray(rng.integers(0, 7, size=3), jnp.int32))


_SEQUENCE_ERRORS = {**_TRAINED_INPUT_ERRORS, "lengths shape": lambda a: (a[0], a[1][:2])}
_register("RNN", Case("RNN", _sequence_and_lengths, build=lambda dtype: layers.RNN(layers.LSTMCell(5, dtype=dtype)),
                      keyword_args=("seq_lengths",), invalid=_SEQUENCE_ERRORS))
_register("RNN[reverse gru]", Case(
    "RNN", _sequence_and_lengths, build=lambda dtype: layers.RNN(layers.GRUCell(5, dtype=dtype), reverse=True),
    keyword_args=("seq_lengths",), invalid=_SEQUENCE_ERRORS))
_register("Bidirectional", Case(
    "Bidirectional", _sequence_and_lengths, keyword_args=("seq_lengths",),
    build=lambda dtype: layers.Bidirectional(layers.RNN(layers.GRUCell(5, dtype=dtype)),
                                             layers.RNN(layers.SimpleRNNCell(3, dtype=dtype))),
    invalid=_SEQUENCE_ERRORS))
_register("StackedRNN", Case(
    "StackedRNN", _sequence_and_lengths,
    build=lambda dtype: layers.StackedRNN(
        lambda features, **kw: layers.LSTMCell(features, dtype=dtype, **kw), (5, 5), bidirectional=True,
        residual=True),
    keyword_args=("seq_lengths",), invalid={"rank": _rank_short, "lengths shape": lambda a: (a[0], a[1][:2])}))


# ---------------------------------------------------------------------------------------------------------
# Transformer blocks and stacks: [batch, time, features].

_register("MLPBlock", Case("MLPBlock", _tokens, build=lambda dtype: layers.MLPBlock(mlp_ratio=1.5, dtype=dtype),
                           invalid=_ANY_RANK_TRAINED_ERRORS))
_register("EncoderBlock", Case(
    "EncoderBlock", _tokens_and_mask, build=lambda dtype: layers.EncoderBlock(num_heads=3, dtype=dtype),
    keyword_args=("mask",), invalid={**_TRAINED_INPUT_ERRORS, "mask shape": _bad_mask}))


def _decoder_inputs(rng, dtype):
    return (_normal(rng, (2, 5, 6), dtype), _normal(rng, (2, 7, 6), dtype))


_register("DecoderBlock", Case(
    "DecoderBlock", _decoder_inputs,
    build=lambda dtype: layers.DecoderBlock(num_heads=3, use_cross_attention=True, rope=True, dtype=dtype),
    differentiable=(0, 1),
    invalid={**_TRAINED_INPUT_ERRORS, "encoder rank": lambda a: (a[0], a[1][0])}))
_register("TransformerEncoder", Case(
    "TransformerEncoder", _tokens_and_mask,
    build=lambda dtype: layers.TransformerEncoder(num_heads=2, num_layers=2, mlp_ratio=2.0, dtype=dtype),
    keyword_args=("mask",), invalid={**_TRAINED_INPUT_ERRORS, "mask shape": _bad_mask}))
_register("TransformerDecoder", Case(
    "TransformerDecoder", _decoder_inputs,
    build=lambda dtype: layers.TransformerDecoder(num_heads=2, num_layers=2, use_cross_attention=True,
                                                  scan_layers=True, dtype=dtype),
    differentiable=(0, 1), invalid=_TRAINED_INPUT_ERRORS))


# ---------------------------------------------------------------------------------------------------------
# Models, built by name from the registry as the training loop builds them; called with train=False.

def _model_case(module: str, name: str, example, options: dict, invalid, num_outputs: int = 3,
                vocab_size: int | None = None) -> Case:
    token_inputs = vocab_size is not None
    return Case(module, example, call_kwargs={"train": False}, differentiable=() if token_inputs else (0,),
                build=lambda dtype: build_model(name, num_outputs, vocab_size=vocab_size, dtype=dtype, **options),
                invalid=invalid)


def _signal(rng, dtype):
    return (_normal(rng, (2, 12, 3), dtype),)


def _token_ids(rng, dtype):
    del dtype
    return (_ids(rng, (2, 7), 11),)


_TOKEN_ERRORS = {"rank": lambda a: (a[0][..., None],), "dtype": lambda a: (a[0].astype(jnp.float32),)}

_register("model:logreg", _model_case("LogisticRegression", "logreg", _signal, {}, _ANY_RANK_TRAINED_ERRORS))
_register("model:mlp", _model_case("MLP", "mlp", _signal, {"hidden_sizes": (5, 4)}, _ANY_RANK_TRAINED_ERRORS))
_register("model:cnn", _model_case("CNN", "cnn", _signal, {"features": (4, 5), "kernel_size": (3,), "norm": "layer"},
                                   _TRAINED_INPUT_ERRORS))
_register("model:rnn", _model_case("RecurrentNet", "rnn", _signal,
                                   {"cell": "gru", "hidden_sizes": (5,), "bidirectional": True},
                                   _TRAINED_INPUT_ERRORS))
_register("model:transformer", _model_case(
    "TransformerClassifier", "transformer", _signal,
    {"embed_dim": 8, "num_layers": 1, "num_heads": 2, "stem": (4,), "pooling": "mean"}, _TRAINED_INPUT_ERRORS))
_register("model:vit", _model_case(
    "ViT", "vit", lambda rng, dtype: (_normal(rng, (2, 6, 4, 3), dtype),),
    {"embed_dim": 8, "num_layers": 1, "num_heads": 2, "patch_size": 2},
    {**_ANY_RANK_TRAINED_ERRORS, "spatial not a multiple of patch_size": lambda a: (a[0][:, :5],)}))
_register("model:gpt", _model_case("GPT", "gpt", _token_ids, {"embed_dim": 8, "num_layers": 1, "num_heads": 2,
                                                             "max_length": 9},
                                   {**_TOKEN_ERRORS, "longer than max_length": lambda a: (jnp.tile(a[0], (1, 2)),)},
                                   num_outputs=11, vocab_size=11))
_register("model:encoder_decoder", _model_case(
    "EncoderDecoder", "encoder_decoder", _token_ids,
    {"embed_dim": 8, "num_layers": 1, "num_heads": 2, "source_length": 4, "max_length": 9},
    _TOKEN_ERRORS, num_outputs=11, vocab_size=11))

# BatchNorm in evaluation mode (train=False): the running averages are inputs like the parameters. Shortcuts of
# option A (parameter-free) and option B (projections); the ImageNet stem's layers have their own cases, and
# tests/test_resnet.py checks ResNet-18/34 against torchvision's parameter counts.
_register("model:resnet", _model_case("ResNet", "resnet", lambda rng, dtype: (_normal(rng, (2, 7, 5, 3), dtype),),
                                      {"depth": 8, "width": 3}, _TRAINED_INPUT_ERRORS))
_register("model:resnet[projection]", _model_case(
    "ResNet", "resnet", lambda rng, dtype: (_normal(rng, (2, 5, 6, 3), dtype),),
    {"depth": 8, "width": 2, "shortcut": "B"}, _TRAINED_INPUT_ERRORS))
