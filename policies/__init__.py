"""The policy-config contract: loading, validation, policy kinds and the chain.

Knows no HTTP and no Git. The public surface other parts use:

- `load_config(path, state=None) -> Config` / `load_config_bytes(data, source, state)`;
  raise `ConfigError` (with `.findings`) on anything invalid.
- `Config`: immutable; `.pack`, `.chain`, `.targets`, `.fallback`, `.sha256`, `.document`,
  `.targets_for(model)`.
- `Chain.run_input(ex, fail_mode)`, `.run_output(ex, fail_mode)`, `.stream_guard(ex, fail_mode)`.
- values in `policies.model`: `Exchange`, `Verdict`, `Phase`, `PolicyResult`, `ChainOutcome`, `Target`.
"""

from policies.chain import Chain, StreamGuard
from policies.config import Config, Fallback, Pack, compile_document, load_config, load_config_bytes
from policies.findings import ConfigError, Finding
from policies.model import ChainOutcome, Exchange, Phase, PolicyResult, Target, Verdict
from policies.state import PolicyState

__all__ = [
    "Chain",
    "ChainOutcome",
    "Config",
    "ConfigError",
    "Exchange",
    "Fallback",
    "Finding",
    "Pack",
    "Phase",
    "PolicyResult",
    "PolicyState",
    "StreamGuard",
    "Target",
    "Verdict",
    "compile_document",
    "load_config",
    "load_config_bytes",
]
