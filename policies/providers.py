"""The provider catalogue of the config contract: which provider ids kt speaks natively,
the target fields each one requires or alone accepts, and their documented defaults.

Lint (`policies.lint`), the loader (`policies.config`) and the JSON Schema read it; the
gateway's adapters (`gateway.providers`) implement each id. Any other lower-case id is an
OpenAI-compatible upstream.
"""

from __future__ import annotations

from urllib.parse import urlsplit

AZURE_OPENAI = "azure-openai"
AZURE_API_VERSION = "2024-10-21"  # the newest GA data-plane version of Azure OpenAI's inference API

GOOGLE = "google"
GOOGLE_KEY_HEADER = "x-goog-api-key"

BEDROCK = "bedrock"

OPENAI = "openai"
OPENAI_HOST = "api.openai.com"
# How a target serves `POST /v1/responses`: `native` forwards the Responses request to
# `{base_url}/v1/responses` (azure-openai: `{base_url}/openai/v1/responses`, Azure's GA v1 API);
# `translate` sends it as chat completions. Default: native for provider openai on api.openai.com
# (or no base_url), translate on any other base_url and on azure-openai (Azure serves Responses
# only in some regions and for some models: native is the operator's choice, per deployment).
RESPONSES_API = ("native", "translate")

NATIVE = (OPENAI, "anthropic", AZURE_OPENAI, GOOGLE, BEDROCK, "mock")

# ids users reach for that mean a native provider (lint W005 suggests it)
ALIASES: dict[str, str] = {"gemini": GOOGLE, "google-genai": GOOGLE, "azure": AZURE_OPENAI, "azure-ai": AZURE_OPENAI,
                           "aws-bedrock": BEDROCK, "aws": BEDROCK}

# fields a provider cannot work without (no default can stand in: an Azure resource has its own host)
REQUIRED: dict[str, dict[str, str]] = {
    AZURE_OPENAI: {"base_url": "https://<resource>.openai.azure.com"},
    BEDROCK: {"region": "us-east-1"},
}

# fields only some providers understand: on another target they are a mistake, not a no-op
ONLY_FOR: dict[str, tuple[str, ...]] = {
    "deployment": (AZURE_OPENAI,),
    "api_version": (AZURE_OPENAI,),
    "region": (BEDROCK,),
    "responses_api": (OPENAI, AZURE_OPENAI),
}


def responses_native(provider: str, base_url: str | None, responses_api: str | None) -> bool:
    """Whether a target serves `/v1/responses` natively (see `RESPONSES_API`)."""
    if provider not in ONLY_FOR["responses_api"]:
        return False
    if responses_api is not None:
        return responses_api == "native"
    if provider == AZURE_OPENAI:
        return False
    if base_url is None:
        return True
    return urlsplit(base_url).hostname == OPENAI_HOST
