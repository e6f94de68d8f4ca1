"""Owns the control side: snapshot + reload, the embedded sync agent and webhook, status/health/drift, admin, metrics.
Imports no proxy internals (proxy.routes, proxy.validate, proxy.app, providers.translate, providers.adapters)."""
