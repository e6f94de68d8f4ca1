"""Owns the wire: the HTTP/1.1 server connection and dispatch, the upstream HTTP client and its pool, their limits.
Imports none of policies, sync, providers, events, control, proxy (but proxy.errors, sync.clock)."""
