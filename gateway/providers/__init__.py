"""Owns the providers: call dispatch (adapters, responses_native, probes), a module per provider/direction, SSE, checks.
Imports no HTTP server (http.http1, http.handler, tornado.web), no events, no control; of policies only .model."""
