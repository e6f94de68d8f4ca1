"""Latency histograms with fixed log-spaced buckets: summed across minutes and gateways by bucket,
so p50/p99 over any window come from the sums, within a stated error.

Bucket 0 holds latencies under `BASE_MS`; bucket i >= 1 holds [BASE_MS * GROWTH**(i-1), BASE_MS * GROWTH**i),
up to bucket `TOP` (which also holds everything above it, ~8.4 hours). A percentile is answered as its
bucket's geometric middle: within `RELATIVE_ERROR` (9.05 %) of the exact nearest-rank value, and
`BASE_MS / 2` (5 us) for one under `BASE_MS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

BASE_MS = 0.01
STEPS_PER_DOUBLING = 4
GROWTH = 2.0 ** (1.0 / STEPS_PER_DOUBLING)  # ~1.189
RELATIVE_ERROR = math.sqrt(GROWTH) - 1.0  # ~0.0905: the middle of a bucket is this close to any value in it
TOP = 127  # the last bucket (one byte): from BASE_MS * GROWTH**126 ms (~8.4 hours) on
_LOG_BASE = math.log2(BASE_MS)
_TOP_MS = BASE_MS * GROWTH ** (TOP - 1)  # from here on (infinity too): the last bucket

Histogram = dict[int, int]  # bucket index -> count


def bucket(ms: float) -> int:
    """The bucket of a latency in milliseconds."""
    if not ms >= BASE_MS:  # NaN too
        return 0
    if ms >= _TOP_MS:
        return TOP
    return min(TOP, int((math.log2(ms) - _LOG_BASE) * STEPS_PER_DOUBLING) + 1)


def middle_ms(index: int) -> float:
    """The value a bucket stands for: its geometric middle (half of `BASE_MS` for bucket 0)."""
    if index <= 0:
        return BASE_MS / 2
    return BASE_MS * GROWTH ** (index - 0.5)


def encode(hist: Mapping[int, int]) -> bytes:
    """A histogram as bytes: its lowest bucket index, then the counts from there to its highest as varints."""
    if not hist:
        return b""
    lo, hi = min(hist), max(hist)
    out = bytearray((lo,))
    for i in range(lo, hi + 1):
        n = hist.get(i, 0)
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
    return bytes(out)


def add_encoded(into: Histogram, data: bytes | None) -> None:
    """Add an encoded histogram's counts into `into`."""
    if not data:
        return
    index, n, shift = data[0], 0, 0
    for byte in data[1:]:
        n |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            continue
        if n:
            into[index] = into.get(index, 0) + n
        index, n, shift = index + 1, 0, 0


def merge_encoded(a: bytes | None, b: bytes | None) -> bytes:
    """SQL `hist_merge(a, b)`: the sum of two encoded histograms, encoded."""
    total: Histogram = {}
    add_encoded(total, a)
    add_encoded(total, b)
    return encode(total)


def merge(into: Histogram, other: Mapping[int | str, int]) -> None:
    """Add `other` (keys as ints, or as the strings JSON made of them) into `into`."""
    for index, n in other.items():
        i = int(index)
        into[i] = into.get(i, 0) + int(n)


def percentile_ms(hist: Mapping[int, int], q: float) -> float | None:
    """The nearest-rank `q` percentile (0 < q <= 1) estimated from the buckets (None when empty)."""
    total = sum(hist.values())
    if not total:
        return None
    rank, seen = max(1, math.ceil(q * total - 1e-9)), 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return middle_ms(index)
    return middle_ms(max(hist))


def histogram_of(values: Iterable[float]) -> Histogram:
    """The histogram of latencies given one by one."""
    hist: Histogram = {}
    log2, base, steps, top, top_ms = math.log2, _LOG_BASE, STEPS_PER_DOUBLING, TOP, _TOP_MS
    for b in [(min(top, int((log2(ms) - base) * steps) + 1) if ms < top_ms else top) if ms >= BASE_MS else 0
              for ms in values]:
        hist[b] = hist.get(b, 0) + 1
    return hist


def as_json(hist: Mapping[int, int]) -> dict[str, int]:
    """The histogram for a JSON answer: bucket index (as a string) -> count, lowest first."""
    return {str(i): hist[i] for i in sorted(hist) if hist[i]}
