#!/usr/bin/env bash
# A/B of the gateway's CPU per request: two source trees served side by side, paired.
#
#   bash bench/ab_cpu.sh OLD_TREE NEW_TREE [SECONDS] [ROUNDS]
#   git worktree add /tmp/kt-old HEAD~1 && bash bench/ab_cpu.sh /tmp/kt-old .
#
# Both gateways run at once on CPU 0 with the bench config, each under its own `wrk -c16`
# (on CPU 1, with the test upstream), so whatever else the machine does slows both alike;
# each prints its process CPU time per request (/proc/<pid>/stat from the start of the load
# until the process is idle again: work a build defers, e.g. a backlog, is counted). Two runs of
# the same tree differ by about +-4 us; separate `make bench` runs drift by 10-20 %.
# Absolute numbers are higher than alone (the two share one core and its caches).
# Needs wrk and taskset; uses this tree's .venv for both (the trees' own code is what runs).
set -euo pipefail
OLD=$(cd "$1" && pwd); NEW=$(cd "$2" && pwd); SECS=${3:-8}; ROUNDS=${4:-3}
HERE=$(cd "$(dirname "$0")/.." && pwd); PY=$HERE/.venv/bin/python
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
UP=$((20000 + RANDOM % 5000))  # below the ephemeral range (32768+): no clash with client sockets
cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = [[{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful support assistant."},{"role":"user","content":"Hello, my email is jane.doe@example.com. Please summarise my last order."}]}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-client"
LUA
(cd "$HERE" && exec taskset -c 1 "$PY" tests/fake_upstream.py --fast --port $UP > "$WORK/up.log" 2>&1) &
for _ in $(seq 100); do grep -q listening "$WORK/up.log" && break; sleep 0.1; done
sed "s#__UPSTREAM__#http://127.0.0.1:$UP#" "$HERE/bench/policy-config.yaml" > "$WORK/config.yaml"

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for round in $(seq "$ROUNDS"); do
  pids=(); ports=()
  for tree in "$OLD" "$NEW"; do
    port=$((UP + 500 + ${#ports[@]} + 2 * round))
    (cd "$tree" && BENCH_UPSTREAM_KEY=sk-up exec taskset -c 0 "$PY" -m kt gateway run --policy-config "$WORK/config.yaml" \
      --listen 127.0.0.1:$port --state-dir "$WORK/state-$round-$port" > "$WORK/gw-$port.log" 2>&1) &
    pids+=($!); ports+=($port)
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
  done
  load() {  # load SECONDS: both gateways at once; wrk's output in $WORK/wrk-<port>.txt
    local w=()
    for port in "${ports[@]}"; do
      taskset -c 1 wrk -t1 -c16 -d"$1"s -s "$WORK/post.lua" "http://127.0.0.1:$port/v1/chat/completions" \
        > "$WORK/wrk-$port.txt" & w+=($!)
    done
    wait "${w[@]}"
  }
  settle() {  # until both gateways are idle again (at most 5 s): work a build defers past the load counts too
    local a b
    for _ in $(seq 20); do
      a=($(cpu "${pids[0]}") $(cpu "${pids[1]}")); sleep 0.25; b=($(cpu "${pids[0]}") $(cpu "${pids[1]}"))
      (( b[0] - a[0] <= 2 && b[1] - a[1] <= 2 )) && return
    done
  }
  load 2; settle  # warm-up
  before=($(cpu "${pids[0]}") $(cpu "${pids[1]}"))
  load "$SECS"; settle
  after=($(cpu "${pids[0]}") $(cpu "${pids[1]}"))
  line="round $round:"
  for i in 0 1; do
    n=$(awk '/requests in/{print $1}' "$WORK/wrk-${ports[$i]}.txt")
    us=$(( (after[i] - before[i]) * 1000000 / $(getconf CLK_TCK) / n ))
    line+="  $([ $i = 0 ] && echo old || echo new) $us us/request ($n requests)"
  done
  echo "$line"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
done
