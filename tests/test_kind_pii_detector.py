"""pii-detector: entities, checksums, markers, modes, block, output and streams."""

from __future__ import annotations

import pytest

from policies.kinds.pii_detector import PiiDetector, iban_ok, luhn_ok
from policies.model import Verdict
from policies.state import PolicyState
from tests.kindutil import redacted, run_input, run_output, stream, user


def pii(**options: object) -> PiiDetector:
    return PiiDetector(dict(options), PolicyState())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail john.doe+x@example.co.uk now", "mail [REDACTED:EMAIL] now"),
        ("call +1 (555) 123-4567 today", "call [REDACTED:PHONE] today"),
        ("call 555-123-4567", "call [REDACTED:PHONE]"),
        ("card 4111 1111 1111 1111 ok", "card [REDACTED:CREDIT_CARD] ok"),
        ("card 5500-0000-0000-0004", "card [REDACTED:CREDIT_CARD]"),
        ("amex 378282246310005", "amex [REDACTED:CREDIT_CARD]"),
        ("iban DE89 3704 0044 0532 0130 00.", "iban [REDACTED:IBAN]."),
        ("GB82WEST12345698765432", "[REDACTED:IBAN]"),
        ("ssn 123-45-6789", "ssn [REDACTED:SSN]"),
        ("host 192.168.10.20:80", "host [REDACTED:IPV4]:80"),
    ],
)
def test_detects_and_labels(text: str, expected: str) -> None:
    assert redacted(pii(), text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # Luhn fails
        "card 4111 1111 1111 1121",  # two digits swapped
        "iban DE89 3704 0044 0532 0130 01",  # mod-97 fails
        "iban DE88 3704 0044 0532 0130 00",  # wrong check digits
        "GB82WEST1234569876543",  # wrong length for GB
        "ssn 000-12-3456",  # never issued
        "ssn 123-45 6789",  # mixed separators
        "version 1.2.3.4.5",
        "ip 999.1.1.1",
        "order 2024-01-15, ticket 12345",
        "no pii here at all",
        "mail john at example dot com",
    ],
)
def test_near_misses_are_not_pii(text: str) -> None:
    assert redacted(pii(), text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a@b.io, c.d@e.org", "[REDACTED:EMAIL], [REDACTED:EMAIL]"),
        ("x@y.com@z.com", "[REDACTED:EMAIL]@z.com"),  # matches do not overlap
        ("@@ a@@b.com @", "@@ a@@b.com @"),
        ("<" + "l" * 65 + "@ex.com>", "<[REDACTED:EMAIL]>"),  # the longest local part looked for
        ("<" + "l" * 66 + "@ex.com>", "<" + "l" * 66 + "@ex.com>"),
        ("x" * 66 + "@ex.com a@b.io", "x" * 66 + "@ex.com [REDACTED:EMAIL]"),
    ],
)
def test_email_edges(text: str, expected: str) -> None:
    assert redacted(pii(), text) == expected


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    assert iban_ok("de89 3704 0044 0532 0130 00")


def test_marker_formats() -> None:
    text = "card 4111-1111-1111-1111 mail ann@example.org ip 10.1.2.3 ssn 123-45-6789"
    assert redacted(pii(redaction={"marker_format": "partial"}), text) == (
        "card ****-****-****-1111 mail a***@example.org ip 10.1.*.* ssn ***-**-6789"
    )
    stars = redacted(pii(redaction={"marker_format": "asterisks"}), "mail ann@example.org.")
    assert stars == "mail " + "*" * len("ann@example.org") + "."
    short = redacted(pii(redaction={"marker_format": "asterisks", "preserve_length": False}), "ann@example.org")
    assert short == "****"
    custom = pii(redaction={"custom_markers": {"EMAIL": "<email>"}})
    assert redacted(custom, "to ann@example.org") == "to <email>"


def test_modes_and_entities() -> None:
    card = "card 4111 1111 1111 1111"
    assert redacted(pii(pci_mode=False), card) == card
    assert redacted(pii(), "MRN: 12345678") == "MRN: 12345678"
    health = pii(healthcare_mode=True)
    assert redacted(health, "MRN: 12345678, NPI 1234567893") == "MRN: [REDACTED:MRN], NPI [REDACTED:NPI]"
    assert redacted(health, "NPI 1234567890") == "NPI 1234567890"  # NPI checksum fails
    only_email = pii(entities=["email"])
    assert redacted(only_email, "ann@example.org 123-45-6789") == "[REDACTED:EMAIL] 123-45-6789"
    custom = pii(detect_patterns=[r"EMP-\d{6}"])
    assert redacted(custom, "employee EMP-123456") == "employee [REDACTED:CUSTOM]"


def test_redacts_request_in_place() -> None:
    ex = user("mail ann@example.org", "and bob@example.org")
    ex.messages.append({"role": "user", "content": [{"type": "text", "text": "card 4111111111111111"}]})
    outcome = run_input(pii(), ex)
    assert outcome.verdict is Verdict.REDACT and outcome.reason_code == "pii_detected"
    assert outcome.redactions == 3
    assert ex.messages[0]["content"] == "mail [REDACTED:EMAIL]"
    assert ex.messages[2]["content"][0]["text"] == "card [REDACTED:CREDIT_CARD]"


def test_block_mode_leaves_request_untouched() -> None:
    ex = user("ssn 123-45-6789")
    outcome = run_input(pii(action="block"), ex)
    assert outcome.blocked and outcome.reason_code == "pii_detected" and "SSN" in outcome.message
    assert ex.messages[0]["content"] == "ssn 123-45-6789"


def test_include_metadata_false_hides_type() -> None:
    outcome = run_input(pii(action="block", redaction={"include_metadata": False}), user("ann@example.org"))
    assert outcome.message == "PII detected"


def test_clean_request_allowed() -> None:
    assert run_input(pii(), user("what is the weather")).verdict is Verdict.ALLOW


def test_output_redacted() -> None:
    outcome, text = run_output(pii(), "Reach me at ann@example.org")
    assert text == "Reach me at [REDACTED:EMAIL]" and outcome.verdict is Verdict.REDACT


def test_stream_blocks_card_split_across_chunks() -> None:
    sent, outcome = stream(pii(action="block"), ["your card is 4111 11", "11 1111 1111 thanks"])
    assert sent == "your card is 4111 11" and outcome.blocked and outcome.reason_code == "pii_detected"


def test_stream_redacts_unsent_part() -> None:
    sent, outcome = stream(pii(), ["write to ", "ann@example.org", " please"])
    assert sent == "write to [REDACTED:EMAIL] please"
    assert outcome.verdict is Verdict.REDACT and outcome.redactions == 1


@pytest.mark.parametrize(
    "text",
    [
        "card ４１１１ １１１１ １１１１ １１１１",  # fullwidth digits
        "card 4111\u200b1111\u200b1111\u200b1111",  # zero-width separators
        "mail ann\u200b@example.org",
    ],
)
def test_evasions_are_folded_and_redacted_in_the_original(text: str) -> None:
    out = redacted(pii(), text)
    assert out.startswith(("card [REDACTED:CREDIT_CARD]", "mail [REDACTED:EMAIL]")) and out.count("[") == 1


def test_other_script_digits_are_not_mistaken() -> None:
    text = "رقم ٤١١١١١١١١١١١١١١١"  # Arabic-Indic digits: not folded, not checked with Luhn
    assert redacted(pii(), text) == text
