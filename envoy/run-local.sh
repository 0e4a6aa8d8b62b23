#!/usr/bin/env bash
# `make run`: the demo upstream, the mock ML service and Envoy with Vigil, in
# the foreground. Ctrl-C stops all of them.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_BIN=${ENVOY_BIN:-.venv/bin/envoy}
PYTHON=${PYTHON:-python3}
pids=()

stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$PYTHON" examples/demo_upstream.py --port 18080 & pids+=($!)
# The mock model scores uploads over 32 KiB (feature 1, request_bytes) as anomalous.
"$PYTHON" examples/mock_ml.py --port 18090 --rule 1:0.5:0.97 & pids+=($!)
"$ENVOY_BIN" -c envoy/envoy.yaml --concurrency 2 --log-level warn --component-log-level wasm:info \
  > target/envoy-access.log 2> target/envoy.log & pids+=($!)

for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:9901/ready >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs http://127.0.0.1:9901/ready >/dev/null || { echo "Envoy did not start; see target/envoy.log"; tail -5 target/envoy.log; exit 1; }

cat <<'MSG'

Vigil is running: Envoy on http://127.0.0.1:10000 (admin http://127.0.0.1:9901).

  # a benign request: the upstream echoes the x-vigil-* headers it received
  curl -s -H 'x-user-id: alice' http://127.0.0.1:10000/users/42

  # 40 quick requests from one identity: past 20 per 10 s it is throttled (429), from 35 blocked (403)
  for i in $(seq 40); do curl -s -o /dev/null -w '%{http_code} ' -H 'x-user-id: mallory' http://127.0.0.1:10000/orders; done; echo

  # Vigil's metrics
  curl -s http://127.0.0.1:9901/stats/prometheus | grep ^vigil_

Access log (one JSON line per request): target/envoy-access.log   Envoy log: target/envoy.log
Ctrl-C stops everything.
MSG
wait -n
