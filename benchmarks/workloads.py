"""What the suite trains: each family's shapes at each size, its data and its counted FLOPs.

Only numpy here, so the JAX side (`benchmarks/jax_models.py`) and the PyTorch worker (`benchmarks/torch_models.py`)
build identical workloads from it.

FLOPs are counted from the matmuls and convolutions alone, two per multiply-add; normalisation, softmax,
activations, the loss and the optimizer are left out. A training step counts three forward passes: the forward
product, the gradient with respect to its input and the gradient with respect to its weights each cost one
(the first layer's input gradient, which no framework computes, is counted too: the usual 3x rule). Per family,
for one forward pass:

- conv (conv3x3(32)-relu-maxpool2-conv3x3(64)-relu-maxpool2-dense, SAME padding):
  sum over convs of 2 * B * H_l * W_l * 9 * C_in * C_out, plus 2 * B * (H/4 * W/4 * 64) * classes;
- rnn / lstm / gru (one layer): 2 * B * T * (in + H) * G * H with G = 1 / 4 / 3 gates;
- attention (one pre-LN causal block, MLP ratio 4): 2 * B * T * (4 D^2 + 8 D^2) for the projections and the MLP,
  plus 4 * B * T^2 * D for q k^T and the weighted sum of values over the full square (the causal half that is
  masked out is counted, as the dense kernel computes it);
- gpt: layers x the attention block, plus 2 * B * T * D * vocab for the output layer;
- vit: 2 * B * N * p^2 * C * D for the patch embedding (N patches of p x p), layers x a non-causal block over
  N + 1 tokens (the CLS token), plus 2 * B * D * classes;
- resnet (CIFAR ResNet of `depth` = 6n + 2, option A shortcuts, 16-32-64 channels): the 3x3 stem
  2 * B * H * W * 9 * C * 16, then per 3x3 convolution 2 * B * H_out * W_out * 9 * C_in * C_out (stage s at
  H / 2^s), plus 2 * B * 64 * classes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FAMILIES = ("conv", "rnn", "lstm", "gru", "attention", "gpt", "vit", "resnet")
IMAGE_FAMILIES = ("conv", "vit", "resnet")
SIZES = ("small", "reference", "large")
NUM_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
CLASSES = 10
MLP_RATIO = 4
CONV_FEATURES = (32, 64)
RESNET_WIDTHS = (16, 32, 64)

_RECURRENT = {
    "small": dict(batch=16, time=32, features_in=16, hidden=64),
    "reference": dict(batch=64, time=128, features_in=64, hidden=256),
    "large": dict(batch=64, time=256, features_in=128, hidden=512),
}
_CPU_SHAPES = {
    "conv": {
        "small": dict(batch=32, image=28, channels=1),
        "reference": dict(batch=128, image=28, channels=1),
        "large": dict(batch=64, image=64, channels=3),
    },
    "rnn": _RECURRENT,
    "lstm": _RECURRENT,
    "gru": _RECURRENT,
    "attention": {
        "small": dict(batch=4, time=64, features=128, heads=4),
        "reference": dict(batch=16, time=256, features=256, heads=4),
        "large": dict(batch=16, time=512, features=256, heads=4),
    },
    "gpt": {
        "small": dict(batch=4, time=64, features=128, heads=4, layers=2, vocab=256),
        "reference": dict(batch=16, time=256, features=256, heads=4, layers=4, vocab=256),
        "large": dict(batch=8, time=512, features=256, heads=4, layers=4, vocab=256),
    },
    "vit": {
        "small": dict(batch=32, image=32, channels=3, patch=4, features=128, heads=4, layers=2),
        "reference": dict(batch=64, image=32, channels=3, patch=4, features=192, heads=3, layers=6),
        "large": dict(batch=32, image=64, channels=3, patch=8, features=256, heads=4, layers=6),
    },
    "resnet": {  # The reference is ResNet-20 on CIFAR-10's shapes at the paper's batch of 128.
        "small": dict(batch=32, image=32, channels=3, depth=8),
        "reference": dict(batch=128, image=32, channels=3, depth=20),
        "large": dict(batch=128, image=32, channels=3, depth=56),
    },
}
# On a GPU or TPU the large size is one that fills the chip (the model-FLOP utilisation target is set there).
_ACCELERATOR_LARGE = {
    "conv": dict(batch=256, image=128, channels=3),
    "rnn": dict(batch=256, time=512, features_in=512, hidden=1024),
    "lstm": dict(batch=256, time=512, features_in=512, hidden=1024),
    "gru": dict(batch=256, time=512, features_in=512, hidden=1024),
    "attention": dict(batch=32, time=2048, features=1024, heads=8),
    "gpt": dict(batch=8, time=2048, features=2048, heads=16, layers=8, vocab=32768),
    "vit": dict(batch=256, image=224, channels=3, patch=16, features=768, heads=12, layers=12),
    "resnet": dict(batch=1024, image=32, channels=3, depth=56),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One family at one size: the shape parameters and what a training step does."""

    family: str
    size: str
    shape: dict
    train_flops: float  # counted FLOPs of one training step, see the module docstring
    items_per_step: int  # images (conv, vit) or tokens (the sequence families) per step
    item_unit: str


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"benchmarks.workloads: family is {family!r}, expected one of {', '.join(FAMILIES)}")


