"""The JAX side of the suite: every family as jaxarch builds it and as Flax's built-in modules compose it, and the
jitted training step (forward, backward, Adam update) both are timed with.

The Flax compositions are what a user would write without jaxarch: `nn.Conv` + `nn.max_pool`,
`nn.RNN(nn.SimpleCell / nn.OptimizedLSTMCell / nn.GRUCell)`, and pre-LN blocks of `nn.LayerNorm`,
`nn.MultiHeadDotProductAttention` and an `nn.Dense` MLP with exact GELU, as jaxarch's blocks use, and the CIFAR
ResNet of `nn.Conv`, `nn.BatchNorm` and option A shortcuts (strided slice, zero-padded channels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxarch.benchmarks.workloads import CLASSES, CONV_FEATURES, MLP_RATIO, NUM_GATES, RESNET_WIDTHS, check_family
from jaxarch.layers.recurrent import RNN, GRUCell, LSTMCell, SimpleRNNCell
from jaxarch.layers.transformer import DecoderBlock
from jaxarch.models.cnn import CNN
from jaxarch.models.resnet import ResNet
from jaxarch.models.transformer import GPT, ViT

IMPLEMENTATIONS = ("jaxarch", "flax")
LEARNING_RATE = 1e-3
Dtype = Any


def jaxarch_model(family: str, shape: dict, dtype: Dtype) -> nn.Module:
    """The family as jaxarch builds it, computing in `dtype` with float32 parameters."""
    check_family(family)
    if family == "conv":
        return CNN(num_outputs=CLASSES, features=CONV_FEATURES, kernel_size=(3, 3), head="flatten", dtype=dtype)
    if family in NUM_GATES:
        cell = {"rnn": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell}[family]
        return RNN(cell(shape["hidden"], dtype=dtype))
    if family == "attention":
        return DecoderBlock(num_heads=shape["heads"], mlp_ratio=MLP_RATIO, dtype=dtype)
    if family == "resnet":
        return ResNet(num_outputs=CLASSES, depth=shape["depth"], dtype=dtype)
    if family == "gpt":
        return GPT(num_outputs=shape["vocab"], embed_dim=shape["features"], num_layers=shape["layers"],
                   num_heads=shape["heads"], mlp_ratio=MLP_RATIO, max_length=shape["time"], dtype=dtype)
    return ViT(num_outputs=CLASSES, patch_size=shape["patch"], embed_dim=shape["features"],
               num_layers=shape["layers"], num_heads=shape["heads"], mlp_ratio=MLP_RATIO, dtype=dtype)


class FlaxCNN(nn.Module):
    """conv3x3 -> relu -> maxpool2 per entry of CONV_FEATURES, then a Dense layer on the flattened features."""

    dtype: Dtype = None

    @nn.compact
    def __call__(self, x):
        for features in CONV_FEATURES:
            x = nn.max_pool(nn.relu(nn.Conv(features, (3, 3), dtype=self.dtype)(x)), (2, 2), strides=(2, 2))
        return nn.Dense(CLASSES, dtype=self.dtype)(x.reshape((x.shape[0], -1)))


class FlaxBlock(nn.Module):
    """Pre-LN block: `x + attention(LN(x))`, then `x + mlp(LN(x))`; `mask` as `nn.MultiHeadDotProductAttention`."""

    num_heads: int
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x, mask=None):
        features = x.shape[-1]
        y = nn.LayerNorm(dtype=self.dtype)(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype)(y, mask=mask)
        y = nn.Dense(MLP_RATIO * features, dtype=self.dtype)(nn.LayerNorm(dtype=self.dtype)(x))
        return x + nn.Dense(features, dtype=self.dtype)(nn.gelu(y, approximate=False))


def _causal_mask(x):
    """`[batch, 1, time, time]` for `x: [batch, time, ...]`."""
    return nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))


class FlaxAttention(nn.Module):
    """One causal pre-LN block: `[batch, time, features] -> [batch, time, features]`."""

    num_heads: int
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x):
        return FlaxBlock(self.num_heads, self.dtype)(x, _causal_mask(x))


class FlaxGPT(nn.Module):
    """Token and learned position embeddings, causal blocks, a final LayerNorm and logits tied to the embedding."""

    vocab: int
    features: int
    layers: int
    num_heads: int
    dtype: Dtype = None

    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(self.vocab, self.features, dtype=self.dtype)
        positions = self.param("positions", nn.initializers.normal(0.02), (tokens.shape[1], self.features))
        x = embed(tokens) + positions.astype(self.dtype or jnp.float32)[None]  # [B, T, D]
        mask = _causal_mask(tokens)
        for _ in range(self.layers):
            x = FlaxBlock(self.num_heads, self.dtype)(x, mask)
        return embed.attend(nn.LayerNorm(dtype=self.dtype)(x))


class FlaxViT(nn.Module):
    """Patch embedding by a strided `nn.Conv`, CLS token, learned positions, blocks, LayerNorm, head on CLS."""

    patch: int
    features: int
    layers: int
    num_heads: int
    dtype: Dtype = None

    @nn.compact
    def __call__(self, images):
        x = nn.Conv(self.features, (self.patch, self.patch), strides=self.patch, padding="VALID",
                    dtype=self.dtype)(images)
        x = x.reshape((x.shape[0], -1, self.features))  # [B, N, D]
        cls = self.param("cls", nn.initializers.zeros_init(), (1, 1, self.features))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, self.features)), x], axis=1)
        x = x + self.param("positions", nn.initializers.normal(0.02), x.shape[1:]).astype(x.dtype)[None]
        for _ in range(self.layers):
            x = FlaxBlock(self.num_heads, self.dtype)(x)
        return nn.Dense(CLASSES, dtype=self.dtype)(nn.LayerNorm(dtype=self.dtype)(x)[:, 0])


class FlaxBasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the option A shortcut, then ReLU."""

    features: int
    strides: int
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,  # noqa: E731
                                    dtype=self.dtype)
        y = nn.Conv(self.features, (3, 3), self.strides, padding=1, use_bias=False, dtype=self.dtype)(x)
        y = nn.relu(norm()(y))
        y = norm()(nn.Conv(self.features, (3, 3), padding=1, use_bias=False, dtype=self.dtype)(y))
        if self.strides != 1 or x.shape[-1] != self.features:
            x = x[:, ::self.strides, ::self.strides, :]
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
        return nn.relu(y + x)


