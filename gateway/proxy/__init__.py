"""Owns the proxy routes: validation, inbound keys, the stream relay, fallback and breakers, the one error envelope.
Imports no socket/ssl/sqlite3, no wire server or client, no event store or counters: no sockets, no SQL."""
