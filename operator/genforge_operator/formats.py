"""How money, durations and timestamps are written: one formatter each.

`money` and `human_duration` for people (messages, Events, tables); `timestamp` for the
API (status, conditions, segments: RFC 3339, UTC, second resolution, like the kubelet's)
and `parse_timestamp` for reading any of them back. Money kept in status is
`units.money_str` (micro-dollars, no thousands separators), a wire format, not a display.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
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


TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def parse_timestamp(value: str | datetime | None) -> datetime | None:
    """An RFC 3339 timestamp (`2026-11-27T18:00:00Z`) or datetime as an aware UTC datetime
    (naive ones are taken as UTC); None or "" stays None."""
    if value is None or value == "":
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def timestamp(moment: str | datetime) -> str:
    """The form kept in status: UTC, second resolution."""
    return parse_timestamp(moment).strftime(TIMESTAMP_FORMAT)
