#!/usr/bin/env bash
# Serve a model repository written by train.py with MLServer, in the foreground.
#   examples/model_server/serve.sh [DIR]      (default DIR: target/vigil-model)
# MLSERVER overrides the mlserver binary (default: .venv-mlserver/bin/mlserver,
# installed by `make setup-model-server`). Ports and host are in DIR/settings.json.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mlserver=${MLSERVER:-$root/.venv-mlserver/bin/mlserver}
dir=${1:-$root/target/vigil-model}

[ -x "$mlserver" ] || { echo "no $mlserver: run 'make setup-model-server' or set MLSERVER" >&2; exit 1; }
[ -f "$dir/vigil-iforest/model.joblib" ] || {
  echo "no trained model in $dir: run examples/model_server/train.py --input LOG... --out $dir" >&2; exit 1; }
exec "$mlserver" start "$dir"
