"""Kubernetes resource quantities (``2``, ``500m``, ``1.5Gi``, ``1e3``) as exact decimals.

The same grammar and suffixes as ``k8s.io/apimachinery``'s resource.Quantity (and the official Python client's
``kubernetes.utils.parse_quantity``); written here because the pure core may not import the API client
(``lint-imports`` holds it to that), and it is a dozen lines.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")


def parse_quantity(value: object) -> Decimal:
    """The quantity as a Decimal in base units; ValueError when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{value!r} is not a quantity")
    if not isinstance(value, str):
        return Decimal(str(value))
    found = _QUANTITY.match(value.strip())
    if found is None:
        raise ValueError(f"{value!r} is not a quantity")
    number, suffix = found.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as error:  # pragma: no cover - the pattern admits only decimals
        raise ValueError(f"{value!r} is not a quantity") from error
    if suffix in _BINARY:
        return base * Decimal(1024) ** _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return base.scaleb(int(suffix[1:]))
    return base.scaleb(_DECIMAL[suffix])
