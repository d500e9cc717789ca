"""fvcore op handles for the contractions our variants use and fvcore drops or miscounts.

Each handle takes the traced op's inputs and outputs and returns MACs (one fused multiply-add = 1).
They count the multiply-adds of the contraction itself and ignore everything else (softmax,
scaling, masking, bias adds), which the project does not count anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fvcore.nn.jit_handles import get_shape


def _shapes(values: Sequence[Any]) -> list[list[int]]:
    return [get_shape(v) for v in values]


def matmul_macs(a: list[int], b: list[int]) -> int:
    """MACs of ``a @ b`` with numpy broadcasting and 1-D operands, as ``torch.matmul`` defines it."""
    a = [1] + a if len(a) == 1 else a
    b = b + [1] if len(b) == 1 else b
    batch_a, batch_b = a[:-2], b[:-2]
    n = max(len(batch_a), len(batch_b))
    batch_a = [1] * (n - len(batch_a)) + batch_a
    batch_b = [1] * (n - len(batch_b)) + batch_b
    batch = math.prod(max(x, y) for x, y in zip(batch_a, batch_b))
    return batch * a[-2] * a[-1] * b[-1]


def matmul_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::matmul, aten::bmm, aten::mm: n x k times k x m is n*k*m MACs per batch element."""
    a, b = _shapes(inputs[:2])
    return matmul_macs(a, b)


def baddbmm_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::baddbmm (input + batch1 @ batch2, scaled): the product's MACs; the addition is not a contraction."""
    a, b = _shapes(inputs[1:3])
    return matmul_macs(a, b)


def einsum_equation_macs(equation: str, shapes: list[list[int]]) -> int:
    """MACs of a two-operand einsum: one multiply-add per combination of all its index letters.

    This is exact for a contraction of two operands whose every index appears in the output or
    in both inputs (the only kind our variants use). An index summed out of a single operand is a
    reduction, not a multiply-add, so such equations are rejected rather than miscounted.
    """
    equation = equation.replace(" ", "")
    lhs, _, out = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != 2 or "..." in equation or not out and "->" not in equation:
        raise ValueError(f"einsum '{equation}': only explicit two-operand equations are counted")
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        for letter, size in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), size)
    for letter in sizes:
        in_both = letter in terms[0] and letter in terms[1]
        if letter not in out and not in_both:
            raise ValueError(f"einsum '{equation}': index '{letter}' is summed out of one operand alone")
    return math.prod(sizes.values())


def einsum_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::einsum: see :func:`einsum_equation_macs`."""
    equation = inputs[0].toIValue()
    operands = list(inputs[1].node().inputs())
    return einsum_equation_macs(equation, _shapes(operands))


def sdpa_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::scaled_dot_product_attention: q k^T (L*S*E) plus attention times v (L*S*Ev), per batch."""
    q, k, v = _shapes(inputs[:3])
    batch = math.prod(q[:-2])
    L, E = q[-2], q[-1]
    S, Ev = k[-2], v[-1]
    return batch * L * S * (E + Ev)


HANDLES = {
    "aten::matmul": matmul_handle,
    "aten::bmm": matmul_handle,
    "aten::mm": matmul_handle,
    "aten::baddbmm": baddbmm_handle,
    "aten::einsum": einsum_handle,
    "aten::scaled_dot_product_attention": sdpa_handle,
}

def not_counted(inputs: list[Any], outputs: list[Any]) -> int:
    """Normalisation and pooling: not multiply-adds of a contraction, and torchvision's MACs omit them."""
    return 0


NOT_COUNTED = (
    "aten::batch_norm",
    "aten::group_norm",
    "aten::layer_norm",
    "aten::instance_norm",
    "aten::adaptive_avg_pool2d",
    "aten::upsample_nearest2d",
    "aten::upsample_bilinear2d",
)
HANDLES.update(dict.fromkeys(NOT_COUNTED, not_counted))
