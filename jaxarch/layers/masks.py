"""What an attention mask hides, defined once, and the boolean mask helpers built from that definition.

One convention everywhere: boolean, True means attend, broadcastable to `[batch, heads, q_len, kv_len]`.

Query row `i` of example `b` sits at key position `p = i + q_offset[b]` (offset 0 by default: top-left aligned,
as `jax.nn.dot_product_attention`). It sees key `j` if and only if

    lowest(b, i) <= j <= highest(b, i),  i < q_lengths[b],  and the dense boolean `mask[b, h, i, j]`,

with `lowest = max(0, p - window_size + 1)` (0 without a window) and `highest` the smallest of `kv_len - 1`,
`kv_lengths[b] - 1`, `p` (causal) and `p + window_size - 1` (a window that is not causal). `MaskSpec` holds
the numbers of that rule (everything but the dense mask); the public helpers below, the "xla" kernel's mask,
the blockwise kernel's chunk masks and chunk liveness, and the cuDNN kernel's zeroing of empty rows all derive
from `MaskSpec.key_bounds`. Both bounds never decrease as `i` grows, which is what makes the interval
arguments below (a chunk's live keys, the rows that see any key) exact or safely conservative.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxarch.checks import (check_axis_size, check_broadcastable, check_floating, check_integer, check_positive_ints,
                            check_rank, fail)


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """The masks described by a few numbers (see the module docstring), generated wherever they are needed.

    `q_offset`, `q_lengths`, `kv_lengths` are int32 arrays (`[B|1]`, `[B]`, `[B]`) or None: None means offset 0,
    or no such lengths. They are pytree data (traced under `jit`); `is_causal` and `window_size` are static.
    """

    is_causal: bool
    window_size: int | None
    q_offset: Any  # int32 [B|1]; None when statically zero or unused (neither causal nor windowed)
    q_lengths: Any  # int32 [B] or None
    kv_lengths: Any  # int32 [B] or None

    @property
    def hides_nothing(self) -> bool:
        """True when these masks hide no key from any query row (they may then be skipped altogether)."""
        return (not self.is_causal and self.window_size is None and self.q_lengths is None
                and self.kv_lengths is None)

    def key_bounds(self, q_index, kv_len: int, xp=jnp):
        """`(lowest, highest)`, int `[B|1, n]`: query rows `q_index: [n]` see keys `lowest..highest` (inclusive;
        none when `lowest > highest`) before `q_lengths` and the dense mask. `kv_len` is the number of real keys
        (keys at or beyond it are padding). `xp=np` evaluates static specs (no arrays) in NumPy at trace time."""
        position = q_index[None, :]  # [1, n]
        if self.q_offset is not None:
            position = position + self.q_offset[:, None]  # [B|1, n]
        lowest = xp.zeros_like(position)
        highest = xp.full_like(position, kv_len - 1)
        if self.kv_lengths is not None:
            highest = xp.minimum(highest, self.kv_lengths[:, None] - 1)
        if self.is_causal:
            highest = xp.minimum(highest, position)
        if self.window_size is not None:
            lowest = xp.maximum(lowest, position - self.window_size + 1)
            if not self.is_causal:
                highest = xp.minimum(highest, position + self.window_size - 1)
        return lowest, highest

    def query_valid(self, q_index):
        """Bool `[B, n]` (whether row `q_index` is a real query row), or None without `q_lengths`."""
        if self.q_lengths is None:
            return None
        return q_index[None, :] < self.q_lengths[:, None]

    def mask(self, q_index, kv_index, kv_len: int | None = None):
        """Bool `[B|1, 1, n, m]` for query rows `q_index: [n]` and keys `kv_index: [m]` (the rule above, without
        the dense mask). Keys at or beyond `kv_len` (blockwise padding) are hidden; by default `kv_len` is `m`
        (`kv_index` is `arange(m)`, all real keys)."""
        kv_len = kv_index.shape[0] if kv_len is None else kv_len
        lowest, highest = self.key_bounds(q_index, kv_len)
        keys = kv_index[None, None, :]  # [1, 1, m]
        mask = jnp.logical_and(lowest[:, :, None] <= keys, keys <= highest[:, :, None])  # [B|1, n, m]
        valid = self.query_valid(q_index)
        if valid is not None:
            mask = jnp.logical_and(mask, valid[:, :, None])
        return mask[:, None]

    def every_row_sees_a_key(self, q_index: np.ndarray, kv_len: int) -> bool:
        """Whether, statically, every query row `q_index` (a NumPy array) sees at least one key under these masks
        alone. False whenever offsets or lengths are arrays, whose values are unknown while tracing."""
        if self.q_offset is not None or self.q_lengths is not None or self.kv_lengths is not None:
            return False
        lowest, highest = self.key_bounds(np.asarray(q_index), kv_len, xp=np)
        return bool(np.all(lowest <= highest))

    def rows_with_keys(self, q_len: int, kv_len: int, dense=None):
        """Bool `[B|1, H|1, q_len]`: whether query row `i` sees any key. From the key interval alone (no
        `[q_len, kv_len]` array) when there is no dense mask `[B|1, H|1, q_len, kv_len]`."""
        q_index = jnp.arange(q_len)
        if dense is not None:
            visible = jnp.logical_and(dense, self.mask(q_index, jnp.arange(kv_len), kv_len))
            return jnp.any(visible, axis=-1)
        lowest, highest = self.key_bounds(q_index, kv_len)
        rows = lowest <= highest
        valid = self.query_valid(q_index)
        if valid is not None:
            rows = jnp.logical_and(rows, valid)
        return rows[:, None]

    def chunk_is_live(self, q_starts, q_chunk: int, kv_starts, kv_chunk: int, kv_len: int):
        """Bool `[nq, nk]`: False where these masks hide every (query, key) pair of the chunk of rows
        `q_starts[a] + arange(q_chunk)` and keys `kv_starts[c] + arange(kv_chunk)`, for every example.

        A visible pair `(i, j)` of the chunk has `lowest(first row) <= lowest(i) <= j <= last key` and
        `first key <= j <= highest(i) <= highest(last row)` (the bounds never decrease), and a real row
        `i >= first row`; so a chunk failing these tests hides every pair, and a dead chunk may be skipped.
        """
        q_starts, kv_starts = jnp.atleast_1d(q_starts), jnp.atleast_1d(kv_starts)
        lowest, _ = self.key_bounds(q_starts, kv_len)  # [B|1, nq], at each chunk's first row
        _, highest = self.key_bounds(q_starts + q_chunk - 1, kv_len)  # at its last row
        kv_first = kv_starts[None, None, :]  # [1, 1, nk]
        live = jnp.logical_and(lowest[:, :, None] <= kv_first + kv_chunk - 1, kv_first <= highest[:, :, None])
        valid = self.query_valid(q_starts)
        if valid is not None:
            live = jnp.logical_and(live, valid[:, :, None])
        return jnp.any(live, axis=0)


jax.tree_util.register_dataclass(
    MaskSpec, data_fields=["q_offset", "q_lengths", "kv_lengths"], meta_fields=["is_causal", "window_size"])


def logical_and(a, b):
    """`a & b` for masks that may be None (absent: hides nothing)."""
    if a is None:
        return b
    if b is None:
        return a
    return jnp.logical_and(a, b)


# ----------------------------------------------------------------------------------------------------------
# Argument checks shared with the dispatcher.


def check_offset(module: str, offset):
    """Returns `offset` (int or integer array `[]` / `[batch]`) as an int32 array `[1]` or `[batch]`."""
    if isinstance(offset, (int, np.integer)):
        return jnp.full((1,), int(offset), jnp.int32)
    check_rank(module, "offset", offset, (0, 1), "[] or [batch]")
    check_integer(module, "offset", offset)
    return jnp.reshape(jnp.asarray(offset, jnp.int32), (-1,))


def check_lengths(module: str, name: str, lengths, batch: int | None = None):
    """Returns integer lengths `[batch]` as int32."""
    check_rank(module, name, lengths, 1, "[batch]")
    check_integer(module, name, lengths)
    if batch is not None:
        check_axis_size(module, name, lengths, 0, batch, "batch size")
    return jnp.asarray(lengths, jnp.int32)


def as_rank4(module: str, name: str, x):
    """Left-pads the shape of a mask or bias of rank <= 4 with ones (the model runs with rank promotion off)."""
    check_rank(module, name, x, (1, 2, 3, 4), "broadcastable to [batch, heads, q_len, kv_len]")
    x = jnp.asarray(x)
    return jnp.reshape(x, (1,) * (4 - x.ndim) + x.shape)


def check_dense(module: str, name: str, x, target, dtype_kind: str):
    """Validates a dense mask (`dtype_kind` "bool") or bias ("float") against `target` = (B, H, Tq, Tk) and
    returns it at rank 4."""
    if dtype_kind == "bool" and jnp.result_type(x) != jnp.bool_:
        fail(module, f"{name} dtype", str(jnp.result_type(x)),
             "bool (True means attend); pass additive masks as bias=")
    if dtype_kind == "float":
        check_floating(module, name, x)
    given = tuple(np.shape(x))  # the caller's shape, which the message quotes, not the padded one
    check_rank(module, name, x, (1, 2, 3, 4), "broadcastable to [batch, heads, q_len, kv_len]")
    layout = "[batch, heads, q_len, kv_len] (lower ranks align with its last axes)"
    if len(given) == 2 and given == (target[0], target[3]) and given != (target[2], target[3]):
        layout += f"; a [batch, kv_len] padding {name} goes in as {name}[:, None, None, :]"
    check_broadcastable(module, name, given, target, layout)
    return as_rank4(module, name, x)


def check_mask_and_bias(module: str, mask, bias, target) -> None:
    """A module's own check of the `mask` (bool) and `bias` (float) it passes down, against `target` =
    (batch, heads, q_len, kv_len), so that a wrong shape is reported under the module the user called."""
    if mask is not None:
        check_dense(module, "mask", mask, target, "bool")
    if bias is not None:
        check_dense(module, "bias", bias, target, "float")


# ----------------------------------------------------------------------------------------------------------
# Public mask helpers.


def causal_mask(q_len: int, kv_len: int | None = None, offset=0) -> jnp.ndarray:
    """Causal mask: query `i` attends to keys `j <= i + offset`.

    Returns bool `[1, 1, q_len, kv_len]`, or `[batch, 1, q_len, kv_len]` when `offset` is an integer array
    `[batch]`. `offset` 0 aligns the first query with the first key (as `jax.nn.dot_product_attention`);
    `kv_len - q_len` aligns the last query with the last key (queries that continue a cached prefix).
    """
    module = "causal_mask"
    kv_len = q_len if kv_len is None else kv_len
    check_positive_ints(module, "q_len", q_len)
    check_positive_ints(module, "kv_len", kv_len)
    spec = MaskSpec(is_causal=True, window_size=None, q_offset=check_offset(module, offset), q_lengths=None,
                    kv_lengths=None)
    return spec.mask(jnp.arange(q_len), jnp.arange(kv_len), kv_len)


def sliding_window_mask(q_len: int, kv_len: int, window: int, causal: bool = True, offset=0) -> jnp.ndarray:
    """Local attention (Beltagy et al. 2020): query at position `p = i + offset` attends to keys `j` with
    `p - window < j <= p` (causal; `window` keys including itself) or `|p - j| < window` (not causal).

    Returns bool `[1 or batch, 1, q_len, kv_len]` (see `causal_mask` for `offset`).
    """
    module = "sliding_window_mask"
    check_positive_ints(module, "q_len", q_len)
    check_positive_ints(module, "kv_len", kv_len)
    check_positive_ints(module, "window", window)
    spec = MaskSpec(is_causal=bool(causal), window_size=int(window), q_offset=check_offset(module, offset),
                    q_lengths=None, kv_lengths=None)
    return spec.mask(jnp.arange(q_len), jnp.arange(kv_len), kv_len)


def padding_mask(*, kv_lengths=None, kv_len: int | None = None, q_lengths=None, q_len: int | None = None):
    """Mask from sequence lengths: key `j` is visible iff `j < kv_lengths[b]`, query row `i` attends at all iff
    `i < q_lengths[b]` (padded query rows then return zeros).

    `*_lengths`: int `[batch]`; `*_len`: the padded time length of that axis, required with its lengths.
    Returns bool `[batch, 1, q_len or 1, kv_len or 1]`.
    """
    module = "padding_mask"
    if kv_lengths is None and q_lengths is None:
        fail(module, "kv_lengths and q_lengths", "both None", "at least one of them")
    batch = None
    if kv_lengths is not None:
        if kv_len is None:
            fail(module, "kv_len", None, "the padded key length (an int) when kv_lengths is given")
        check_positive_ints(module, "kv_len", kv_len)
        kv_lengths = check_lengths(module, "kv_lengths", kv_lengths)
        batch = kv_lengths.shape[0]
    if q_lengths is not None:
        if q_len is None:
            fail(module, "q_len", None, "the padded query length (an int) when q_lengths is given")
        check_positive_ints(module, "q_len", q_len)
        q_lengths = check_lengths(module, "q_lengths", q_lengths, batch)
    q_rows = q_len if q_lengths is not None else 1
    kv_columns = kv_len if kv_lengths is not None else 1
    spec = MaskSpec(is_causal=False, window_size=None, q_offset=None, q_lengths=q_lengths, kv_lengths=kv_lengths)
    mask = spec.mask(jnp.arange(q_rows), jnp.arange(kv_columns), kv_columns)
    return jnp.broadcast_to(mask, (batch or q_lengths.shape[0], 1, q_rows, kv_columns))


def combine_masks(*masks):
    """Logical AND of boolean masks, skipping None; None when every mask is None. Returns rank 4."""
    module = "combine_masks"
    present, given = [], []
    for index, mask in enumerate(masks):
        if mask is None:
            continue
        if jnp.result_type(mask) != jnp.bool_:
            fail(module, f"masks[{index}] dtype", str(jnp.result_type(mask)), "bool (True means attend)")
        given.append(tuple(np.shape(mask)))
        present.append(as_rank4(module, f"masks[{index}]", mask))
    if not present:
        return None
    try:
        np.broadcast_shapes(*(m.shape for m in present))
    except ValueError:
        fail(module, "mask shapes", str(given), "shapes broadcastable to one [batch, heads, q_len, kv_len] "
             "(lower ranks align with its last axes)")
    return functools.reduce(jnp.logical_and, present)
