"""Transformer models built from `jaxarch.layers.transformer`: a decoder-only language model ("gpt"), an encoder
classifier for feature or token sequences ("transformer"), a Vision Transformer for 1-D signals and 2-D images
("vit") and an encoder-decoder for sequence-to-sequence ("encoder_decoder").

All are pre-LN stacks (the stacks own the final LayerNorm); embeddings, positions and heads live here. Masks
follow the library convention (bool, True = attend) and are built once at the top of each model.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxarch.checks import (check_floating, check_integer, check_positive_ints, check_rank, check_size_as_at_init,
                            fail)
from jaxarch.layers.conv import Conv
from jaxarch.layers.dense import flat_dot_general
from jaxarch.layers.partitioning import EMBED, VOCAB, with_axes
from jaxarch.layers.position import LearnedPositionEmbedding, RelativePositionBias, sinusoidal_positions
from jaxarch.layers.transformer import TransformerDecoder, TransformerEncoder
from jaxarch.models.registry import MODELS

_POSITIONS = ("learned", "sinusoidal", "rope", "none")
_POOLINGS = ("cls", "mean")
# BERT / GPT-2 scale; token tables split their vocabulary across a `model` mesh axis.
_EMBED_INIT = with_axes(nn.initializers.normal(stddev=0.02), (VOCAB, EMBED))
_HEAD_INIT = with_axes(nn.initializers.lecun_normal(), (EMBED, VOCAB))  # an untied output layer over tokens


def _check_choice(module: str, name: str, value, allowed) -> None:
    if value not in allowed:
        fail(module, name, repr(value), f"one of {list(allowed)}")


def _add_positions(label: str, x, kind: str, max_length: int, positions=None, name: str = "position_embedding"):
    """Adds absolute positions to `x: [batch, time, features]` ("learned" or "sinusoidal"; "rope" and "none"
    add nothing here). `positions`: int `[time]`, default `arange(time)`. Call inside a compact method: the
    learned table (named `name`) is created in the caller."""
    length, features = x.shape[1], x.shape[2]
    if kind == "learned":
        return LearnedPositionEmbedding(max_length, dtype=x.dtype, name=name)(x, positions)
    if kind == "sinusoidal":
        if length > max_length:
            fail(label, "inputs time length", f"{length} (shape {x.shape})", f"<= max_length {max_length}")
        if features % 2:
            fail(label, "embed_dim with sinusoidal positions", features, "an even number")
        table = sinusoidal_positions(max_length, features)  # [max_length, F]
        rows = table[:length] if positions is None else jnp.take(table, positions, axis=0)
        return x + rows[None].astype(x.dtype)
    return x


class _StackFields(nn.Module):
    """Fields shared by every model here: the Transformer stack's shape and regularisation."""

    embed_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0  # on embeddings, residual branches, the MLP and before the head
    attention_dropout_rate: float = 0.0  # on the attention weights ("xla" attention only)
    implementation: str | None = None  # attention kernel, see dot_product_attention
    scan_layers: bool = False  # nn.scan over stacked layer parameters: compile time independent of depth
    remat: bool = False  # recompute each block's activations in the backward pass
    dtype: jnp.dtype | None = None  # compute dtype; parameters, LayerNorm statistics and softmax stay float32
    sow_weights: bool = False  # every attention sows intermediates/attention_weights (runs the "xla" kernel)

    def _stack_kwargs(self) -> dict:
        return dict(num_layers=self.num_layers, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                    dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                    implementation=self.implementation, scan_layers=self.scan_layers, remat=self.remat,
                    sow_weights=self.sow_weights, dtype=self.dtype)


