"""Kubernetes quantities (``16Gi``, ``500m``, ``1e3``) as exact numbers, and back.

Parsed here rather than with the Kubernetes client so the core depends on no client:
the grammar is small and fixed by the API (resource.Quantity).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIXES = {
    "Ki": Decimal(1024), "Mi": Decimal(1024**2), "Gi": Decimal(1024**3), "Ti": Decimal(1024**4),
    "Pi": Decimal(1024**5), "Ei": Decimal(1024**6),
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$")
_BINARY_UNITS = (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024))


def parse_quantity(value: str | int | float) -> Decimal:
    """The exact value of a Kubernetes quantity; ValueError for anything that is not one."""
    if isinstance(value, bool):
        raise ValueError("not a quantity")
    if isinstance(value, int):
        return Decimal(value)
    text = str(value).strip()
    match = _QUANTITY.match(text) if len(text) <= 32 else None
    if match is None:
        raise ValueError(f"{text[:32]!r} is not a quantity")
    number, exponent, suffix = match.groups()
    try:
        amount = Decimal(number)
        return amount * Decimal(f"1{exponent}") if exponent else amount * _SUFFIXES[suffix or ""]
    except InvalidOperation as exc:
        raise ValueError(f"{text!r} is not a quantity") from exc


def memory_bytes(value: str | int | float) -> int:
    """Bytes in a memory quantity; ValueError for anything that is not one.

    Numbers are taken as bytes, as Kubernetes does. Fractional bytes are refused
    because the API server would round them in ways a user would not expect.
    """
    amount = parse_quantity(value)
    if not amount.is_finite() or amount < 0 or amount != amount.to_integral_value():
        raise ValueError("not a whole, non-negative number of bytes")
    return int(amount)


def format_memory(num_bytes: int) -> str:
    """The shortest exact binary-unit spelling of a byte count (17179869184 -> '16Gi')."""
    for suffix, factor in _BINARY_UNITS:
        if num_bytes >= factor and num_bytes % factor == 0:
            return f"{num_bytes // factor}{suffix}"
    return str(num_bytes)


def format_size(num_bytes: int) -> str:
    """A byte count for reading: exact where it is a whole number of a binary unit, else to a
    tenth of the largest unit it reaches (3435973837 -> '3.2Gi')."""
    for suffix, factor in _BINARY_UNITS:
        if num_bytes >= factor:
            exact, rest = divmod(num_bytes, factor)
            return f"{exact}{suffix}" if not rest else f"{num_bytes / factor:.1f}{suffix}"
    return str(num_bytes)