def shape_of(family: str, size: str, backend: str = "cpu") -> dict:
    """The shape parameters of `family` at `size` ("small", "reference", "large") on `backend`."""
    check_family(family)
    if size not in SIZES:
        raise ValueError(f"benchmarks.workloads: size is {size!r}, expected one of {', '.join(SIZES)}")
    if size == "large" and backend != "cpu":
        return dict(_ACCELERATOR_LARGE[family])
    return dict(_CPU_SHAPES[family][size])


def block_forward_flops(batch: int, time: int, features: int) -> float:
    """One pre-LN Transformer block (projections, full-square attention, MLP ratio 4), forward."""
    projections = 2 * batch * time * (4 + 2 * MLP_RATIO) * features ** 2
    return projections + 4 * batch * time ** 2 * features


def forward_flops(family: str, shape: dict) -> float:
    """Counted FLOPs of one forward pass (see the module docstring)."""
    check_family(family)
    if family == "conv":
        batch, size, channels = shape["batch"], shape["image"], shape["channels"]
        flops, c_in = 0, channels
        for index, c_out in enumerate(CONV_FEATURES):
            side = size // 2 ** index
            flops += 2 * batch * side * side * 9 * c_in * c_out
            c_in = c_out
        return flops + 2 * batch * (size // 4) ** 2 * c_in * CLASSES
    if family in NUM_GATES:
        hidden = shape["hidden"]
        return 2 * shape["batch"] * shape["time"] * (shape["features_in"] + hidden) * NUM_GATES[family] * hidden
    if family == "attention":
        return block_forward_flops(shape["batch"], shape["time"], shape["features"])
    if family == "gpt":
        blocks = shape["layers"] * block_forward_flops(shape["batch"], shape["time"], shape["features"])
        return blocks + 2 * shape["batch"] * shape["time"] * shape["features"] * shape["vocab"]
    if family == "resnet":
        return resnet_forward_flops(shape)
    batch, features, patch = shape["batch"], shape["features"], shape["patch"]  # vit
    patches = (shape["image"] // patch) ** 2
    embed = 2 * batch * patches * patch ** 2 * shape["channels"] * features
    blocks = shape["layers"] * block_forward_flops(batch, patches + 1, features)
    return embed + blocks + 2 * batch * features * CLASSES


def resnet_forward_flops(shape: dict) -> float:
    """The CIFAR ResNet's convolutions and its Dense head, forward (option A shortcuts have no FLOPs)."""
    batch, side, blocks = shape["batch"], shape["image"], (shape["depth"] - 2) // 6
    flops, c_in = 2 * batch * side * side * 9 * shape["channels"] * RESNET_WIDTHS[0], RESNET_WIDTHS[0]
    for stage, width in enumerate(RESNET_WIDTHS):
        out = side // 2 ** stage
        for _ in range(blocks):
            flops += 2 * batch * out * out * 9 * (c_in + width) * width  # Its two 3x3 convolutions.
            c_in = width
    return flops + 2 * batch * RESNET_WIDTHS[-1] * CLASSES


def workload(family: str, size: str, backend: str = "cpu") -> Workload:
    shape = shape_of(family, size, backend)
    images = family in IMAGE_FAMILIES
    items = shape["batch"] if images else shape["batch"] * shape["time"]
    return Workload(family, size, shape, 3.0 * forward_flops(family, shape), items, "images" if images else "tokens")


def make_data(family: str, shape: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`(inputs, targets)` as numpy arrays, channels-last images; the same on every side of the comparison.

    conv, vit, resnet: images `[B, H, W, C]` float32 and labels `[B]` int32; rnn, lstm, gru: `[B, T, in]` and a
    regression target `[B, T, H]`; attention: `[B, T, D]` and a target `[B, T, D]`; gpt: token ids `[B, T]` and next
    tokens `[B, T]`, int32.
    """
    check_family(family)
    rng = np.random.default_rng(seed)
    batch = shape["batch"]
    if family in IMAGE_FAMILIES:
        images = rng.standard_normal((batch, shape["image"], shape["image"], shape["channels"]), np.float32)
        return images, rng.integers(0, CLASSES, batch).astype(np.int32)
    if family in NUM_GATES:
        inputs = rng.standard_normal((batch, shape["time"], shape["features_in"]), np.float32)
        return inputs, rng.standard_normal((batch, shape["time"], shape["hidden"]), np.float32)
    if family == "attention":
        size = (batch, shape["time"], shape["features"])
        return rng.standard_normal(size, np.float32), rng.standard_normal(size, np.float32)
    tokens = rng.integers(0, shape["vocab"], (batch, shape["time"] + 1)).astype(np.int32)
    return tokens[:, :-1], tokens[:, 1:]