@MODELS.register("gpt")
class GPT(_StackFields):
    """Decoder-only causal language model (Radford et al. 2019): token embedding, positions, a causal
    `TransformerDecoder`, and an output layer tied to the token embedding (or a separate Dense).

    `__call__(inputs: [batch, time] int ids, *, train=False) -> logits [batch, time, num_outputs]`; output `t`
    depends on inputs `<= t` only. With `decode=True` the "cache" collection holds every layer's keys and
    values and `position_index` (the absolute position of the next token); call it with `mutable=["cache"]`,
    a prompt first and then one token at a time (see `jaxarch.generate.generate`).
    """

    num_outputs: int = 0  # output vocabulary (the dataset's); required
    vocab_size: int = 0  # input vocabulary; 0: num_outputs (a language model reads what it predicts)
    max_length: int = 1024  # the longest sequence (position table rows; decode cache length)
    positions: str = "learned"  # "learned", "sinusoidal", "rope" (rotary q/k in every layer) or "none"
    # Also a learned attention bias per head and relative offset (RelativePositionBias), shared by the layers;
    # combines with any `positions`.
    relative_bias: bool = False
    relative_max_distance: int | None = None  # offsets beyond it share one bias; None: max_length - 1
    tie_embeddings: bool = True  # logits = x @ token_embedding^T (Press & Wolf 2017); needs equal vocabularies
    decode: bool = False  # autoregressive decoding with the "cache" collection

    @nn.compact
    def __call__(self, inputs, *, train: bool = False):
        """`inputs: [batch, time]` int token ids -> logits `[batch, time, num_outputs]`; output `t` depends on
        inputs `<= t` only, and `time <= max_length`. `train` turns dropout on (a "dropout" rng). With `decode=True`,
        call with `mutable=["cache"]` (see the class docstring).
        """
        module = "GPT"
        check_rank(module, "inputs", inputs, 2, "[batch, time] token ids")
        check_integer(module, "inputs", inputs)
        check_positive_ints(module, "num_outputs", self.num_outputs)
        _check_choice(module, "positions", self.positions, _POSITIONS)
        vocab_size = self.vocab_size or self.num_outputs
        if self.tie_embeddings and vocab_size != self.num_outputs:
            fail(module, "vocab_size with tie_embeddings", f"{vocab_size} (num_outputs {self.num_outputs})",
                 "vocab_size == num_outputs, or tie_embeddings=False")
        length = inputs.shape[1]
        if length > self.max_length:
            fail(module, "inputs time length", f"{length} (shape {inputs.shape})", f"<= max_length {self.max_length}")

        embed = nn.Embed(vocab_size, self.embed_dim, embedding_init=_EMBED_INIT, dtype=self.dtype,
                         name="token_embedding")
        x = embed(inputs)  # [B, T, D]
        positions, first, cached = None, 0, False
        if self.decode and (self.positions in ("learned", "sinusoidal") or self.relative_bias):
            cached = self.has_variable("cache", "position_index")  # False while `init` creates the cache
            index = self.variable("cache", "position_index", lambda: jnp.array(0, jnp.int32))
            if cached:
                first = index.value
                positions = index.value + jnp.arange(length)
                index.value = index.value + length
        bias = None
        if self.relative_bias:
            max_distance = (max(self.max_length - 1, 1) if self.relative_max_distance is None
                            else self.relative_max_distance)
            relative = RelativePositionBias(self.num_heads, max_distance, bidirectional=False,
                                            name="relative_position_bias")
            # Decoding attends over the whole cache (max_length keys); the cache index places the queries.
            bias = relative(length, self.max_length if cached else length, first)
        x = _add_positions(module, x, self.positions, self.max_length, positions)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = TransformerDecoder(**self._stack_kwargs(), rope=self.positions == "rope", decode=self.decode,
                               max_decode_length=self.max_length, name="decoder")(x, bias=bias,
                                                                                  deterministic=not train)
        if self.tie_embeddings:
            return embed.attend(x)  # [B, T, V]
        return nn.Dense(self.num_outputs, use_bias=False, dtype=self.dtype, dot_general=flat_dot_general,
                        kernel_init=_HEAD_INIT, name="head")(x)


