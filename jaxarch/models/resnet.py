"""Residual networks of basic blocks (He et al. 2016, "Deep Residual Learning for Image Recognition").

- The CIFAR family (the paper's section 4.2): a 3x3 convolution of `width` channels, then three stages of
  `n` basic blocks at `width`, `2 width` and `4 width` channels (16-32-64 by default) on 32x32, 16x16 and 8x8
  maps, global average pooling and a Dense layer: `depth = 6 n + 2` (ResNet-20, 32, 44, 56, 110).
- The ImageNet family (the paper's table 1), `stem="imagenet"`: a 7x7 stride-2 convolution of 64 channels and a
  3x3 stride-2 max pool, then four stages of basic blocks at 64-128-256-512 channels, (2, 2, 2, 2) blocks for
  ResNet-18 and (3, 4, 6, 3) for ResNet-34.

A basic block is conv3x3 -> BN -> ReLU -> conv3x3 -> BN, added to its shortcut, then ReLU. The first block of a
stage after the first halves the spatial size (stride 2 in its first convolution) and doubles the channels; its
shortcut is then either (paper, section 3.3)

- option "A": the identity on every other pixel, zero-padded to the new channel count (no parameters; the
  paper's CIFAR networks, whose 91.25% for ResNet-20 is with it), or
- option "B": a 1x1 stride-2 convolution and BN (a projection; the ImageNet networks as torchvision builds them).

Padding is explicit and symmetric (1 for 3x3, 3 for 7x7) as in the paper's Torch code and PyTorch, not XLA's
"SAME", which pads a stride-2 convolution of an even-sized input on the bottom and right only.

BatchNorm's running statistics are the "batch_stats" collection: training (`train=True`) normalises by the
batch's statistics and must be applied with `mutable=["batch_stats"]` to update them; evaluation
(`train=False`) normalises by the running averages and is deterministic. As with Flax's `BatchNorm`
(`use_running_average`), the mode is given explicitly, either as the `use_running_average` field or as the
call's `train` argument, never both and never left out.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxarch.checks import check_floating, check_rank, check_size_as_at_init, fail
from jaxarch.layers.conv import Conv
from jaxarch.layers.pooling import global_avg_pool, max_pool
from jaxarch.models.registry import MODELS

_MODULE = "ResNet"
STEMS = ("cifar", "imagenet")
SHORTCUTS = ("A", "B")
IMAGENET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
IMAGENET_WIDTH = 64
# Kaiming He's initialisation (He et al. 2015), the one the paper trains with: variance 2 / fan_in.
_KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def stage_sizes(depth: int, stem: str) -> tuple[int, ...]:
    """Basic blocks per stage for a ResNet of `depth` layers with `stem` ("cifar": depth 6n + 2 gives (n, n, n);
    "imagenet": 18 or 34)."""
    if stem not in STEMS:
        fail(_MODULE, "stem", repr(stem), f"one of {list(STEMS)}")
    if stem == "imagenet":
        if depth not in IMAGENET_STAGES:
            fail(_MODULE, "depth", depth, f"one of {sorted(IMAGENET_STAGES)} with stem='imagenet' (basic blocks)")
        return IMAGENET_STAGES[depth]
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        fail(_MODULE, "depth", repr(depth), "6n + 2 for n >= 1 with stem='cifar' (8, 14, 20, 32, 44, 56, 110)")
    return ((depth - 2) // 6,) * 3


class BasicBlock(nn.Module):
    """x: [batch, height, width, in_features] -> [batch, height / strides, width / strides, features]."""

    features: int
    strides: int = 1
    shortcut: str = "A"
    use_running_average: bool = False
    bn_momentum: float = 0.9
    dtype: jnp.dtype | None = None
    lowering: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [batch, height, width, in_features] -> [batch, height / strides, width / strides, features]: two
        3x3 convolutions with BatchNorm, added to the shortcut (identity, or option A's zero-padded subsampling or
        option B's 1x1 projection when the shape changes), then ReLU."""
        conv = dict(use_bias=False, dtype=self.dtype, kernel_init=_KERNEL_INIT, lowering=self.lowering)
        norm = dict(use_running_average=self.use_running_average, momentum=self.bn_momentum, epsilon=1e-5,
                    dtype=self.dtype)
        y = Conv(self.features, (3, 3), strides=self.strides, padding=1, **conv)(x)
        y = nn.relu(nn.BatchNorm(**norm)(y))
        y = Conv(self.features, (3, 3), padding=1, **conv)(y)
        y = nn.BatchNorm(**norm)(y)
        residual = x
        if self.strides != 1 or x.shape[-1] != self.features:
            if self.shortcut == "A":
                # Every `strides`-th pixel, channels zero-padded at the end: the shortcut adds no parameters.
                residual = x[:, ::self.strides, ::self.strides, :]
                residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
            else:
                residual = Conv(self.features, (1, 1), strides=self.strides, padding=0, name="projection", **conv)(x)
                residual = nn.BatchNorm(name="projection_norm", **norm)(residual)
        return nn.relu(y + residual.astype(y.dtype))


