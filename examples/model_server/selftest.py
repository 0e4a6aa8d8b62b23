#!/usr/bin/env python3
"""Self-test of the reference model server, end to end.

Synthesises benign Vigil traffic as access-log lines, trains both models with
train.py, starts MLServer on free loopback ports, sends the exact OIP request
Vigil sends for one benign and one anomalous request, checks the anomalous one
scores lower (more anomalous), checks the error cases, and stops the server.

    .venv-mlserver/bin/python examples/model_server/selftest.py [--keep DIR]
"""

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["vigil-iforest", "vigil-lof"]
CEILING = 20  # the identity's rate ceiling, as in the demo harness


def features(method, content_length, route, hour, window_count, observations, weak, session,
             age_s, minute_requests, minute_objects, minute_endpoints, minute_fails, run):
    """One vigil.v2 vector, computed with the formulas of the filter's contract."""
    segments = [s for s in route.split("/") if s]
    return [
        0.0 if method in ("GET", "HEAD", "OPTIONS") else 1.0,
        min(1.0, math.log2(1 + content_length) / 30),
        min(1.0, len(segments) / 8),
        min(1.0, sum(s.startswith("{") for s in segments) / 4),
        (1 + math.sin(2 * math.pi * hour / 24)) / 2,
        (1 + math.cos(2 * math.pi * hour / 24)) / 2,
        min(1.0, window_count / CEILING / 2),
        min(1.0, math.log2(1 + observations) / 16),
        float(weak),
        float(session),
        min(1.0, math.log2(1 + age_s) / 20),
        min(1.0, math.log2(1 + minute_requests) / 10),
        min(1.0, math.log2(1 + minute_objects) / 10),
        min(1.0, math.log2(1 + minute_endpoints) / 6),
        minute_fails / minute_requests if minute_requests else 0.0,
        min(1.0, math.log2(1 + run) / 8),
    ]


WIDTH = 16
BENIGN = features("GET", 0, "/users/{id}", 14.25, 3, 500, False, True, 86_400, 4, 2, 3, 0, 0)
# A fresh identity walking objects, half its answers failing.
ANOMALOUS = features("POST", 50_000_000, "/a/b/c/d/e/{x}/{y}/{z}", 3.5, 2 * CEILING, 0, True, False,
                     0, 600, 580, 1, 300, 250)


def synthesise(rng, n):
    routes = ["/users/{id}", "/orders", "/orders/{id}", "/items", "/items/{id}/reviews", "/"]
    rows = []
    for _ in range(n):
        write = rng.random() < 0.15
        requests = int(rng.integers(1, 15))
        rows.append(features(
            "POST" if write else "GET",
            int(rng.integers(100, 2000)) if write else 0,
            routes[rng.integers(len(routes))],
            rng.uniform(8, 18),
            int(rng.integers(1, 6)),
            int(rng.integers(20, 5000)),
            rng.random() < 0.03,
            rng.random() < 0.9,
            float(rng.uniform(60, 30 * 86_400)),
            requests,
            int(rng.integers(0, requests + 1)),
            int(rng.integers(1, min(requests, 6) + 1)),
            int(rng.random() < 0.05),
            int(rng.integers(0, 3)),
        ))
    return rows


def write_logs(folder, rng):
    """Training data in both shapes train.py reads from JSON lines."""
    rows = synthesise(rng, 2000)
    harness = os.path.join(folder, "envoy-access.log")
    with open(harness, "w") as f:
        # Envoy's access log in the harness: Vigil's record is a JSON string under "vigil".
        for i, row in enumerate(rows[:1500]):
            record = {"request_id": f"r{i}", "decision": "allow", "risk_score": 0.0, "ml_features": row}
            f.write(json.dumps({"method": "GET", "status": "200", "vigil": json.dumps(record)}) + "\n")
        f.write(json.dumps({"method": "GET", "status": "200", "vigil": "-"}) + "\n")  # export was off
        # Known abuse, which --exclude-decision block keeps out of "normal".
        for i in range(50):
            record = {"request_id": f"b{i}", "decision": "block", "ml_features": ANOMALOUS}
            f.write(json.dumps({"vigil": json.dumps(record)}) + "\n")
    plain = os.path.join(folder, "vigil-records.jsonl")
    with open(plain, "w") as f:
        for i, row in enumerate(rows[1500:]):
            f.write(json.dumps({"request_id": f"p{i}", "decision": "allow", "ml_features": row}) + "\n")
    return [harness, plain]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except json.JSONDecodeError:
            return e.code, body.decode(errors="replace")


def vigil_body(data, shape, request_id="selftest-1", version="vigil.v2"):
    """The body Vigil sends."""
    return {
        "id": request_id,
        "parameters": {"vigil_feature_version": version, "vigil_model": "anomaly"},
        "inputs": [{"name": "features", "shape": shape, "datatype": "FP32", "data": data}],
    }


