"""Finding listed terms in text: case-insensitive, evasion-folded, optionally fuzzy.

A term matches as whole words: "project-bluebird" matches "Project Bluebird",
"PROJECT_BLUEBIRD", "projectbluebird" and "pro\u200bject-bluebіrd" (zero-width space,
Cyrillic і), but not "bluebirds". Fuzzy matching compares word tokens of similar length
with a bounded edit distance: in total at most `max_distance` edits, and at most one edit
per four characters of each term word (so short words must match exactly). Everything
that can be built from the terms is built once, in the constructor.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from policies.textfold import Folded, fold, fold_str

_WORD = re.compile(r"[^\W_]+")


def bounded_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of `a` and `b`, or `limit + 1` as soon as it must exceed `limit`."""
    if a == b:
        return 0
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    over = limit + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [over] * (len(b) + 1)
        cur[0] = i if i <= limit else over
        for j in range(max(1, i - limit), min(len(b), i + limit) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != b[j - 1]), over)
        if min(cur) > limit:
            return over
        prev = cur
    return min(prev[-1], over)


@dataclass(frozen=True, slots=True)
class TermHit:
    start: int
    end: int
    tag: str  # what the caller attached to the term (category, label)
    term: str


class TermMatcher:
    """Compiled finder for `(term, tag)` pairs."""

    def __init__(self, terms: Iterable[tuple[str, str]], fuzzy: bool = False, max_distance: int = 1) -> None:
        seen: set[str] = set()
        entries: list[tuple[str, str, str]] = []  # (regex, tag, term)
        self._fuzzy: dict[int, list[tuple[tuple[str, ...], str, str]]] = defaultdict(list)
        for term, tag in terms:
            words = _WORD.findall(fold_str(term).lower())
            if not words:
                continue
            key = "".join(words)
            if key in seen:
                continue
            seen.add(key)
            entries.append((r"[\W_]{0,3}".join(re.escape(w) for w in words), tag, term))
            if fuzzy and max_distance > 0 and any(len(w) >= 4 for w in words):
                self._fuzzy[len(words[0])].append((tuple(words), tag, term))
        entries.sort(key=lambda e: len(e[0]), reverse=True)
        self._entries = [(tag, term) for _, tag, term in entries]
        alternation = "|".join(f"(?P<t{i}>{rx})" for i, (rx, _, _) in enumerate(entries))
        self._regex = re.compile(rf"(?<![^\W_])(?:{alternation})(?![^\W_])", re.IGNORECASE) if entries else None
        self._max_distance = max_distance
        self.longest = max((len(term) for _, term in self._entries), default=0)

    def __bool__(self) -> bool:
        return self._regex is not None

    def find(self, text: str) -> list[TermHit]:
        """All matches in `text`, as spans of the original (unfolded) text."""
        if self._regex is None:
            return []
        folded = fold(text)
        hits: list[TermHit] = []
        for m in self._regex.finditer(folded.text):
            tag, term = self._entries[int(m.lastgroup[1:])]
            hits.append(TermHit(*folded.span(m.start(), m.end()), tag, term))
        if self._fuzzy:
            hits.extend(self._find_fuzzy(folded))
        return hits

    def _find_fuzzy(self, folded: Folded) -> list[TermHit]:
        tokens = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(folded.text)]
        limit = self._max_distance
        memo: dict[tuple[str, str], int] = {}

        def dist(token: str, word: str, budget: int) -> int:
            allowed = min(budget, len(word) // 4)
            key = (token, word)
            if key not in memo:
                memo[key] = bounded_distance(token, word, limit)
            return memo[key] if memo[key] <= allowed else limit + 1

        hits: list[TermHit] = []
        for i, (start, _, token) in enumerate(tokens):
            for length in range(max(1, len(token) - limit), len(token) + limit + 1):
                for words, tag, term in self._fuzzy.get(length, ()):
                    if i + len(words) > len(tokens):
                        continue
                    budget = limit
                    total = 0
                    for word, (_, _, tok) in zip(words, tokens[i : i + len(words)], strict=False):
                        d = dist(tok, word, budget)
                        if d > budget:
                            break
                        budget -= d
                        total += d
                    else:
                        if total:  # exact matches are the regex's
                            end = tokens[i + len(words) - 1][1]
                            hits.append(TermHit(*folded.span(start, end), tag, term))
        return hits