@MODELS.register("resnet")
class ResNet(nn.Module):
    """x: [batch, height, width, channels] float images -> logits [batch, num_outputs].

    `__call__(x, *, train=None)`: `train=True` normalises by batch statistics (apply with
    `mutable=["batch_stats"]`), `train=False` by the running averages; or fix the mode with the
    `use_running_average` field instead (one of the two, as Flax's `BatchNorm`).
    """

    num_outputs: int
    depth: int = 20  # 6n + 2 with the CIFAR stem (20, 32, 56, ...); 18 or 34 with the ImageNet stem.
    stem: str = "cifar"  # "cifar": conv3x3(width); "imagenet": conv7x7/2(64) and max pool 3x3/2.
    shortcut: str | None = None  # "A" or "B" (module docstring); None: "A" for CIFAR, "B" for ImageNet.
    width: int | None = None  # Channels of the first stage, doubled at each next one; None: 16 CIFAR, 64 ImageNet.
    use_running_average: bool | None = None  # The mode as a field; else `train` at the call.
    bn_momentum: float = 0.9  # Running average weight of the old value (PyTorch's momentum 0.1).
    dtype: jnp.dtype | None = None
    lowering: str = "auto"  # Conv's: "patches" (im2col matmuls), "xla", or "auto" (the faster on CPU, see Conv).

    def _check(self, x: jax.Array, train: bool | None) -> bool:
        """The options and the input checked; returns whether BatchNorm uses its running averages."""
        stage_sizes(self.depth, self.stem)
        if self.shortcut is not None and self.shortcut not in SHORTCUTS:
            fail(_MODULE, "shortcut", repr(self.shortcut), f"one of {list(SHORTCUTS)} or None")
        if self.width is not None and (not isinstance(self.width, int) or self.width < 1):
            fail(_MODULE, "width", repr(self.width), "a positive int or None")
        if self.use_running_average is not None and train is not None:
            fail(_MODULE, "mode", f"given both as use_running_average={self.use_running_average} and as "
                 f"train={train}", "exactly one of them")
        if self.use_running_average is None and train is None:
            fail(_MODULE, "mode", "not given", "train=True (batch statistics) or train=False (running averages) "
                 "at the call, or the use_running_average field")
        check_rank(_MODULE, "input", x, 4, "[batch, height, width, channels]")
        check_floating(_MODULE, "input", x)
        check_size_as_at_init(_MODULE, "input channels (axis -1)", x.shape[-1], x.shape, self, ("stem", "kernel"),
                              axis=-2)
        return bool(self.use_running_average if train is None else not train)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool | None = None) -> jax.Array:
        """x: [batch, height, width, channels] float -> logits [batch, num_outputs].

        Args:
          x: images, channels last.
          train: True normalises with the batch's statistics and updates `batch_stats` (apply with
            `mutable=["batch_stats"]`); False uses the running averages. Give it here or as the
            `use_running_average` field, not both.
        """
        use_running_average = self._check(x, train)
        imagenet = self.stem == "imagenet"
        shortcut = self.shortcut or ("B" if imagenet else "A")
        width = self.width or (IMAGENET_WIDTH if imagenet else 16)
        norm = dict(use_running_average=use_running_average, momentum=self.bn_momentum, epsilon=1e-5,
                    dtype=self.dtype)
        if imagenet:
            x = Conv(width, (7, 7), strides=2, padding=3, use_bias=False, dtype=self.dtype,
                     kernel_init=_KERNEL_INIT, lowering=self.lowering, name="stem")(x)
            x = nn.relu(nn.BatchNorm(name="stem_norm", **norm)(x))
            # jaxarch's max_pool never lets padding win a max, as PyTorch's MaxPool2d(3, 2, padding=1).
            x = max_pool(x, (3, 3), strides=2, padding=1)
        else:
            x = Conv(width, (3, 3), padding=1, use_bias=False, dtype=self.dtype, kernel_init=_KERNEL_INIT,
                     lowering=self.lowering, name="stem")(x)
            x = nn.relu(nn.BatchNorm(name="stem_norm", **norm)(x))
        for stage, blocks in enumerate(stage_sizes(self.depth, self.stem)):
            for block in range(blocks):
                x = BasicBlock(width * 2 ** stage, strides=2 if stage > 0 and block == 0 else 1,
                               shortcut=shortcut, use_running_average=use_running_average,
                               bn_momentum=self.bn_momentum, dtype=self.dtype, lowering=self.lowering,
                               name=f"stage{stage + 1}_block{block + 1}")(x)
        x = global_avg_pool(x)  # [batch, channels]
        return nn.Dense(self.num_outputs, dtype=self.dtype, name="head")(x)