class _EncoderClassifier(_StackFields):
    """Shared tail of the encoder classifiers: CLS token, positions, `TransformerEncoder`, pooling, head."""

    num_outputs: int = 0  # classes, or regression outputs; required
    pooling: str = "cls"  # "cls": a learned token read out at the end (BERT, ViT); "mean": average of the tokens

    def _classify(self, module: str, tokens, positions: str, max_length: int, train: bool, mask=None):
        """tokens: [batch, time, embed_dim] -> [batch, num_outputs]. `mask`: bool [batch, time] of real tokens."""
        check_positive_ints(module, "num_outputs", self.num_outputs)
        _check_choice(module, "pooling", self.pooling, _POOLINGS)
        batch = tokens.shape[0]
        if self.pooling == "cls":
            cls = self.param("cls_token", nn.initializers.zeros_init(), (1, 1, self.embed_dim), jnp.float32)
            tokens = jnp.concatenate([jnp.broadcast_to(cls.astype(tokens.dtype), (batch, 1, self.embed_dim)),
                                      tokens], axis=1)
            if mask is not None:
                mask = jnp.concatenate([jnp.ones((batch, 1), bool), mask], axis=1)
        tokens = _add_positions(module, tokens, positions, max_length)
        tokens = nn.Dropout(self.dropout_rate)(tokens, deterministic=not train)
        attention_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, T]: keys to attend
        x = TransformerEncoder(**self._stack_kwargs(), rope=positions == "rope", name="encoder")(
            tokens, mask=attention_mask, deterministic=not train)
        if self.pooling == "cls":
            x = x[:, 0]
        elif mask is None:
            x = jnp.mean(x, axis=1)
        else:
            weights = mask.astype(x.dtype)[:, :, None]
            x = jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        return nn.Dense(self.num_outputs, dtype=self.dtype, dot_general=flat_dot_general, name="head")(x)


def _check_input_channels(module: str, owner: nn.Module, x, stem: tuple[int, ...], first_layer: str) -> None:
    """Float inputs must keep the channel count the first layer (stem or `first_layer`) was initialised for."""
    path, axis = (("stem_0", "kernel"), -2) if stem else ((first_layer, "kernel"), -2 if first_layer.startswith(
        "patch") else 0)
    check_size_as_at_init(module, "inputs features (axis -1)", x.shape[-1], x.shape, owner, path, axis)


def _conv_stem(features: tuple[int, ...], kernel_size: int, rank: int, dtype, x):
    """Conv -> GELU for each entry of `features`, stride 1 and "SAME" padding (Xiao et al. 2021, "Early
    convolutions help transformers see better"): a locality prior before the tokens mix globally."""
    for index, width in enumerate(features):
        x = Conv(width, (kernel_size,) * rank, dtype=dtype, name=f"stem_{index}")(x)
        x = nn.gelu(x)
    return x


@MODELS.register("transformer")
class TransformerClassifier(_EncoderClassifier):
    """BERT-style encoder classifier / regressor for sequences.

    `__call__(inputs, *, train=False) -> [batch, num_outputs]` with `inputs` float features
    `[batch, time, features]` (Dense projection, after an optional 1-D convolutional stem) or, when
    `vocab_size` > 0, int token ids `[batch, time]` (embedded; tokens equal to `pad_id` are hidden).
    """

    vocab_size: int = 0  # > 0: token-id inputs (supplied by token datasets)
    pad_id: int | None = None  # token inputs: this id marks padding, hidden from attention and pooling
    max_length: int = 1024  # position table rows: the longest sequence (plus the CLS token)
    positions: str = "learned"  # "learned", "sinusoidal", "rope" or "none"
    stem: tuple[int, ...] = ()  # widths of the conv stem on float features; () projects them directly
    stem_kernel_size: int = 5

    @nn.compact
    def __call__(self, inputs, *, train: bool = False):
        """`inputs: [batch, time, features]` floats, or `[batch, time]` int token ids when `vocab_size > 0` ->
        `[batch, num_outputs]`. `train` turns dropout on (a "dropout" rng).
        """
        module = "TransformerClassifier"
        _check_choice(module, "positions", self.positions, _POSITIONS)
        mask = None
        if self.vocab_size > 0:
            check_rank(module, "inputs", inputs, 2, "[batch, time] token ids (vocab_size > 0)")
            check_integer(module, "inputs", inputs)
            if self.stem:
                fail(module, "stem with token inputs", self.stem, "() (the conv stem reads float features)")
            tokens = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=_EMBED_INIT, dtype=self.dtype,
                              name="token_embedding")(inputs)
            if self.pad_id is not None:
                mask = inputs != self.pad_id  # [B, T]
        else:
            check_rank(module, "inputs", inputs, 3, "[batch, time, features] (or set vocab_size for token ids)")
            check_floating(module, "inputs", inputs)
            _check_input_channels(module, self, inputs, self.stem, "input_projection")
            x = _conv_stem(self.stem, self.stem_kernel_size, 1, self.dtype, inputs)
            tokens = nn.Dense(self.embed_dim, dtype=self.dtype, dot_general=flat_dot_general,
                              name="input_projection")(x)  # [B, T, D]
        return self._classify(module, tokens, self.positions, self.max_length, train, mask)


