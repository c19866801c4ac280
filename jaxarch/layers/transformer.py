"""Pre-LayerNorm Transformer blocks and stacks (Vaswani et al. 2017; pre-LN as in Xiong et al. 2020, ViT, GPT-2).

Token features are `[batch, time, features]`; masks follow the library convention (bool, True = attend,
broadcastable to `[batch, heads, q_len, kv_len]`), built once at the top of a model and passed down as
`mask=`. The stacks take features, not token ids: embeddings and output heads belong to models.

Probing: every block sows `intermediates/attention_output` and `intermediates/mlp_output` (the residual
branches); with `sow_weights=True` its attention also sows `attention_weights` (and then runs the "xla" kernel,
which materialises them). A mutable "intermediates" collection alone never changes the attention kernel.

Dropout: with any dropout rate above 0, `deterministic` must be given, as the module's field or as the call's
argument (not both; as `flax.linen.Dropout`), so that a rate is never silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxarch.checks import (check_floating, check_positive_ints, check_rank, check_size_as_at_init, fail,
                            resolve_deterministic)
from jaxarch.layers.attention import MultiHeadAttention
from jaxarch.layers.dense import flat_dot_general
from jaxarch.layers.masks import check_mask_and_bias
from jaxarch.layers.partitioning import EMBED, LAYERS, MLP, with_axes
from jaxarch.layers.position import RoPEConfig

Dtype = Any


def _check_features(module: str, name: str, x, owner=None, path=()):
    """x: [batch, time, features], floating; with `owner`, the features as at init (the parameter at `path`)."""
    check_rank(module, name, x, 3, "[batch, time, features]")
    check_floating(module, name, x)
    if owner is not None:
        check_size_as_at_init(module, f"{name} features (axis -1)", x.shape[-1], x.shape, owner, path)


def _check_self_attention_mask(module: str, stack, x, mask, bias=None):
    """`mask`/`bias` of self-attention over `x: [batch, time, features]`, under the module's own name."""
    batch, time = x.shape[:2]
    check_mask_and_bias(module, mask, bias, (batch, stack.num_heads, time, time))


class MLPBlock(nn.Module):
    """Dense -> GELU -> Dropout -> Dense, `[..., features] -> [..., out_features or features]`."""

    mlp_ratio: float = 4.0  # hidden width = mlp_ratio * input features
    hidden_features: int | None = None  # overrides mlp_ratio when given
    out_features: int | None = None  # None: input features
    dropout_rate: float = 0.0
    use_bias: bool = True
    dtype: Dtype | None = None  # compute dtype; None: the inputs' dtype
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()  # as the ViT / flax examples MLP
    deterministic: bool | None = None  # or given to __call__; required (one or the other) with dropout_rate > 0

    @nn.compact
    def __call__(self, x, *, deterministic: bool | None = None):
        """`x: [..., features]` -> `[..., out_features or features]`; `deterministic` (or the field, exactly one
        when `dropout_rate > 0`) turns dropout off.
        """
        module = "MLPBlock"
        deterministic = resolve_deterministic(module, self.deterministic, deterministic,
                                              {"dropout_rate": self.dropout_rate})
        check_floating(module, "x", x)
        check_rank(module, "x", x, (2, 3, 4), "[batch, ..., features] (rank 2 to 4)")
        features = x.shape[-1]
        check_size_as_at_init(module, "x features (axis -1)", features, x.shape, self, ("hidden", "kernel"))
        hidden = self.hidden_features or int(self.mlp_ratio * features)
        check_positive_ints(module, "hidden width (mlp_ratio * features)", hidden)
        dense = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                     dot_general=flat_dot_general)
        zeros = nn.initializers.zeros_init()
        # Hidden units are the tensor-parallel axis: `hidden` splits its outputs, `output` its inputs.
        x = nn.Dense(hidden, name="hidden", kernel_init=with_axes(self.kernel_init, (EMBED, MLP)),
                     bias_init=with_axes(zeros, (MLP,)), **dense)(x)
        x = nn.gelu(x, approximate=False)  # exact erf GELU, as BERT / ViT
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        return nn.Dense(self.out_features or features, name="output",
                        kernel_init=with_axes(self.kernel_init, (MLP, EMBED)), bias_init=with_axes(zeros, (EMBED,)),
                        **dense)(x)


