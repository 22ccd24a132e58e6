"""Money and durations, the two units of the API: parsing (formatting is in `formats.py`).

Money is a non-negative decimal given as an integer or a string (`25`, `"12.50"`) and
kept as `Decimal` everywhere; durations are Go-style strings (`90m`, `6h`, `1h30m`,
`2h45m30s`, `500ms`). The CRD patterns in `crds/` accept exactly what these parse.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MONEY_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
CENT = Decimal("0.01")
MICRO = Decimal("0.000001")


class UnitError(ValueError):
    """A money or duration value that does not parse."""


def parse_money(value: int | float | str | Decimal | None) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise UnitError(f"money must be a number or decimal string, got {value!r}")
    text = str(value).strip()
    if isinstance(value, float):
        text = repr(value)
    if not re.match(MONEY_PATTERN, text):
        raise UnitError(f"money must be a non-negative decimal like 25 or \"12.50\", got {value!r}")
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern guards this
        raise UnitError(f"invalid money {value!r}") from exc


def money_str(value: Decimal) -> str:
    """The canonical string kept in status: micro-dollar precision, no exponent."""
    return format(value.quantize(MICRO, rounding=ROUND_HALF_UP).normalize(), "f")


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go-style duration string; None stays None."""
    if value is None:
        return None
    text = str(value).strip()
    if not text or not re.match(DURATION_PATTERN, text):
        raise UnitError(f"duration must look like 90m, 6h or 1h30m, got {value!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
