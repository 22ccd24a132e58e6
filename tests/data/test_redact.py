"""Caption PII redaction: what is replaced, what is left alone, and the counts."""

from __future__ import annotations

import pytest

from genforge_trainer.data.redact import redact

CASES = [
    ("email", "photo by jo.doe+cam@example.co.uk at the lake", "photo by [EMAIL] at the lake", {"email": 1}),
    ("phone-international", "call +1 (555) 123-4567 for prints", "call [PHONE] for prints", {"phone": 1}),
    ("phone-uk-trailing-dot", "studio 020 7946 0958.", "studio [PHONE].", {"phone": 1}),
    ("phone-bare-10-digits", "tel 5551234567", "tel [PHONE]", {"phone": 1}),
    ("url-with-password", "from https://user:hunter2@example.com/a.jpg", "from [URL]", {"url": 1}),
    (
        "url-with-signed-query",
        "at https://b.s3.amazonaws.com/x.jpg?X-Amz-Signature=ab12&e=1 ok",
        "at [URL] ok",
        {"url": 1},
    ),
    ("ipv4", "uploaded from 192.168.1.10 today", "uploaded from [IP] today", {"ip": 1}),
    ("ipv6", "host 2001:db8::8a2e:370:7334", "host [IP]", {"ip": 1}),
    ("card-luhn", "card 4111 1111 1111 1111 used", "card [CARD] used", {"card": 1}),
    ("iban", "pay DE89 3704 0044 0532 0130 00 now", "pay [IBAN] now", {"iban": 1}),
    ("ssn", "ssn 123-45-6789", "ssn [SSN]", {"ssn": 1}),
    ("aws-key", "key AKIAIOSFODNN7EXAMPLE leaked", "key [SECRET] leaked", {"secret": 1}),
    ("several", "a@b.io, c@d.io and 10.0.0.1", "[EMAIL], [EMAIL] and [IP]", {"email": 2, "ip": 1}),
    ("plain-url-kept", "see https://example.com/cat.jpg", "see https://example.com/cat.jpg", {}),
    ("date-kept", "taken 2023-05-01 in 1999", "taken 2023-05-01 in 1999", {}),
    ("numbers-kept", "1920x1080 px, 3.14159, id 12345678", "1920x1080 px, 3.14159, id 12345678", {}),
    ("card-failing-luhn-kept", "order 1234 5678 9012 3456", "order 1234 5678 9012 3456", {}),
    (
        "caption-kept",
        "a large red circle on a white background",
        "a large red circle on a white background",
        {},
    ),
]


@pytest.mark.parametrize("text,expected,counts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_redact(text, expected, counts):
    assert redact(text) == (expected, counts)


def test_redaction_is_idempotent():
    once, _ = redact("mail jo@example.com, call +44 20 7946 0958 from 10.1.2.3")
    assert redact(once) == (once, {})
