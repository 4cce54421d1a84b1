"""Kubernetes memory quantities (``16Gi``) as byte counts, and back."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from kubernetes.utils import parse_quantity

_BINARY_UNITS = (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024))


def memory_bytes(value: str | int | float) -> int:
    """Bytes in a memory quantity; ValueError for anything that is not one.

    Numbers are taken as bytes, as Kubernetes does. Fractional bytes are refused
    because the API server would round them in ways a user would not expect.
    """
    if isinstance(value, bool):
        raise ValueError("not a quantity")
    text = str(value).strip()
    if not text or len(text) > 32:
        raise ValueError("not a quantity")
    try:
        amount: Decimal = parse_quantity(text)
    except (ValueError, InvalidOperation, TypeError) as exc:
        raise ValueError("not a quantity") from exc
    if not amount.is_finite() or amount < 0 or amount != amount.to_integral_value():
        raise ValueError("not a whole, non-negative number of bytes")
    return int(amount)


def format_memory(num_bytes: int) -> str:
    """The shortest exact binary-unit spelling of a byte count (17179869184 -> '16Gi')."""
    for suffix, factor in _BINARY_UNITS:
        if num_bytes >= factor and num_bytes % factor == 0:
            return f"{num_bytes // factor}{suffix}"
    return str(num_bytes)

