"""Finding listed terms in text: case-insensitive, evasion-folded, optionally fuzzy.

A term matches as a sequence of whole words (any punctuation or space between them):
"project-bluebird" matches "Project Bluebird", "PROJECT_BLUEBIRD", "projectbluebird" and
"pro\u200bject-bluebіrd" (zero-width space, Cyrillic і), but not "bluebirds". Fuzzy
matching compares word tokens of similar length with a bounded edit distance: in total at
most `max_distance` edits, at most one edit per four characters of each term word and
three per word (so short words must match exactly). Candidates come from an index of
deletion variants built at load, so a text is scanned in time proportional to its
distinct words, not to the number of terms. Everything
that can be built from the terms is built once, in the constructor.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from policies.textfold import Folded, ascii_words, fold, fold_str, lower, words_table

_WORD = re.compile(r"[^\W_]+")
MAX_WORD_EDITS = 3
_ALNUM_ONLY = words_table(str.isalnum)


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


Entry = tuple[tuple[str, ...], str, str]  # (term words, tag, term)


class TermMatcher:
    """Compiled finder for `(term, tag)` pairs in folded, lower-cased text."""

    def __init__(self, terms: Iterable[tuple[str, str]], fuzzy: bool = False, max_distance: int = 1) -> None:
        self._max_distance = max_distance if fuzzy else 0
        self._exact: dict[str, list[Entry]] = defaultdict(list)  # first word -> terms
        # Fuzzy index: every variant of a term's first word with up to its allowed deletions
        # -> the terms. A token within distance d of a word shares a d-deletion variant with it.
        self._fuzzy: dict[str, list[Entry]] = defaultdict(list)
        self._gate: dict[str, set[str]] = defaultdict(set)  # a word that may start a term -> first words
        seen: set[str] = set()
        self.longest = 0
        self._longest_first = 0
        for term, tag in terms:
            words = tuple(_WORD.findall(lower(fold_str(term))))
            joined = "".join(words)
            if not words or joined in seen:
                continue
            seen.add(joined)
            self.longest = max(self.longest, len(term))
            self._exact[words[0]].append((words, tag, term))
            for k in range(1, len(words) + 1):  # "projectbluebird" starts "project bluebird" too
                self._gate["".join(words[:k])].add(words[0])
            if self._max_distance and any(self._allowed(w) for w in words):
                self._longest_first = max(self._longest_first, len(words[0]))
                entry = (words, tag, term)
                for variant in _deletions(words[0], self._allowed(words[0])):
                    self._fuzzy[variant].append(entry)

    def _allowed(self, word: str) -> int:
        """Edits a text token may differ from term word `word` by: one per four letters, at most 3."""
        return min(self._max_distance, len(word) // 4, MAX_WORD_EDITS)

    def __bool__(self) -> bool:
        return bool(self._exact)

    def find(self, text: str, folded: Folded | None = None) -> list[TermHit]:
        """All matches in `text` (or its `fold(text)`, when the caller has it), as spans of the original text."""
        if not self._exact:
            return []
        if folded is None:
            folded = fold(text)
        low = lower(folded.text)
        hits = self._find_exact(low, folded)
        if self._fuzzy:
            hits += self._find_fuzzy(low, folded)
        return hits

    def _find_exact(self, low: str, folded: Folded) -> list[TermHit]:
        # One C-speed str.find per distinct first word; the rest is checked where it occurs.
        hits: list[TermHit] = []
        n = len(low)
        if low.isascii():
            firsts = {f for t in self._gate.keys() & ascii_words(low, _ALNUM_ONLY) for f in self._gate[t]}
        else:
            firsts = self._exact.keys()
        for first in firsts:
            entries = self._exact[first]
            i = low.find(first)
            while i >= 0:
                if i == 0 or not low[i - 1].isalnum():
                    for words, tag, term in entries:
                        pos = i + len(first)
                        for word in words[1:]:
                            while pos < n and not low[pos].isalnum():
                                pos += 1
                            if not low.startswith(word, pos):
                                break
                            pos += len(word)
                        else:
                            if pos == n or not low[pos].isalnum():
                                hits.append(TermHit(*folded.span(i, pos), tag, term))
                i = low.find(first, i + 1)
        return hits

    def _find_fuzzy(self, low: str, folded: Folded) -> list[TermHit]:
        tokens = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(low)]
        hits: list[TermHit] = []
        candidates: dict[str, list[Entry]] = {}
        distances: dict[tuple[str, str], int] = {}
        limit = self._max_distance
        for i, (start, _, token) in enumerate(tokens):
            if token not in candidates:
                if len(token) > self._longest_first + limit:  # no term word is that long
                    candidates[token] = []
                    continue
                depth = min(limit, len(token) // 3, MAX_WORD_EDITS)  # a word allowing a edits has >= 4a letters
                found = {id(e): e for v in _deletions(token, depth) for e in self._fuzzy.get(v, ())}
                candidates[token] = list(found.values())
            for words, tag, term in candidates[token]:
                if i + len(words) > len(tokens):
                    continue
                budget = limit
                for word, (_, _, tok) in zip(words, tokens[i : i + len(words)], strict=False):
                    allowed = min(budget, self._allowed(word))
                    key = (tok, word)
                    if key not in distances:
                        distances[key] = bounded_distance(tok, word, self._allowed(word))
                    d = distances[key]
                    if d > allowed:
                        break
                    budget -= d
                else:
                    if budget < limit:  # exact matches are _find_exact's
                        hits.append(TermHit(*folded.span(start, tokens[i + len(words) - 1][1]), tag, term))
        return hits


def _deletions(word: str, depth: int) -> set[str]:
    """`word` and every string made from it by deleting up to `depth` characters."""
    out = {word}
    frontier = {word}
    for _ in range(depth):
        frontier = {w[:i] + w[i + 1 :] for w in frontier for i in range(len(w))}
        out |= frontier
    return out
