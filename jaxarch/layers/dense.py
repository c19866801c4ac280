"""`flat_dot_general`: the `dot_general` that jaxarch's attention layers and Transformer models give
`flax.linen.Dense` / `DenseGeneral`.

A Dense layer on `[batch, time, features]` contracts the last axis; its kernel gradient then contracts the two
leading axes of the input and of the output gradient at once. XLA:CPU lowers that two-axis contraction to
transposes and a slow generic dot, while the same product written on `[batch * time, features]` matrices runs
as one fast matmul (docs/performance/cpu.md has the measurements).

`flat_dot_general` flattens the non-contracted axes of both operands into matrices, multiplies, and restores the
shape; it is `lax.dot_general` for any other contraction. The forward values are those of `lax.dot_general`
(XLA multiplies the same matrices); gradients differ only in the order of a float sum. The parameters are those of
plain flax, so checkpoints and `flax.linen.Dense` stay interchangeable.
"""

from __future__ import annotations

import math

from jax import lax


def flat_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`lax.dot_general`, as a 2-D matmul when `lhs`'s trailing axes contract with `rhs`'s leading axes."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    count = len(lhs_contract)
    trailing = tuple(lhs_contract) == tuple(range(lhs.ndim - count, lhs.ndim))
    leading = tuple(rhs_contract) == tuple(range(count))
    if lhs_batch or rhs_batch or not (trailing and leading) or lhs.ndim - count < 2:
        # Batched, permuted, or already a matrix on the left: nothing to flatten.
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
    outer, inner = math.prod(lhs.shape[:lhs.ndim - count]), math.prod(lhs.shape[lhs.ndim - count:])
    matrix = rhs.reshape(inner, math.prod(rhs.shape[count:]))
    out = lax.dot_general(lhs.reshape(outer, inner), matrix, (((1,), (0,)), ((), ())),
                          precision=precision, preferred_element_type=preferred_element_type)
    return out.reshape(lhs.shape[:lhs.ndim - count] + rhs.shape[count:])
