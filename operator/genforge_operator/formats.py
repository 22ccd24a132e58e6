"""Numbers for people: how durations and money read in messages, Events and tables."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

from .units import CENT


def human_duration(seconds: float | None) -> str:
    """`45s`, `12m30s`, `3h05m`, `12d04h`, `21d`, `44y113d`."""
    if seconds is None:
        return "-"
    s = int(math.ceil(seconds))
    years, rest = divmod(s, 365 * 86400)
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if years:
        return f"{years}y{days}d"
    if days:
        return f"{days}d{hours:02d}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def money(value: Decimal | None, currency: str = "USD") -> str:
    """Money for people: `$343,950.02`; amounts under a cent keep four decimals."""
    if value is None:
        return "-"
    digits = f"{value:,.4f}" if Decimal(0) < value < CENT else f"{value.quantize(CENT, rounding=ROUND_HALF_UP):,}"
    return f"${digits}" if currency == "USD" else f"{digits} {currency}"
