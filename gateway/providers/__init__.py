"""Owns the providers: a module per provider (and direction: anthropic_request/_response/_stream), SSE, checks, scrub.
Imports no HTTP server (http.http1, http.handler, tornado.web), no events, no control; of policies only .model."""
