"""Owns the proxy routes: validation, inbound keys, the stream relay, fallback and breakers, the one error envelope.
Touches no sockets and no SQL: imports neither socket/ssl/sqlite3 nor the wire server, the event store, counters."""
