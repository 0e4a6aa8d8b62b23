"""The reference model server, end to end: Vigil exports features from real
traffic through a real Envoy (two workers), examples/model_server/train.py fits
an isolation forest on them, Seldon MLServer serves it over the Open Inference
Protocol v2, and Vigil, in inline mode, flags the request the forest finds
anomalous while the routine traffic it was trained on flows."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import urllib.request
from pathlib import Path

from harness import ROOT, Process, config, free_port, wait_for

VENV = Path(os.environ.get("MLSERVER_VENV", ROOT / ".venv-mlserver"))
USERS = [f"user{i}" for i in range(12)]
# Profiling off in both phases: a profile's and an identity's age are features, and the
# short test phases would see different ages (production trains on days).
NO_PROFILES = {"rate_limit": {"enabled": False}, "behavioral_profiling": {"enable_user_profiling": False}}


def routine(stack, n: int) -> list[int]:
    """The traffic the model learns as normal, varied in every feature the
    forest can split on: users (and a few anonymous clients) reading at
    depths 1 to 4 and sometimes writing small bodies."""
    rng = random.Random(7)
    statuses = []
    for i in range(n):
        headers = {} if i % 10 == 0 else {"x-user-id": USERS[i % len(USERS)]}
        k = rng.randrange(50)
        if i % 6 == 0:
            headers["content-type"] = "application/json"
            body = b"{" + b" " * rng.randrange(10, 3000) + b"}"
            method = "POST" if i % 12 else "DELETE"
            status, _, _ = stack.request(f"/users/{k}/settings", method=method, headers=headers, body=body)
        else:
            path = rng.choice(["/health", "/users/{}", "/users/{}/orders", "/users/{}/orders/{}/items"]).format(k, k + 1)
            status, _, _ = stack.request(path, headers=headers)
        statuses.append(status)
    return statuses


def test_isolation_forest_served_by_mlserver_flags_what_it_finds_anomalous(stack_factory, tmp_path):
    # 1. Export: Vigil's records of routine traffic carry the feature vector.
    export = stack_factory(config(log_record="all", ml_model_config={"export_features": True}, **NO_PROFILES),
                           name="export")
    assert routine(export, 700) == [200] * 700
    records = wait_for(lambda: (lines := [l for l in export.access_log_lines() if l.get("vigil", "-") != "-"])
                       and len(lines) >= 700 and lines, timeout=20, what="700 access-log records")
    assert all(len(json.loads(l["vigil"])["ml_features"]) == 16 for l in records), "vigil.v2 by default"
    export.stop()

    # 2. Train on the exported log.
    model_dir = tmp_path / "model"
    t = time.time()
    out = subprocess.run([str(VENV / "bin" / "python"), "examples/model_server/train.py",
                          "--input", str(export.access_log), "--out", str(model_dir),
                          # Trained on a minute of traffic: the hour of day would make every later
                          # minute look new to the forest.
                          "--ignore-features", "hour_sin,hour_cos"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    print(f"trained in {time.time() - t:.1f} s:\n{out.stdout}")

    # 3. Serve it with MLServer on free loopback ports.
    port = free_port()
    settings = json.loads((model_dir / "settings.json").read_text())
    settings.update(http_port=port, grpc_port=free_port(), metrics_port=free_port())
    (model_dir / "settings.json").write_text(json.dumps(settings))
    server = Process("mlserver", [str(VENV / "bin" / "mlserver"), "start", str(model_dir)], tmp_path / "mlserver.log")
    try:
        def ready():
            try:
                url = f"http://127.0.0.1:{port}/v2/models/vigil-iforest/ready"
                return urllib.request.urlopen(url, timeout=2).status == 200
            except OSError:
                return False
        t = time.time()
        wait_for(ready, timeout=60, what=f"MLServer ready:\n{server.tail() if server.log.exists() else ''}")
        print(f"MLServer ready in {time.time() - t:.1f} s")

        # 4. Vigil asks the forest about every request (inline) and enforces.
        guarded = stack_factory(config(
            mode="enforce", enable_ml_models=True, log_record="all", **NO_PROFILES,
            ml_model_config={
                "mode": "inline", "anomaly_model_url": "http://vigil_ml/v2/models/vigil-iforest/infer",
                "anomaly_model": {"score_scale": "isolation_forest"},
                "model_timeout_ms": 1000, "model_retry_count": 1,
            }), name="guarded", model_port=port)
        assert routine(guarded, 120) == [200] * 120

        # An anonymous client deleting on a route everyone else only reads (OWASP API5,
        # function-level authorization). A forest isolates a request only along the
        # features its training rows vary in: a request beyond their range (a 4 MB body,
        # a route twice as deep) ties with the routine's own extremes, so the anomaly
        # here is a combination inside the range that no routine row has.
        status, _, body = guarded.request("/users/12/orders/13/items", method="DELETE")
        assert status in (200, 429, 403), body

        def records():
            return [json.loads(l["vigil"]) for l in guarded.access_log_lines() if l.get("vigil", "-") != "-"]

        def is_anomalous(r):  # the routine deletes only settings
            return r["method"] == "DELETE" and r["route"].endswith("/items")
        [anomalous] = wait_for(lambda: [r for r in records() if is_anomalous(r)],
                               timeout=15, what="the anomalous request's record")
        routine_records = wait_for(lambda: (r := [r for r in records() if not is_anomalous(r)]) and len(r) >= 120 and r,
                                   timeout=15, what="the routine records")
        scores = sorted(r["user_deviation_score"] for r in routine_records)
        allowed = sum(r["decision"] == "allow" for r in routine_records) / len(routine_records)
        median, p95 = scores[len(scores) // 2], scores[int(len(scores) * 0.95)]
        print(f"routine: median score {median:.3f}, p95 {p95:.3f}, highest {scores[-1]:.3f}, allowed {allowed:.1%}; "
              f"anomalous: {anomalous['user_deviation_score']:.3f}, {anomalous['decision']} (status {status})")
        assert median < 0.5 and allowed >= 0.85
        assert anomalous["user_deviation_score"] > max(0.5, p95), "the forest ranks it above routine traffic"
        assert anomalous["decision"] != "allow", "the model's score raised the decision"
        assert any(d.startswith("ml: anomaly model scored") for d in anomalous["threat_details"]), anomalous
    finally:
        server.stop()
