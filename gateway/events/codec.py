"""The on-disk form of a decision event: its JSON, zstd-compressed with a shipped dictionary.

A stored body starts with one byte that says how to read it: `{` is plain JSON (stores written
before compression), `\\x01` is a magicless zstd frame made with `events-v1.zdict` (trained on
bench-shaped events by bench/train_events_dict.py). Decoding gives back the very JSON bytes that
were encoded, so an event reads back exactly as it was written.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import zstandard

PREFIX = b"\x01"  # the body of a compressed event starts with this (dictionary v1)
_DICT = zstandard.ZstdCompressionDict(Path(__file__).with_name("events-v1.zdict").read_bytes())
_PARAMS = zstandard.ZstdCompressionParameters.from_level(  # level 1: ~3 us an event
    1, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=0, write_dict_id=0, write_content_size=1)
_local = threading.local()  # zstd (de)compressors are not thread-safe: one per thread


def compressor() -> zstandard.ZstdCompressor:
    comp = getattr(_local, "comp", None)
    if comp is None:
        comp = _local.comp = zstandard.ZstdCompressor(dict_data=_DICT, compression_params=_PARAMS)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "dec", None)
    if dec is None:
        dec = _local.dec = zstandard.ZstdDecompressor(dict_data=_DICT, format=zstandard.FORMAT_ZSTD1_MAGICLESS)
    return dec


def encode(event: dict[str, Any]) -> bytes:
    """The stored body of `event`."""
    return PREFIX + compressor().compress(orjson.dumps(event, default=str))


def json_bytes(body: bytes) -> bytes:
    """The JSON of a stored body (plain JSON as it is; a compressed one decompressed)."""
    if body[:1] == PREFIX:
        return _decompressor().decompress(body[1:])
    return bytes(body)


def decode(body: bytes) -> dict[str, Any]:
    """The event of a stored body."""
    return orjson.loads(json_bytes(body))