class _BlockFields(nn.Module):
    """Fields shared by the encoder and decoder blocks (and forwarded by the stacks)."""

    num_heads: int
    num_kv_heads: int | None = None  # grouped-query attention; None: num_heads
    head_dim: int | None = None  # None: features // num_heads
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0  # on each residual branch and inside the MLP
    attention_dropout_rate: float = 0.0  # on the attention weights
    qk_norm: bool | str = False  # see MultiHeadAttention
    rope: bool | RoPEConfig | None = None  # rotary embeddings in self-attention
    implementation: str | None = None  # attention kernel, see dot_product_attention
    chunk_size: int = 512  # query and key chunk length of the "blockwise" implementation
    layer_norm_epsilon: float = 1e-6
    dtype: Dtype | None = None  # compute dtype; LayerNorm statistics and softmax stay float32
    param_dtype: Dtype = jnp.float32
    # With any dropout rate above 0, given here or to __call__ (one or the other); the stacks pass theirs down.
    deterministic: bool | None = None
    sow_weights: bool = False  # every attention sows its weights (intermediates/attention_weights; "xla" kernel)

    def _deterministic(self, module: str, argument: bool | None) -> bool:
        return resolve_deterministic(module, self.deterministic, argument,
                                     {"dropout_rate": self.dropout_rate,
                                      "attention_dropout_rate": self.attention_dropout_rate})

    def _layer_norm(self, name):
        return nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
                            force_float32_reductions=True, name=name)

    def _attention(self, name, **extra):
        return MultiHeadAttention(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                                  qk_norm=self.qk_norm, dropout_rate=self.attention_dropout_rate,
                                  implementation=self.implementation, chunk_size=self.chunk_size,
                                  sow_weights=self.sow_weights, dtype=self.dtype, param_dtype=self.param_dtype,
                                  name=name, **extra)

    def _mlp_branch(self, x, deterministic):
        y = self._layer_norm("mlp_norm")(x)
        y = MLPBlock(mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout_rate, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="mlp")(y, deterministic=deterministic)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        self.sow("intermediates", "mlp_output", y)
        return x + y


class EncoderBlock(_BlockFields):
    """Bidirectional pre-LN block: `x + attn(LN(x))`, then `x + mlp(LN(x))`.

    `__call__(x: [batch, time, features], *, mask, bias, deterministic, positions) -> [batch, time, features]`.
    """

    @nn.compact
    def __call__(self, x, *, mask=None, bias=None, deterministic: bool | None = None, positions=None):
        """`x: [batch, time, features]` -> `[batch, time, features]`.

        Args:
          x: `[batch, time, features]` floats.
          mask: bool, True means attend, broadcastable to `[batch, heads, time, time]` (a `[batch, time]` padding mask
            goes in as `mask[:, None, None, :]`).
          bias: float attention bias, broadcastable as `mask`.
          deterministic: no dropout; as the field, exactly one of the two when a dropout rate is above 0.
          positions: int `[time]` or `[batch, time]` positions for RoPE (default `arange(time)`).
        """
        deterministic = self._deterministic("EncoderBlock", deterministic)
        _check_features("EncoderBlock", "x", x, self, ("attention_norm", "scale"))
        _check_self_attention_mask("EncoderBlock", self, x, mask, bias)
        y = self._layer_norm("attention_norm")(x)
        y = self._attention("attention", rope=self.rope)(y, mask=mask, bias=bias, deterministic=deterministic,
                                                          positions=positions)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        self.sow("intermediates", "attention_output", y)
        return self._mlp_branch(x + y, deterministic)