@MODELS.register("vit")
class ViT(_EncoderClassifier):
    """Vision Transformer (Dosovitskiy et al. 2021) for 1-D signals `[batch, length, channels]` and 2-D images
    `[batch, height, width, channels]`: an optional conv stem, non-overlapping patches embedded by a Conv with
    stride = patch size (the same as reshape + Dense), positions, encoder, CLS or mean-pool head.

    `__call__(inputs, *, train=False) -> [batch, num_outputs]`; every spatial size must divide by its patch size.
    """

    patch_size: int | tuple[int, ...] = 4  # an int applies to every spatial axis
    positions: str = "learned"  # "learned", "sinusoidal" (over the flattened patch sequence), "rope" or "none"
    stem: tuple[int, ...] = ()  # widths of the conv stem; () embeds raw patches (the plain ViT)
    stem_kernel_size: int = 3

    @nn.compact
    def __call__(self, inputs, *, train: bool = False):
        """`inputs: [batch, length, channels]` or `[batch, height, width, channels]` floats, every spatial size a
        multiple of its patch size -> `[batch, num_outputs]`. `train` turns dropout on (a "dropout" rng).
        """
        module = "ViT"
        check_rank(module, "inputs", inputs, (3, 4), "[batch, length, channels] or [batch, height, width, channels]")
        check_floating(module, "inputs", inputs)
        _check_choice(module, "positions", self.positions, _POSITIONS)
        rank = inputs.ndim - 2
        patch = check_positive_ints(module, "patch_size", self.patch_size)
        patch = patch * rank if len(patch) == 1 else patch
        if len(patch) != rank:
            fail(module, "patch_size", repr(self.patch_size), f"an int or {rank} ints for {rank}-D inputs")
        spatial = inputs.shape[1:-1]
        if any(size % p for size, p in zip(spatial, patch)):
            fail(module, "inputs spatial shape", f"{spatial} (shape {inputs.shape})",
                 f"multiples of patch_size {patch}")
        _check_input_channels(module, self, inputs, self.stem, "patch_embedding")
        x = _conv_stem(self.stem, self.stem_kernel_size, rank, self.dtype, inputs)
        x = Conv(self.embed_dim, patch, strides=patch, padding="VALID", dtype=self.dtype,
                 name="patch_embedding")(x)  # [B, *spatial / patch, D]
        tokens = jnp.reshape(x, (x.shape[0], -1, self.embed_dim))  # [B, N, D]
        return self._classify(module, tokens, self.positions, tokens.shape[1] + 1, train)


