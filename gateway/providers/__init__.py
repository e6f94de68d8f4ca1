"""Owns the providers (openai, anthropic, mock): translation to/from the canonical form, SSE, answer checks, scrubbing.
Imports no HTTP server (http.http1, http.handler, tornado.web), no events, no control; of policies only .model."""
