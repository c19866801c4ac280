"""Recurrent models: a stack of RNN/LSTM/GRU layers with a classification, regression or per-position head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxarch.checks import check_size_as_at_init, fail
from jaxarch.layers.recurrent import CELLS, StackedRNN
from jaxarch.models.registry import MODELS
from jaxarch.models.sequence_input import embed_or_check

_READOUTS = ("last", "mean", "sequence")


@MODELS.register("rnn")
class RecurrentNet(nn.Module):
    """inputs: [batch, time, features] floats, or [batch, time] token ids when `vocab_size` > 0.

    returns: [batch, num_outputs] for readout "last" (the final hidden state; forward-final and
    backward-final concatenated when bidirectional) or "mean" (over time); [batch, time, num_outputs] for
    "sequence" (language models, the copy task).
    """

    num_outputs: int
    cell: str = "lstm"  # "rnn" (tanh), "lstm" or "gru".
    hidden_sizes: tuple[int, ...] = (128,)
    bidirectional: bool = False
    dropout_rate: float = 0.0  # Between layers and before the head.
    residual: bool = False
    readout: str = "last"
    vocab_size: int = 0
    embed_dim: int = 32
    unroll: int = 1
    # > 1: consecutive steps stacked into one frame, [B, T, F] -> [B, T / frame_size, frame_size * F], so the
    # recurrence runs frame_size times fewer sequential steps (frame stacking, as in speech models).
    frame_size: int = 1
    chrono_max: int = 0  # LSTM/GRU chrono initialisation for dependencies up to this many steps; 0: off.
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """`x: [batch, time, features]` floats, or `[batch, time]` int token ids when `vocab_size > 0` ->
        `[batch, num_outputs]` (readout "last" or "mean") or `[batch, time, num_outputs]` (readout "sequence").
        `train` turns dropout on (a "dropout" rng).
        """
        if self.cell not in CELLS:
            fail("RecurrentNet", "cell", repr(self.cell), f"one of {sorted(CELLS)}")
        if self.readout not in _READOUTS:
            fail("RecurrentNet", "readout", repr(self.readout), f"one of {list(_READOUTS)}")
        if self.chrono_max and self.cell == "rnn":
            fail("RecurrentNet", "chrono_max", f"{self.chrono_max} with cell 'rnn'", "0: the tanh RNN has no gates")
        x = embed_or_check("RecurrentNet", x, self.vocab_size, self.embed_dim, self.dtype)
        x = self._frames(x)
        first_cell = ("StackedRNN_0", "layer_0", *(("forward_rnn",) if self.bidirectional else ()), "cell")
        check_size_as_at_init("RecurrentNet", "inputs features (axis -1)", x.shape[-1], x.shape, self,
                              (*first_cell, "input_kernel"))
        gates = {"chrono_max": self.chrono_max} if self.chrono_max else {}
        cell_type = lambda features, **kw: CELLS[self.cell](features, dtype=self.dtype, **gates, **kw)
        y = StackedRNN(cell_type, self.hidden_sizes, bidirectional=self.bidirectional,
                       dropout_rate=self.dropout_rate, residual=self.residual, unroll=self.unroll)(
                           x, deterministic=not train)
        if self.readout == "last":
            hidden = self.hidden_sizes[-1]
            # The backward direction has read the whole sequence when it reaches position 0.
            y = jnp.concatenate([y[:, -1, :hidden], y[:, 0, hidden:]], -1) if self.bidirectional else y[:, -1]
        elif self.readout == "mean":
            y = jnp.mean(y, axis=1)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        return nn.Dense(self.num_outputs, dtype=self.dtype, name="head")(y)

    def _frames(self, x: jax.Array) -> jax.Array:
        """[batch, time, features] -> [batch, time / frame_size, frame_size * features]."""
        if self.frame_size == 1:
            return x
        if self.frame_size < 1 or self.readout == "sequence":
            fail("RecurrentNet", "frame_size", f"{self.frame_size} with readout {self.readout!r}",
                 "1, or > 1 only with readout 'last' or 'mean' (frames merge the per-position outputs)")
        batch, time, features = x.shape
        if time % self.frame_size:
            fail("RecurrentNet", "inputs time axis", f"{time} (shape {x.shape})",
                 f"a multiple of frame_size {self.frame_size}")
        return x.reshape(batch, time // self.frame_size, self.frame_size * features)
