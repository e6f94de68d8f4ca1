#!/usr/bin/env bash
# Optional, not in CI: LiteLLM's proxy side by side with kt on the same load (issue 3 §8).
# Installs litellm[proxy] (~750 MB) into a venv of its own, runs it with one worker, no database,
# no callbacks, the local cost map, pinned to CPU 0, in front of the same fake upstream; then runs
# bench/overhead.py with LiteLLM as an extra path. Usage: bash bench/compare-litellm.sh [overhead.py args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LITELLM_VENV:-.venv-litellm}
UP_PORT=${UP_PORT:-18400}
LL_PORT=${LL_PORT:-18401}
[ -x "$VENV/bin/litellm" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet 'litellm[proxy]'; }
work=$(mktemp -d)
cat > "$work/litellm.yaml" <<YAML
model_list:
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:$UP_PORT/v1", api_key: sk-upstream-bench}
litellm_settings: {num_retries: 0, request_timeout: 30}
general_settings: {master_key: os.environ/LITELLM_MASTER_KEY}
YAML
export LITELLM_MASTER_KEY="sk-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export LITELLM_LOCAL_MODEL_COST_MAP=True
pin=(); command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ] && pin=(taskset -c 0)
"${pin[@]}" "$VENV/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$LL_PORT" --num_workers 1 \
  >"$work/litellm.log" 2>&1 &
ll=$!
trap 'kill $ll 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 120); do
  curl -fs "http://127.0.0.1:$LL_PORT/health/liveliness" >/dev/null 2>&1 && break
  kill -0 $ll 2>/dev/null || { cat "$work/litellm.log"; exit 1; }
  sleep 0.5
done
BENCH_CLIENT_KEY=$LITELLM_MASTER_KEY .venv/bin/python bench/overhead.py --upstream-port "$UP_PORT" \
  --extra "litellm=http://127.0.0.1:$LL_PORT" "$@"
