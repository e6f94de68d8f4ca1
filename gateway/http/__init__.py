"""Owns the wire: the HTTP/1.1 server, its connections and exchanges, lean dispatch, the upstream client and pool.
Imports none of policies, sync, providers, events, control, proxy (but proxy.errors, sync.clock)."""
