"""The lab's stack: tests/e2e/harness.py's Stack (a real Envoy, --concurrency 2,
loading the built vigil.wasm with envoy/envoy.yaml), with the recording
upstream (eval/upstream.py) in place of the demo upstream, and the filter
configuration of eval/vigil.json."""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path

EVAL = Path(__file__).resolve().parents[1]
ROOT = EVAL.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import harness  # noqa: E402
from harness import Process, free_port, wait_for  # noqa: E402,F401  (re-exported for the lab)


def load_config(ml: bool, overrides: dict | None = None) -> dict:
    """eval/vigil.json, with eval/vigil-ml.json merged in for --ml (key by key,
    as Vigil merges sections), then any overrides."""
    config = json.loads((EVAL / "vigil.json").read_text())
    layers = [json.loads((EVAL / "vigil-ml.json").read_text())] if ml else []
    layers += [overrides] if overrides else []
    for layer in layers:
        _merge(config, layer)
    return config


def _merge(base: dict, layer: dict) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


class LabStack(harness.Stack):
    """Only the upstream differs from the harness: the harness spawns
    examples/demo_upstream.py by name, so the spawn is redirected here."""

    def _spawn(self, name, args, log=None):
        if name == "upstream":
            args = [sys.executable, str(EVAL / "upstream.py"), "--port", str(self.upstream_port)]
        return super()._spawn(name, args, log)

    def upstream_call(self, method: str, path: str, body: dict | None = None) -> dict:
        """A call straight to the recording upstream (not through Envoy)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"content-type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"upstream {method} {path}: {resp.status} {data[:200]!r}")
            return json.loads(data)
        finally:
            conn.close()

    def upstream_records(self) -> list[dict]:
        records: list[dict] = []
        while True:
            chunk = self.upstream_call("GET", f"/_lab/records?since={len(records)}")["records"]
            if not chunk:
                return records
            records.extend(chunk)
