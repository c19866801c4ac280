"""The PyTorch side of the suite: every family as `torch.nn` composes it, and its training step (zero_grad,
forward, backward, Adam step), eager or through `torch.compile`.

Imported only inside the PyTorch worker process (`benchmarks/torch_worker.py`); torch is never a dependency of
jaxarch. On a GPU the step runs under `torch.autocast` in bfloat16 with float32 parameters, as the JAX side.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from jaxarch.benchmarks.workloads import (CLASSES, CONV_FEATURES, IMAGE_FAMILIES, MLP_RATIO, NUM_GATES, RESNET_WIDTHS,
                                         check_family, make_data)

LEARNING_RATE = 1e-3


class ConvNet(nn.Module):
    """conv3x3 -> ReLU -> MaxPool2d(2) per entry of CONV_FEATURES, then Linear on the flattened features."""

    def __init__(self, channels: int, image: int):
        super().__init__()
        layers, c_in = [], channels
        for c_out in CONV_FEATURES:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        side = image // 2 ** len(CONV_FEATURES)
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * side * side, CLASSES))

    def forward(self, images):  # [B, C, H, W]
        return self.net(images)


class RecurrentNet(nn.Module):
    """One `nn.RNN` / `nn.LSTM` / `nn.GRU` layer, batch first, returning the outputs `[B, T, H]`."""

    def __init__(self, family: str, features_in: int, hidden: int):
        super().__init__()
        self.rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[family](features_in, hidden, batch_first=True)

    def forward(self, inputs):
        return self.rnn(inputs)[0]


class Block(nn.Module):
    """Pre-LN block: `x + attention(LN(x))`, then `x + mlp(LN(x))`, with `nn.MultiheadAttention`."""

    def __init__(self, features: int, heads: int, causal: bool):
        super().__init__()
        self.causal = causal
        self.attention_norm, self.mlp_norm = nn.LayerNorm(features), nn.LayerNorm(features)
        self.attention = nn.MultiheadAttention(features, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(features, MLP_RATIO * features), nn.GELU(),
                                 nn.Linear(MLP_RATIO * features, features))

    def forward(self, x):
        y = self.attention_norm(x)
        mask = None
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=x.dtype)
        x = x + self.attention(y, y, y, attn_mask=mask, is_causal=self.causal, need_weights=False)[0]
        return x + self.mlp(self.mlp_norm(x))


class GPTNet(nn.Module):
    """Token and learned position embeddings, causal blocks, a final LayerNorm and logits tied to the embedding."""

    def __init__(self, vocab: int, time: int, features: int, heads: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, features)
        self.positions = nn.Parameter(0.02 * torch.randn(time, features))
        self.blocks = nn.Sequential(*[Block(features, heads, causal=True) for _ in range(layers)])
        self.norm = nn.LayerNorm(features)

    def forward(self, tokens):  # [B, T] -> [B, T, vocab]
        x = self.blocks(self.embed(tokens) + self.positions[None])
        return self.norm(x) @ self.embed.weight.T


class ViTNet(nn.Module):
    """Patch embedding by a strided Conv2d, CLS token, learned positions, blocks, LayerNorm, head on CLS."""

    def __init__(self, image: int, channels: int, patch: int, features: int, heads: int, layers: int):
        super().__init__()
        self.patches = nn.Conv2d(channels, features, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, features))
        self.positions = nn.Parameter(0.02 * torch.randn((image // patch) ** 2 + 1, features))
        self.blocks = nn.Sequential(*[Block(features, heads, causal=False) for _ in range(layers)])
        self.norm = nn.LayerNorm(features)
        self.head = nn.Linear(features, CLASSES)

    def forward(self, images):  # [B, C, H, W] -> [B, classes]
        x = self.patches(images).flatten(2).transpose(1, 2)  # [B, N, D]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.positions[None]
        return self.head(self.norm(self.blocks(x))[:, 0])


class BasicBlock(nn.Module):
    """conv3x3 -> BatchNorm2d -> ReLU -> conv3x3 -> BatchNorm2d, plus the option A shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x):  # [B, C, H, W]
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.stride != 1 or self.extra:
            x = nn.functional.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))
        return torch.relu(y + x)


class CifarResNet(nn.Module):
    """The CIFAR ResNet of `depth` = 6n + 2: conv3x3(16) -> BN -> ReLU, three stages of n blocks, pool, Linear."""

    def __init__(self, channels: int, depth: int):
        super().__init__()
        layers, c_in = [nn.Conv2d(channels, RESNET_WIDTHS[0], 3, padding=1, bias=False),
                        nn.BatchNorm2d(RESNET_WIDTHS[0]), nn.ReLU()], RESNET_WIDTHS[0]
        for stage, width in enumerate(RESNET_WIDTHS):
            for block in range((depth - 2) // 6):
                layers.append(BasicBlock(c_in, width, 2 if stage > 0 and block == 0 else 1))
                c_in = width
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, CLASSES))

    def forward(self, images):  # [B, C, H, W] -> [B, classes]
        return self.net(images)


def torch_model(family: str, shape: dict) -> nn.Module:
    check_family(family)
    if family == "conv":
        return ConvNet(shape["channels"], shape["image"])
    if family in NUM_GATES:
        return RecurrentNet(family, shape["features_in"], shape["hidden"])
    if family == "attention":
        return Block(shape["features"], shape["heads"], causal=True)
    if family == "resnet":
        return CifarResNet(shape["channels"], shape["depth"])
    if family == "gpt":
        return GPTNet(shape["vocab"], shape["time"], shape["features"], shape["heads"], shape["layers"])
    return ViTNet(shape["image"], shape["channels"], shape["patch"], shape["features"], shape["heads"],
                  shape["layers"])


def _tensors(family: str, shape: dict, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = make_data(family, shape)
    if family in IMAGE_FAMILIES:
        inputs = np.ascontiguousarray(inputs.transpose(0, 3, 1, 2))  # channels first, torch's layout
    x, y = torch.from_numpy(inputs), torch.from_numpy(targets)
    if y.dtype == torch.int32:
        y = y.long()
    if x.dtype == torch.int32:
        x = x.long()
    return x.to(device), y.to(device)


def train_step(family: str, shape: dict, device: str, compiled: bool) -> Callable[[], None]:
    """A self-synchronising callable running one training step of the family's model."""
    torch.manual_seed(0)
    model = torch_model(family, shape).to(device)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    inputs, targets = _tensors(family, shape, device)
    classify = family in ("conv", "vit", "gpt", "resnet")

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            outputs = forward(inputs).float()
        if classify:
            loss = nn.functional.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))
        else:
            loss = torch.mean(torch.square(outputs - targets))
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return run