class FlaxResNet(nn.Module):
    """The CIFAR ResNet of `depth` = 6n + 2: conv3x3(16) -> BN -> ReLU, three stages of n blocks, pool, Dense."""

    depth: int
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(RESNET_WIDTHS[0], (3, 3), padding=1, use_bias=False, dtype=self.dtype)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)(x))
        for stage, width in enumerate(RESNET_WIDTHS):
            for block in range((self.depth - 2) // 6):
                x = FlaxBasicBlock(width, 2 if stage > 0 and block == 0 else 1, self.dtype)(x, train)
        return nn.Dense(CLASSES, dtype=self.dtype)(jnp.mean(x, axis=(1, 2)))


def flax_model(family: str, shape: dict, dtype: Dtype) -> nn.Module:
    """The family composed from Flax's built-in modules, computing in `dtype` with float32 parameters."""
    check_family(family)
    if family == "conv":
        return FlaxCNN(dtype)
    if family in NUM_GATES:
        cell = {"rnn": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[family]
        return nn.RNN(cell(shape["hidden"], dtype=dtype))
    if family == "attention":
        return FlaxAttention(shape["heads"], dtype)
    if family == "resnet":
        return FlaxResNet(shape["depth"], dtype)
    if family == "gpt":
        return FlaxGPT(shape["vocab"], shape["features"], shape["layers"], shape["heads"], dtype)
    return FlaxViT(shape["patch"], shape["features"], shape["layers"], shape["heads"], dtype)


def build_model(implementation: str, family: str, shape: dict, dtype: Dtype) -> nn.Module:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"benchmarks.jax_models: implementation is {implementation!r}, expected one of "
                         f"{', '.join(IMPLEMENTATIONS)}")
    return (jaxarch_model if implementation == "jaxarch" else flax_model)(family, shape, dtype)


def loss(family: str, outputs, targets):
    """Mean cross-entropy against integer labels (conv, vit, gpt) or mean squared error, in float32."""
    outputs = outputs.astype(jnp.float32)
    if family in ("conv", "vit", "gpt", "resnet"):
        return optax.softmax_cross_entropy_with_integer_labels(outputs, targets).mean()
    return jnp.mean(jnp.square(outputs - targets))


def train_step(model: nn.Module, family: str, inputs: np.ndarray, targets: np.ndarray) -> Callable[[], None]:
    """A self-synchronising callable running one jitted training step (value_and_grad + Adam) on its own state,
    whose buffers are donated to the next step as in a training loop.

    The batch is an argument of the jitted step, as in a training loop: closed over, it would be a compile-time
    constant, and XLA would fold whatever depends on it alone (a first convolution's patches, the input's
    normalisation statistics) out of the timed step.
    """
    inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
    # Models with BatchNorm (resnet) train on batch statistics and update their running averages ("batch_stats"),
    # as a training loop does.
    batch_norm = family == "resnet"
    mode = {"train": False} if batch_norm else {}
    # The "rbg" generator compiles in about half the time of the default threefry; any initial values will do.
    variables = jax.jit(lambda key, x: model.init(key, x, **mode))(jax.random.key(0, impl="rbg"), inputs)
    params = variables["params"]
    model_state = {name: value for name, value in variables.items() if name != "params"}
    optimizer = optax.adam(LEARNING_RATE)

    def loss_fn(params, model_state, inputs, targets):
        if batch_norm:
            outputs, model_state = model.apply({"params": params, **model_state}, inputs, train=True,
                                               mutable=list(model_state))
        else:
            outputs = model.apply({"params": params}, inputs)
        return loss(family, outputs, targets), model_state

    def step(params, opt_state, model_state, inputs, targets):
        (value, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, model_state, inputs,
                                                                                 targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, model_state, value

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    state = [params, optimizer.init(params), model_state]

    def run() -> None:
        state[0], state[1], state[2], _ = jax.block_until_ready(step(*state, inputs, targets))

    return run
