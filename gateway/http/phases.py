"""The states of a server connection and of each request/response exchange on it, and of an upstream connection.

Each is a small `IntEnum` whose members are also module names (`OPEN`, `PARSED`, `CHUNKED`, ...),
compared with `is` (or `<` along a phase's order). On the request path two things keep them as
cheap as the booleans they replace: the members are read as module globals (no `Lifecycle.OPEN`
attribute lookup), and an attribute holding a phase is set in `__init__`, never given as a class
default: CPython 3.11 does not specialise loads and stores of an attribute whose class default is
an instance of a Python-level class such as an enum member (measured: ~2,800 instructions, ~2 %
of the wire's work, per request).
"""

from __future__ import annotations

import enum


class Lifecycle(enum.IntEnum):
    """A connection's life (`ServerConnection.phase`)."""

    OPEN = 0  # reading requests and answering them
    CLOSING = 1  # close(): what is buffered is being written (within --client-timeout), nothing more is read
    CLOSED = 2  # aborted, refused or lost: nothing more is read or written


class Event(enum.IntEnum):
    """A parser event on its way to the handler."""

    HEADERS = 0  # the head is complete: start_request + headers_received
    DATA = 1  # a piece of the body: data_received
    END = 2  # the end of the request: finish


class Reading(enum.IntEnum):
    """How far a request (`ServerExchange.reading`) or an upstream response (`UpstreamConnection.reading`,
    HEAD to PARSED) has been received; each implies the ones before."""

    HEAD = 0  # the request line and headers are arriving
    BODY = 1  # the head was parsed and checked; the body, if any, is arriving
    PARSED = 2  # the parser saw the end of the request
    DELIVERED = 3  # ... and the handler was told (delegate.finish)


class Writing(enum.IntEnum):
    """How far a response has been written (`ServerExchange.writing`)."""

    PENDING = 0  # nothing written yet
    STARTED = 1  # the status line and headers are written
    FINISHED = 2  # the handler called finish()


class Framing(enum.IntEnum):
    """How a response body is delimited (`ServerExchange.framing`, decided by `write_headers`)."""

    LENGTH = 0  # Content-Length: `remaining` bytes still owed
    CHUNKED = 1  # Transfer-Encoding: chunked
    NO_BODY = 2  # HEAD, 204, 304, 1xx: whatever is written is dropped
    UNTIL_CLOSE = 3  # HTTP/1.0 without a length: the body ends when the connection closes


class Link(enum.IntEnum):
    """An upstream connection's socket (`UpstreamConnection.link`); it only moves forward."""

    CONNECTING = 0  # no transport yet
    USABLE = 1  # connected, no EOF or error seen: may carry a request
    ENDED = 2  # EOF seen, or closed by us: carries nothing more; the transport is going
    LOST = 3  # connection_lost: the transport is gone


class Duty(enum.IntEnum):
    """What the pool has an upstream connection doing (`UpstreamConnection.duty`); from BUSY on, a request is on it."""

    OFF = 0  # new, just taken from the pool, or done with and closed
    IDLE = 1  # in the pool's idle deque, waiting for a request
    BUSY = 2  # a request was written: its response is being read (or a stream held by its caller)
    DRAINING = 3  # released at a stream's logical end: the body's last bytes are awaited, then it is pooled


OPEN, CLOSING, CLOSED = Lifecycle
HEADERS, DATA, END = Event
HEAD, BODY, PARSED, DELIVERED = Reading
PENDING, STARTED, FINISHED = Writing
LENGTH, CHUNKED, NO_BODY, UNTIL_CLOSE = Framing
CONNECTING, USABLE, ENDED, LOST = Link
OFF, IDLE, BUSY, DRAINING = Duty
