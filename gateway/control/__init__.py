"""Owns the control side: snapshot + reload, the embedded sync agent and webhook, status/health/drift, admin, metrics.
Imports no proxy internals (the proxy route modules, validate, app) nor the providers' translations and adapters."""
