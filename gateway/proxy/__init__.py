"""Owns the proxy: a module per route family, their shared steps, the stream relay, validation, keys, breakers, errors.
Imports no socket/ssl/sqlite3, no wire server or client, no event store or counters: no sockets, no SQL."""
