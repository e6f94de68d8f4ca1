"""dlp-filter: patterns, terms (case, evasions, fuzzy), redact vs block, sensitivity, streams."""

from __future__ import annotations

import re

import pytest

from policies.kinds.dlp_filter import DlpFilter
from policies.model import Verdict
from policies.state import PolicyState
from tests.kindutil import redacted, run_input, run_output, stream, user


def dlp(**options: object) -> DlpFilter:
    return DlpFilter(dict(options), PolicyState())


TERMS = {"blocked_terms": ["project-bluebird", "Falcon Merger"]}


def test_pattern_redacted() -> None:
    policy = dlp(detect_patterns=["AKIA[0-9A-Z]{16}"])
    assert redacted(policy, "key AKIAIOSFODNN7EXAMPLE here") == "key [REDACTED:DLP] here"
    assert redacted(policy, "key akiaiosfodnn7example") == "key akiaiosfodnn7example"  # patterns as written
    assert redacted(policy, "key AKIA\u200bIOSFODNN7EXAMPLE.") == "key [REDACTED:DLP]."  # folded first


@pytest.mark.parametrize(
    "text",
    [
        "about project-bluebird today",
        "about PROJECT BLUEBIRD today",
        "about Project_Bluebird today",
        "about projectbluebird today",
        "about pro\u200bject-blue\u200dbird today",  # zero-width characters
        "about prоject-bluebіrd today",  # Cyrillic о and і
        "about ｐｒｏｊｅｃｔ－ｂｌｕｅｂｉｒｄ today",  # fullwidth
        "the falcon   merger closes",
    ],
)
def test_terms_match_case_insensitively_and_through_evasions(text: str) -> None:
    outcome = run_input(dlp(**TERMS, action="block"), user(text))
    assert outcome.blocked and outcome.reason_code == "dlp_term_detected"


@pytest.mark.parametrize("text", ["bluebirds are birds", "project bluebirds", "a falcon merged", "nothing"])
def test_terms_do_not_match_other_words(text: str) -> None:
    assert run_input(dlp(**TERMS, action="block"), user(text)).verdict is Verdict.ALLOW


def test_redaction_keeps_surroundings() -> None:
    ex = user("Status of Project Bluebird?")
    outcome = run_input(dlp(**TERMS), ex)
    assert ex.messages[0]["content"] == "Status of [REDACTED:DLP]?"
    assert outcome.verdict is Verdict.REDACT and outcome.reason_code == "dlp_term_detected"


def test_redaction_covers_zero_width_inside_term() -> None:
    assert redacted(dlp(**TERMS), "x pro\u200bject-bluebird y") == "x [REDACTED:DLP] y"


def test_fuzzy_matching_within_distance() -> None:
    fuzzy = dlp(**TERMS, fuzzy_matching=True, max_distance=2, action="block")
    assert run_input(fuzzy, user("the projekt blubird plan")).blocked
    assert run_input(fuzzy, user("the falcon merjer")).blocked
    assert not run_input(fuzzy, user("the protect bluebell plan")).blocked  # too far
    assert not run_input(dlp(**TERMS, action="block"), user("the projekt blubird plan")).blocked  # fuzzy off


def test_fuzzy_respects_max_distance_and_short_words() -> None:
    one = dlp(blocked_terms=["bluebird", "acme"], fuzzy_matching=True, max_distance=1, action="block")
    assert run_input(one, user("blubird")).blocked
    assert not run_input(one, user("blubrd")).blocked  # two edits
    assert run_input(one, user("acne")).blocked  # four letters allow one edit
    zero = dlp(blocked_terms=["abc"], fuzzy_matching=True, max_distance=3, action="block")
    assert not run_input(zero, user("abd")).blocked  # words under 4 letters match exactly


def test_sensitivity_levels() -> None:
    key = "token ghp_" + "a" * 36
    assert redacted(dlp(), key) == key
    assert redacted(dlp(sensitivity_level="high"), key) == "token [REDACTED:DLP]"
    outcome = run_input(dlp(sensitivity_level="restricted"), user("-----BEGIN RSA PRIVATE KEY-----"))
    assert outcome.blocked and outcome.reason_code == "dlp_pattern_detected"


def test_output_phase() -> None:
    outcome, text = run_output(dlp(**TERMS), "We call it Project Bluebird internally.")
    assert text == "We call it [REDACTED:DLP] internally." and outcome.verdict is Verdict.REDACT


def test_stream_blocks_term_split_across_chunks() -> None:
    sent, outcome = stream(dlp(**TERMS, action="block"), ["The codename is project-blue", "bird and more"])
    assert sent == "The codename is project-blue"
    assert outcome.blocked and outcome.reason_code == "dlp_term_detected"


def test_invalid_regex_is_a_clear_error() -> None:
    with pytest.raises(re.error, match=r"policy\.dlp-filter\.detect_patterns\[1\]: invalid regex") as info:
        dlp(detect_patterns=["ok", "(unclosed"])
    assert info.value.pattern == "(unclosed"


def test_terms_sharing_a_joined_prefix() -> None:
    policy = dlp(blocked_terms=["projectblue", "project blue bird"], action="block")
    assert run_input(policy, user("the projectblue plan")).blocked
    assert run_input(policy, user("the projectbluebird plan")).blocked
    assert run_input(policy, user("the « project blue bird » plan")).blocked  # non-ASCII text
    assert not run_input(policy, user("the project blue plan")).blocked
