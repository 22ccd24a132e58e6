"""Caption PII redaction (``privacy.redactCaptions``).

:func:`redact` replaces personal data in a caption with a placeholder naming its type and
counts what it replaced::

    >>> redact("mail jo@example.com or call +1 (555) 123-4567")
    ('mail [EMAIL] or call [PHONE]', {'email': 1, 'phone': 1})

Types, in the order they are applied (earlier patterns win where matches overlap):

========  ===========  =============================================================
type      placeholder  what
========  ===========  =============================================================
url       ``[URL]``    URLs carrying credentials: ``user:password@`` or a secret
                       query parameter (``token=``, ``key=``, ``signature=``, ...)
secret    ``[SECRET]`` cloud access keys (``AKIA…``, ``ghp_…``, ``sk-…``, ``xox?-…``)
email     ``[EMAIL]``  e-mail addresses
iban      ``[IBAN]``   IBANs passing the ISO 13616 mod-97 check
card      ``[CARD]``   payment card numbers (13–19 digits) passing the Luhn check
ssn       ``[SSN]``    US social security numbers (``123-45-6789``)
ip        ``[IP]``     IPv4 and IPv6 addresses
phone     ``[PHONE]``  phone numbers: 7–15 digits, optional ``+``, separators
                       ``space . - ( )``; dates and plain years are left alone
========  ===========  =============================================================

Plain URLs without credentials are kept: they are attribution, not personal data.
Regular expressions find most PII, not all: redaction lowers the risk, it does not
replace a review of sensitive sources.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

PLACEHOLDERS = {
    "url": "[URL]",
    "secret": "[SECRET]",
    "email": "[EMAIL]",
    "iban": "[IBAN]",
    "card": "[CARD]",
    "ssn": "[SSN]",
    "ip": "[IP]",
    "phone": "[PHONE]",
}

_SECRET_PARAMS = r"(?:token|access_token|api_key|apikey|key|secret|password|passwd|pwd|signature|sig|x-amz-signature|x-amz-credential|auth)"
_URL_WITH_CREDENTIALS = re.compile(
    r"\b[a-z][a-z0-9+.-]*://"  # scheme
    r"(?:[^\s/@:]+:[^\s/@]*@[^\s]+"  # user:password@host...
    r"|[^\s?#]+\?[^\s#]*\b" + _SECRET_PARAMS + r"=[^\s&#]+[^\s]*)",  # ...?token=...
    re.IGNORECASE,
)
_SECRET = re.compile(
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}\b"  # GitHub tokens
    r"|\bsk-[A-Za-z0-9_-]{20,}\b"  # API secret keys
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}\b"  # Slack tokens
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
_IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]|\.\d)"
)
_IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
    r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}(?![\w:])"
)
_PHONE = re.compile(r"(?<![\w+])(?:\+|00)?\(?\d[\d\s().-]{5,}\d(?![\w])")
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _card_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and _luhn_ok(digits)


def _phone_ok(text: str) -> bool:
    candidate = text.strip(" .-")
    digits = re.sub(r"\D", "", candidate)
    if not 7 <= len(digits) <= 15:
        return False
    if _DATE.match(candidate):
        return False
    if candidate.count("(") != candidate.count(")"):
        return False
    if re.fullmatch(r"\d+\.\d+", candidate):  # a decimal number
        return False
    # Bare digit runs (no + and no separator) of fewer than 10 digits are ids, not phones.
    return not (candidate.isdigit() and len(digits) < 10)


_Rule = tuple[str, re.Pattern[str], Callable[[str], bool] | None]
_RULES: tuple[_Rule, ...] = (
    ("url", _URL_WITH_CREDENTIALS, None),
    ("secret", _SECRET, None),
    ("email", _EMAIL, None),
    ("iban", _IBAN, _iban_ok),
    ("card", _CARD, _card_ok),
    ("ssn", _SSN, None),
    ("ip", _IPV4, None),
    ("ip", _IPV6, None),
    ("phone", _PHONE, _phone_ok),
)


def redact(text: str) -> tuple[str, dict[str, int]]:
    """``text`` with PII replaced by placeholders, and the number replaced per type."""
    counts: Counter[str] = Counter()
    for kind, pattern, check in _RULES:

        def substitute(
            match: re.Match[str], kind: str = kind, check: Callable[[str], bool] | None = check
        ) -> str:
            found = match.group(0)
            trailing = ""
            if kind == "phone":  # the pattern may swallow a trailing space or dot
                stripped = found.rstrip(" .-")
                trailing = found[len(stripped) :]
                found = stripped
            if check is not None and not check(found):
                return match.group(0)
            counts[kind] += 1
            return PLACEHOLDERS[kind] + trailing

        text = pattern.sub(substitute, text)
    return text, dict(counts)