def output(response, name):
    """An output's values, flat (the OIP allows flat or nested data)."""
    data = next(o["data"] for o in response["outputs"] if o["name"] == name)
    return np.ravel(data).tolist()


class Failed(Exception):
    pass


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        raise Failed(what)


def wait_ready(base, proc, log, timeout=60):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise Failed(f"mlserver exited with {proc.returncode}:\n" + open(log).read()[-3000:])
        try:
            if all(urllib.request.urlopen(f"{base}/v2/models/{m}/ready", timeout=1).status == 200 for m in MODELS):
                return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise Failed(f"mlserver not ready after {timeout}s:\n" + open(log).read()[-3000:])


def run(work):
    rng = np.random.default_rng(7)
    logs = write_logs(work, rng)
    out = os.path.join(work, "model")
    t = time.monotonic()
    subprocess.run([sys.executable, os.path.join(HERE, "train.py"), "--input", *logs, "--out", out,
                    "--lof", "--seed", "1", "--exclude-decision", "block"], check=True)
    print(f"trained in {time.monotonic() - t:.1f}s")

    ports = {k: free_port() for k in ("http_port", "grpc_port", "metrics_port")}
    with open(os.path.join(out, "settings.json")) as f:
        settings = json.load(f)
    settings.update(ports)
    with open(os.path.join(out, "settings.json"), "w") as f:
        json.dump(settings, f)

    mlserver = os.path.join(os.path.dirname(sys.executable), "mlserver")
    log = os.path.join(work, "mlserver.log")
    t = time.monotonic()
    with open(log, "w") as logf:
        proc = subprocess.Popen([mlserver, "start", "."], cwd=out, stdout=logf, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{ports['http_port']}"
        print(f"mlserver ready in {wait_ready(base, proc, log):.1f}s on {base}")
        exercise(base)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"mlserver stopped (exit {proc.returncode}) after {time.monotonic() - t:.1f}s")


def exercise(base):
    for model in MODELS:
        url = f"{base}/v2/models/{model}/infer"
        status, benign = post(url, vigil_body(BENIGN, [1, WIDTH]))
        check(status == 200, f"{model}: benign request answered 200")
        if model == MODELS[0]:
            print("request body:  " + json.dumps(vigil_body(BENIGN, [1, WIDTH])))
            print("response body: " + json.dumps(benign))
        status, anomalous = post(url, vigil_body(ANOMALOUS, [1, WIDTH], "selftest-2"))
        check(status == 200, f"{model}: anomalous request answered 200")
        (b,), (a,) = output(benign, "anomaly_score"), output(anomalous, "anomaly_score")
        (conf,) = output(benign, "confidence")
        check(a < b, f"{model}: anomalous decision_function {a:.4f} < benign {b:.4f}")
        check(0 <= conf <= 1, f"{model}: confidence {conf:.3f} in [0, 1]")
        check(benign["id"] == "selftest-1", f"{model}: response echoes the request id")

        status, nested = post(url, vigil_body([BENIGN], [1, WIDTH]))
        check(status == 200 and output(nested, "anomaly_score") == [b], f"{model}: nested data [[...]] scores the same")
        status, batch = post(url, vigil_body(BENIGN + ANOMALOUS, [2, WIDTH]))
        shape = {o["name"]: o["shape"] for o in batch.get("outputs", [])}
        check(status == 200 and shape.get("anomaly_score") == [2, 1], f"{model}: batch [2,16] gives anomaly_score [2,1]")

    url = f"{base}/v2/models/{MODELS[0]}/infer"
    for what, body in [
        ("12 features", vigil_body(BENIGN[:12], [1, 12])),
        ("shape/data mismatch", vigil_body(BENIGN[:15], [1, WIDTH])),
        ("value outside [0,1]", vigil_body([2.0] + BENIGN[1:], [1, WIDTH])),
        ("feature version vigil.v1", vigil_body(BENIGN, [1, WIDTH], version="vigil.v1")),
    ]:
        status, err = post(url, body)
        check(status == 400, f"rejects {what}: {status} {json.dumps(err)}")

    # Latency as the filter sees it: one request at a time over one connection each.
    times = []
    for _ in range(200):
        t = time.perf_counter()
        post(url, vigil_body(BENIGN, [1, WIDTH]))
        times.append((time.perf_counter() - t) * 1000)
    print(f"latency over 200 sequential requests: p50 {np.percentile(times, 50):.1f} ms, "
          f"p99 {np.percentile(times, 99):.1f} ms")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    args = p.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="vigil-model-selftest-")
    os.makedirs(work, exist_ok=True)
    try:
        run(work)
    except (Failed, subprocess.CalledProcessError) as e:
        print(f"selftest FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("selftest passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