class DecoderBlock(_BlockFields):
    """Pre-LN decoder block: causal self-attention, optional cross-attention over encoder outputs, MLP.

    `__call__(x: [batch, time, features], encoder_outputs: [batch, source_time, features] | None, *, mask, bias,
    encoder_mask, deterministic, positions)`. `mask` further restricts self-attention (e.g. padding); `bias`
    is added to its logits (e.g. `RelativePositionBias`);
    `encoder_mask` broadcasts to `[batch, heads, time, source_time]`. With `decode=True` the self-attention
    keeps a key/value cache (see `MultiHeadAttention`); cross-attention is recomputed from `encoder_outputs`
    at every step.
    """

    use_cross_attention: bool = False  # whether the block has a cross-attention sublayer
    decode: bool = False  # autoregressive decoding with the "cache" collection
    max_decode_length: int | None = None  # cache length; required with decode=True

    @nn.compact
    def __call__(self, x, encoder_outputs=None, *, mask=None, bias=None, encoder_mask=None,
                 deterministic: bool | None = None, positions=None):
        """`x: [batch, time, features]` -> `[batch, time, features]`, causal self-attention then (when the block
        has cross-attention) attention to `encoder_outputs`.

        Args:
          x: `[batch, time, features]` floats.
          encoder_outputs: `[batch, source_time, features]`, required with cross-attention, else None.
          mask: bool, further restricts self-attention, broadcastable to `[batch, heads, time, time]` (when decoding,
            `[batch, heads, time, max_decode_length]`).
          bias: float self-attention bias, broadcastable as `mask`.
          encoder_mask: bool, broadcastable to `[batch, heads, time, source_time]`.
          deterministic: no dropout; as the field, exactly one of the two when a dropout rate is above 0.
          positions: int positions for RoPE (default `arange(time)`, or the cache index onwards when decoding).
        """
        module = "DecoderBlock"
        deterministic = self._deterministic(module, deterministic)
        _check_features(module, "x", x, self, ("self_attention_norm", "scale"))
        if not self.decode:  # Decoding masks span the cache; MultiHeadAttention checks them.
            _check_self_attention_mask(module, self, x, mask, bias)
        if self.use_cross_attention != (encoder_outputs is not None):
            fail(module, "encoder_outputs", "None" if encoder_outputs is None else "given",
                 "encoder outputs exactly when use_cross_attention=True")
        y = self._layer_norm("self_attention_norm")(x)
        y = self._attention("self_attention", rope=self.rope, decode=self.decode,
                            max_decode_length=self.max_decode_length)(
            y, mask=mask, bias=bias, is_causal=True, deterministic=deterministic, positions=positions)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        self.sow("intermediates", "attention_output", y)
        x = x + y
        if self.use_cross_attention:
            _check_features(module, "encoder_outputs", encoder_outputs, self, ("cross_attention", "key", "kernel"))
            y = self._layer_norm("cross_attention_norm")(x)
            y = self._attention("cross_attention")(y, encoder_outputs, mask=encoder_mask,
                                                   deterministic=deterministic)
            y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
            self.sow("intermediates", "cross_attention_output", y)
            x = x + y
        return self._mlp_branch(x, deterministic)


def _block_kwargs(stack: nn.Module, block_cls: type) -> dict:
    """The stack's values for every field the block declares (the stacks mirror the block fields), except
    `deterministic`, which the stack resolves and passes to every block's call."""
    names = {field.name for field in dataclasses.fields(block_cls)} - {"parent", "name", "deterministic"}
    return {name: getattr(stack, name) for name in names if hasattr(stack, name)}


def _run_layers(stack, block_cls, x, args, apply_block):
    """Runs `stack.num_layers` blocks, unrolled (`layers_0`, `layers_1`, ...) or with `nn.scan` over one block
    whose parameters (and cache, intermediates) gain a leading layer axis (`layers`), so compile time does not
    grow with depth. `apply_block(block, x, *args) -> x`; `args` are broadcast to every layer."""
    check_positive_ints(type(stack).__name__, "num_layers", stack.num_layers)

    def body(block, carry, *broadcast):
        return apply_block(block, carry, *broadcast), None

    if stack.remat:
        body = nn.remat(body, prevent_cse=not stack.scan_layers)
    kwargs = _block_kwargs(stack, block_cls)
    if stack.scan_layers:
        scanned = nn.scan(body, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                          split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * len(args),
                          length=stack.num_layers, metadata_params={nn.PARTITION_NAME: LAYERS})
        x, _ = scanned(block_cls(**kwargs, name="layers"), x, *args)
        return x
    for index in range(stack.num_layers):
        x, _ = body(block_cls(**kwargs, name=f"layers_{index}"), x, *args)
    return x