@MODELS.register("encoder_decoder")
class EncoderDecoder(_StackFields):
    """Encoder-decoder Transformer (Vaswani et al. 2017) for sequence-to-sequence with teacher forcing.

    `__call__(inputs, decoder_inputs=None, *, train=False) -> logits [batch, target_time, num_outputs]`.

    - `inputs: [batch, source_time]` int source ids and `decoder_inputs: [batch, target_time]` int ids: the
      target shifted right by one (a start id first), so output `t` predicts target `t` from the source and the
      targets before `t`.
    - With `decoder_inputs=None` (how the training loop calls models), `inputs` packs both:
      `[batch, source_length + target_time]`, the first `source_length` ids the source, the rest the shifted
      target. A dataset then supplies targets `[batch, target_time]` for the "sequence_classification" task.

    Source ids equal to `pad_id` are hidden from the encoder and from cross-attention.
    """

    num_outputs: int = 0  # target vocabulary; required
    vocab_size: int = 0  # source vocabulary; 0: num_outputs
    source_length: int = 0  # packed inputs: how many leading ids are the source; 0 requires decoder_inputs
    pad_id: int | None = None  # source padding id
    max_length: int = 512  # position table rows (source and target each)
    positions: str = "learned"  # "learned" or "sinusoidal"
    tie_embeddings: bool = True  # target embedding doubles as the output layer

    @nn.compact
    def __call__(self, inputs, decoder_inputs=None, *, train: bool = False):
        """`inputs: [batch, source_time]` int source ids and `decoder_inputs: [batch, target_time]` int ids (the
        target shifted right), or `decoder_inputs=None` with both packed in `inputs` (see the class docstring) ->
        logits `[batch, target_time, num_outputs]`. `train` turns dropout on (a "dropout" rng).
        """
        module = "EncoderDecoder"
        check_positive_ints(module, "num_outputs", self.num_outputs)
        _check_choice(module, "positions", self.positions, ("learned", "sinusoidal"))
        check_rank(module, "inputs", inputs, 2, "[batch, source_time] (or packed [batch, source + target]) ids")
        check_integer(module, "inputs", inputs)
        if decoder_inputs is None:
            if not 0 < self.source_length < inputs.shape[1]:
                fail(module, "source_length with packed inputs", f"{self.source_length} (inputs shape "
                     f"{inputs.shape})", f"between 1 and {inputs.shape[1] - 1}, or pass decoder_inputs")
            inputs, decoder_inputs = inputs[:, :self.source_length], inputs[:, self.source_length:]
        check_rank(module, "decoder_inputs", decoder_inputs, 2, "[batch, target_time] ids")
        check_integer(module, "decoder_inputs", decoder_inputs)
        if decoder_inputs.shape[0] != inputs.shape[0]:
            fail(module, "decoder_inputs batch size", f"{decoder_inputs.shape[0]}", f"{inputs.shape[0]} (the inputs')")

        deterministic = not train
        source = nn.Embed(self.vocab_size or self.num_outputs, self.embed_dim, embedding_init=_EMBED_INIT,
                          dtype=self.dtype, name="source_embedding")(inputs)
        with_positions = lambda x, name: _add_positions(module, x, self.positions, self.max_length, name=name)
        source = nn.Dropout(self.dropout_rate)(with_positions(source, "source_positions"), deterministic=deterministic)
        source_mask = None if self.pad_id is None else (inputs != self.pad_id)[:, None, None, :]  # [B, 1, 1, S]
        encoded = TransformerEncoder(**self._stack_kwargs(), name="encoder")(
            source, mask=source_mask, deterministic=deterministic)

        target_embed = nn.Embed(self.num_outputs, self.embed_dim, embedding_init=_EMBED_INIT, dtype=self.dtype,
                                name="target_embedding")
        target = target_embed(decoder_inputs)
        target = nn.Dropout(self.dropout_rate)(with_positions(target, "target_positions"),
                                               deterministic=deterministic)
        x = TransformerDecoder(**self._stack_kwargs(), use_cross_attention=True, name="decoder")(
            target, encoded, encoder_mask=source_mask, deterministic=deterministic)
        if self.tie_embeddings:
            return target_embed.attend(x)
        return nn.Dense(self.num_outputs, use_bias=False, dtype=self.dtype, dot_general=flat_dot_general,
                        kernel_init=_HEAD_INIT, name="head")(x)

