"""Kubernetes resource quantities (``"500m"``, ``"40Gi"``, ``"1e3"``) as exact fractions.

The grammar is apimachinery's ``resource.Quantity``: a signed decimal number followed by a binary SI
suffix (``Ki``…``Ei``), a decimal SI suffix (``n u m k M G T P E``) or an exponent (``e3``).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Final

_BINARY: Final = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL: Final = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY: Final = re.compile(
    r"(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE]?)"
)
MIB: Final = 2**20


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity."""


def parse_quantity(value: object) -> tuple[Fraction, str]:
    """Return (value, suffix) of a quantity; JSON integers are accepted as plain numbers."""
    if isinstance(value, bool):
        raise QuantityError(f"expected a quantity string, got {value!r}")
    if isinstance(value, int):
        return Fraction(value), ""
    if not isinstance(value, str):
        raise QuantityError(f"expected a quantity string, got {type(value).__name__}")
    m = _QUANTITY.fullmatch(value)
    if m is None:
        raise QuantityError(f"not a quantity: {value!r}")
    number = Fraction(m["num"])
    suffix = m["suffix"]
    if suffix in _BINARY:
        return number * _BINARY[suffix], suffix
    if suffix[:1] in ("e", "E"):
        exponent = int(suffix[1:])
        if abs(exponent) > 60:
            raise QuantityError(f"exponent out of range: {value!r}")
        return number * Fraction(10) ** exponent, suffix
    return number * _DECIMAL[suffix], suffix


def milli_cpu(value: object) -> int:
    """CPU quantity in millicores, rounded up as Kubernetes does (``"0.1"`` → 100)."""
    amount, _ = parse_quantity(value)
    return math.ceil(amount * 1000)


def byte_count(value: object) -> int:
    """Memory quantity in bytes, rounded up."""
    amount, _ = parse_quantity(value)
    return math.ceil(amount)


def count(value: object) -> int:
    """A whole-number quantity such as ``nvidia.com/gpu: "2"``; fractions are an error."""
    amount, _ = parse_quantity(value)
    if amount.denominator != 1:
        raise QuantityError(f"expected a whole number, got {value!r}")
    return int(amount)


def gpu_memory_mib(value: object) -> int:
    """GPU memory in MiB.

    Unit rule: the extended resource ``gpuscale.io/gpu-memory`` counts MiB, so a number is MiB
    whatever decimal form it takes: ``"40960"``, ``40960``, ``"4e4"``, and ``"50k"`` or ``"2M"``,
    which is how kube-apiserver writes 50000 and 2000000 back (it canonicalises quantities, so a
    pod created with ``"50000"`` is read as ``"50k"``). A binary suffix (``"40Gi"``, ``"512Mi"``)
    is a byte size, converted to MiB rounding up. Sub-unit suffixes (``m``, ``u``, ``n``) are
    rejected: a milli-MiB is always a mistake.
    """
    amount, suffix = parse_quantity(value)
    if suffix in ("m", "u", "n"):
        raise QuantityError(f"GPU memory cannot use the suffix {suffix!r}: {value!r}")
    if amount < 0:
        raise QuantityError(f"GPU memory cannot be negative: {value!r}")
    if suffix in _BINARY:
        return math.ceil(amount / MIB)
    return math.ceil(amount)
