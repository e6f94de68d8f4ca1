"""The calls `kt doctor` makes to prove a target's credential without spending a token.

`probe_request` (mostly `GET /v1/models`) and `responses_probe_request` (a native Responses target's
URL) return (method, URL, headers, body); doctor sends them. Headers and URLs are the ones the
gateway's own calls use (`gateway.providers.adapters`, `gateway.providers.responses_native`).
"""

from __future__ import annotations

from gateway.providers import azure, bedrock, google
from gateway.providers.adapters import ANTHROPIC_VERSION, api_url, is_anthropic, request_headers
from gateway.providers.responses_native import responses_url
from policies.model import Target


def probe_request(target: Target) -> tuple[str, str, dict[str, str], bytes | None]:
    """(method, URL, headers, body) of the call `kt doctor` makes to `target` with its credential: it proves
    the key (and what else the provider lets a free call prove), spends no token. Mostly `GET /v1/models`;
    azure-openai: an empty body POSTed to the deployment (`azure.PROBE_BODY`: 400 proves the deployment)."""
    if target.provider == azure.PROVIDER:
        return "POST", azure.url(target, "chat/completions"), request_headers(target), azure.PROBE_BODY
    if target.provider == google.PROVIDER:
        return "GET", google.models_url(target), request_headers(target), None
    if target.provider == bedrock.PROVIDER:
        address = bedrock.models_url(target)
        headers = {k: v for k, v in request_headers(target).items() if k != "Content-Type"}
        if target.secret_key_ref is None:
            headers.update(bedrock.signature(target, bedrock.credentials_now(target), "GET", address, b""))
        return "GET", address, headers, None
    if is_anthropic(target):
        return "GET", api_url(target.base_url, "https://api.anthropic.com", "/models"), request_headers(
            target, {"anthropic-version": ANTHROPIC_VERSION}), None
    return "GET", api_url(target.base_url, "https://api.openai.com", "/models"), request_headers(target), None


def responses_probe_request(target: Target) -> tuple[str, str, dict[str, str], bytes]:
    """(method, URL, headers, body) of `kt doctor`'s check of a native Responses target: an empty body `{}`
    POSTed to the Responses URL the gateway calls, which the API refuses (400, a missing parameter) before
    generating anything; 404 means no Responses API there."""
    return "POST", responses_url(target), request_headers(target), b"{}"
