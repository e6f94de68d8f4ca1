"""Folding text before matching, with a map back to the original offsets.

Evasions hide a term from a naive regex: zero-width and other invisible characters inside
a word, fullwidth or mathematical letters, accents, Cyrillic/Greek look-alikes. `fold`
removes them character by character and remembers, for every folded character, which
original character it came from, so a match in the folded text can be redacted in the
original. Case is left alone (match with `re.IGNORECASE`). ASCII text is returned as is.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

# Look-alikes from other scripts that NFKC leaves alone, folded to the Latin letter they imitate.
_HOMOGLYPHS = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "һ": "h", "ӏ": "l",
    "ԛ": "q", "ԝ": "w", "ь": "b", "п": "n", "г": "r",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԁ": "D", "Һ": "H", "Ӏ": "I", "Ԛ": "Q", "Ԝ": "W",
    # Greek
    "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "γ": "y", "ω": "w", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K",
    "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    # Latin look-alikes and lookalike punctuation
    "ı": "i", "ȷ": "j", "ɡ": "g", "ɑ": "a", "ʀ": "r", "ℓ": "l", "ß": "ss", "‐": "-", "‑": "-", "‒": "-",
    "–": "-", "—": "-", "−": "-", "‘": "'", "’": "'", "“": '"', "”": '"',
}  # fmt: skip

# Invisible characters that are not in category Cf (which is dropped wholesale).
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180e\u3164\uffa0")


@lru_cache(maxsize=8192)
def _fold_char(ch: str, normalize: bool, homoglyphs: bool) -> str:
    if ch in _INVISIBLE or unicodedata.category(ch) == "Cf":
        return ""
    out = ch
    if normalize:
        # NFKC's compatibility folding (fullwidth, ligatures, math letters) plus accents stripped.
        out = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        out = unicodedata.normalize("NFKC", out)
    if homoglyphs:
        out = "".join(_HOMOGLYPHS.get(c, c) for c in out)
    return out


@dataclass(slots=True)
class Folded:
    """Folded text; `offsets[i]` is the index in the original of folded character `i`.

    Not frozen: several are built per request, and a frozen dataclass costs twice as much to build.
    """

    text: str
    offsets: tuple[int, ...] | None = None  # None: identical to the original

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of folded `text[start:end]` (end > start)."""
        if self.offsets is None:
            return start, end
        return self.offsets[start], self.offsets[end - 1] + 1


def fold(text: str, normalize: bool = True, homoglyphs: bool = True) -> Folded:
    """Drop invisible characters; with `normalize` NFKC-fold and strip accents; fold look-alikes."""
    if text.isascii():
        return Folded(text)
    chars: list[str] = []
    offsets: list[int] = []
    for i, ch in enumerate(text):
        if ch.isascii():
            chars.append(ch)
            offsets.append(i)
            continue
        for c in _fold_char(ch, normalize, homoglyphs):
            chars.append(c)
            offsets.append(i)
    return Folded("".join(chars), tuple(offsets))


def fold_str(text: str, normalize: bool = True, homoglyphs: bool = True) -> str:
    """Just the folded text (for terms compiled at load)."""
    return fold(text, normalize, homoglyphs).text


def lower(text: str) -> str:
    """Lower-case `text` without changing its length (offsets into it must stay valid)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def words_table(keep: Callable[[str], bool]) -> bytes:
    """A `bytes.translate` table mapping every ASCII character that `keep` rejects to a space."""
    return bytes(c if c < 128 and keep(chr(c)) else 32 for c in range(256))


def ascii_words(text: str, table: bytes) -> list[str]:
    """The words of ASCII `text`, split where `table` (from `words_table`) maps to a space.

    `bytes.translate` with a table: about three times faster than `str.translate` with a dict.
    """
    return text.encode("ascii").translate(table).decode("ascii").split()


def find_all(text: str, needle: str) -> Iterator[int]:
    """Every index where `needle` occurs in `text` (C-speed `str.find`)."""
    i = text.find(needle)
    while i >= 0:
        yield i
        i = text.find(needle, i + 1)


def merge_windows(windows: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(lo, hi) windows sorted by `lo`, overlapping ones merged, `lo` clipped at 0."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(windows):
        lo = max(lo, 0)
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


_B64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}")
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16}")  # the cheap pre-check: some run is long enough


def base64_segments(text: str, limit: int = 64, max_len: int = 1 << 20) -> Iterator[tuple[int, int, str]]:
    """(start, end, decoded text) for base64 runs of `text` that decode to readable UTF-8.

    Bounded: at most `limit` segments and runs of at most `max_len` characters are tried.
    """
    if _B64_RUN.search(text) is None:
        return
    tried = 0
    for m in _B64.finditer(text):
        if tried >= limit:
            return
        segment = m.group()
        if len(segment) > max_len:
            continue
        tried += 1
        raw = segment.rstrip("=")
        raw += "=" * (-len(raw) % 4)
        try:
            urlsafe = "-" in raw or "_" in raw
            data = base64.urlsafe_b64decode(raw) if urlsafe else base64.b64decode(raw, validate=True)
            decoded = data.decode("utf-8")
        except (binascii.Error, ValueError):
            continue
        printable = sum(c.isprintable() or c in "\n\r\t" for c in decoded)
        if decoded and printable >= 0.9 * len(decoded):
            yield m.start(), m.end(), decoded
