"""Azure OpenAI (`provider: azure-openai`): the OpenAI chat/embeddings wire format on Azure's URLs.

`POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version=...` (and
`/embeddings`); the key travels in `api-key` (or, with `api_key_header: Authorization`, an
Entra ID bearer token). The body is the canonical (OpenAI) form as it is, so translation is
only the URL; what Azure adds is its content filter, which this module turns into clear errors:

- the prompt was filtered: HTTP 400 with `error.code: content_filter` -> 400 `content_filter`
  (`gateway.providers.upstream.failure_for_status`, for any upstream that answers so),
  naming the filtered categories (never retried on another target: the prompt is the cause);
- the answer was withheld: `finish_reason: content_filter` with nothing in the message ->
  400 `content_filter`. A filtered answer with partial content, and a stream (already under
  way), keep `finish_reason: content_filter`, which OpenAI clients read as it is.
`/v1/responses` to a target with `responses_api: native` goes to Azure's v1 Responses API,
`POST {base_url}/openai/v1/responses` with the deployment as the body's `model`, through the same
native pass-through as OpenAI's (`gateway.providers.openai_responses`); a Response the filter
withheld (`incomplete_details.reason: content_filter`, nothing in it) is the same 400 as on chat.
URLs are built once per target (cached), not per request. `kt doctor` proves the deployment exists
with a request Azure refuses before generating (`PROBE_BODY`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import quote

from gateway.providers.upstream import UpstreamFailure
from policies.model import Target

PROVIDER = "azure-openai"  # as `policies.providers.AZURE_OPENAI` (a test pins that they agree)
CONTENT_FILTER = "content_filter"


@lru_cache(maxsize=1024)
def url(target: Target, operation: str) -> str:
    """The URL of `operation` (`chat/completions`, `embeddings`) on the target's deployment."""
    base = (target.base_url or "").rstrip("/")
    deployment = quote(target.deployment or target.model, safe="")
    return f"{base}/openai/deployments/{deployment}/{operation}?api-version={quote(target.api_version or '')}"


@lru_cache(maxsize=1024)
def responses_url(target: Target) -> str:
    """The Responses API of the target's resource: Azure's GA v1 API, which takes no `api-version`
    (the body's `model` names the deployment)."""
    return f"{(target.base_url or '').rstrip('/')}/openai/v1/responses"


# kt doctor's probe: an empty JSON body POSTed to the deployment's chat/completions. Azure resolves the
# deployment before it reads the body, so the answer proves the key, the resource and the deployment
# without generating anything: 401 bad key, 404 `DeploymentNotFound` no such deployment (404 without that
# code: no such resource path or api-version), 400 (the body lacks `messages`) the deployment exists.
PROBE_BODY = b"{}"
DEPLOYMENT_NOT_FOUND = "DeploymentNotFound"


def filtered_categories(results: Any) -> list[str]:
    """The categories Azure's content filter flagged in a `content_filter_result(s)` object."""
    if not isinstance(results, dict):
        return []
    names = []
    for name, verdict in results.items():
        if isinstance(verdict, dict) and verdict.get("filtered") is True:
            severity = verdict.get("severity")
            names.append(f"{name} ({severity})" if isinstance(severity, str) and severity != "safe" else name)
    return names


def prompt_filtered(target: Target, error: dict[str, Any]) -> UpstreamFailure:
    """The failure for Azure's 400 `content_filter` answer to a prompt."""
    inner = error.get("innererror")
    results = inner.get("content_filter_result") if isinstance(inner, dict) else None
    flagged = filtered_categories(results)
    why = f" ({', '.join(flagged)})" if flagged else ""
    return UpstreamFailure("client_error", f"target {target.id} ({target.provider}) refused the prompt: the "
                           f"provider's content filter flagged it{why}; change the prompt (or the deployment's "
                           "content filter)",
                           400, code=CONTENT_FILTER)


def check_answer(target: Target, completion: dict[str, Any]) -> dict[str, Any]:
    """`completion`, unless Azure's filter withheld every choice's answer (then a clear failure)."""
    choices = completion.get("choices") or []
    if not choices or any(c.get("finish_reason") != CONTENT_FILTER for c in choices):
        return completion
    if any((c.get("message") or {}).get("content") or (c.get("message") or {}).get("tool_calls") for c in choices):
        return completion
    flagged = sorted({n for c in choices for n in filtered_categories(c.get("content_filter_results"))})
    why = f" ({', '.join(flagged)})" if flagged else ""
    raise UpstreamFailure("client_error", f"target {target.id} ({target.provider}) withheld the answer: the "
                          f"provider's content filter flagged it{why}", 400, code=CONTENT_FILTER)