class TransformerEncoder(_BlockFields):
    """`num_layers` EncoderBlocks and a final LayerNorm: `[batch, time, features] -> [batch, time, features]`.

    `__call__(x, *, mask, bias, deterministic, positions)`.
    """

    num_layers: int = dataclasses.field(kw_only=True)  # required keyword: the depth
    scan_layers: bool = False  # nn.scan over stacked layer parameters (leading axis num_layers)
    remat: bool = False  # nn.remat each block: recompute its activations in the backward pass

    @nn.compact
    def __call__(self, x, *, mask=None, bias=None, deterministic: bool | None = None, positions=None):
        """`x: [batch, time, features]` -> `[batch, time, features]` (after the final LayerNorm).

        Args:
          x: `[batch, time, features]` floats.
          mask: bool, True means attend, broadcastable to `[batch, heads, time, time]` (a `[batch, time]` padding mask
            goes in as `mask[:, None, None, :]`).
          bias: float attention bias, broadcastable as `mask`.
          deterministic: no dropout; as the field, exactly one of the two when a dropout rate is above 0.
          positions: int `[time]` or `[batch, time]` positions for RoPE (default `arange(time)`).
        """
        deterministic = self._deterministic("TransformerEncoder", deterministic)
        _check_features("TransformerEncoder", "x", x, self, ("final_norm", "scale"))
        _check_self_attention_mask("TransformerEncoder", self, x, mask, bias)

        def apply_block(block, x, mask, bias, positions):
            return block(x, mask=mask, bias=bias, deterministic=deterministic, positions=positions)

        x = _run_layers(self, EncoderBlock, x, (mask, bias, positions), apply_block)
        return self._layer_norm("final_norm")(x)


class TransformerDecoder(_BlockFields):
    """`num_layers` DecoderBlocks and a final LayerNorm: `[batch, time, features] -> [batch, time, features]`.

    `__call__(x, encoder_outputs=None, *, mask, bias, encoder_mask, deterministic, positions)`; with `decode=True`
    every layer keeps its own cache (stacked along the layer axis when `scan_layers`).
    """

    num_layers: int = dataclasses.field(kw_only=True)  # required keyword: the depth
    use_cross_attention: bool = False
    decode: bool = False
    max_decode_length: int | None = None
    scan_layers: bool = False  # nn.scan over stacked layer parameters (leading axis num_layers)
    remat: bool = False  # nn.remat each block: recompute its activations in the backward pass

    @nn.compact
    def __call__(self, x, encoder_outputs=None, *, mask=None, bias=None, encoder_mask=None,
                 deterministic: bool | None = None, positions=None):
        """`x: [batch, time, features]` -> `[batch, time, features]` (after the final LayerNorm); causal.

        Args:
          x: `[batch, time, features]` floats.
          encoder_outputs: `[batch, source_time, features]` for cross-attention, else None.
          mask: bool, further restricts self-attention, broadcastable to `[batch, heads, time, time]` (when decoding,
            `[batch, heads, time, max_decode_length]`).
          bias: float self-attention bias, broadcastable as `mask`.
          encoder_mask: bool, broadcastable to `[batch, heads, time, source_time]`.
          deterministic: no dropout; as the field, exactly one of the two when a dropout rate is above 0.
          positions: int positions for RoPE (default `arange(time)`, or the cache index onwards when decoding).
        """
        deterministic = self._deterministic("TransformerDecoder", deterministic)
        _check_features("TransformerDecoder", "x", x, self, ("final_norm", "scale"))
        if not self.decode:
            _check_self_attention_mask("TransformerDecoder", self, x, mask, bias)

        def apply_block(block, x, encoder_outputs, mask, bias, encoder_mask, positions):
            return block(x, encoder_outputs, mask=mask, bias=bias, encoder_mask=encoder_mask,
                         deterministic=deterministic, positions=positions)

        x = _run_layers(self, DecoderBlock, x, (encoder_outputs, mask, bias, encoder_mask, positions), apply_block)
        return self._layer_norm("final_norm")(x)
