"""Numbers as the report reads and prints them: parsing values of summary.json, and one
format per kind of quantity."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["FORMATS", "MISSING", "as_float", "fmt"]

#: How each kind of quantity is printed; the unit stands in the label, not in the number.
FORMATS: dict[str, Callable[[float], str]] = {
    "money": lambda v: f"{v:,.2f}",
    "fraction": lambda v: f"{100.0 * v:.1f}",
    "energy": lambda v: f"{v:,.1f}",
    "price": lambda v: f"{v:.4f}",
    "pct": lambda v: f"{v:.1f}",
    "pu": lambda v: f"{v:.4f}",
    "count": lambda v: f"{int(round(v)):,d}",
    "plain": lambda v: f"{v:,.4g}",
}

#: What the report prints for a value that was not recorded.
MISSING = "–"


def as_float(value) -> float | None:
    """A value of summary.json as a finite number, or None.

    Parameters
    ----------
    value : object
        Anything read from JSON (number, string, None, ...), in its own unit.

    Returns
    -------
    float or None
        ``float(value)`` in the same unit, or None when it is not a finite number.

    >>> as_float("1.5"), as_float(None), as_float(float("nan"))
    (1.5, None, None)
    """
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def fmt(value: float | None, kind: str = "plain") -> str:
    """A number as the report prints it.

    Parameters
    ----------
    value : float or None
        The value, in the unit its label names (a fraction [0..1] for ``"fraction"``,
        printed in %).
    kind : str
        A key of `FORMATS`.

    Returns
    -------
    str
        The formatted value, or `MISSING` when ``value`` is None or not finite.

    >>> fmt(0.4321, "fraction"), fmt(None)
    ('43.2', '–')
    """
    if value is None or not math.isfinite(value):
        return MISSING
    return FORMATS[kind](value)
