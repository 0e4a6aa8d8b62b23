"""External ML models, end to end in a real Envoy with two workers, against the
mock ML service (examples/mock_ml.py), which misbehaves on demand.

The mock scores a request by a rule on one feature of Vigil's vector (feature
1, request_bytes: a body over 32 KiB) so "anomalous" means something a test
can produce; every fault mode is switched on at run time through its
/_control endpoint.
"""

from __future__ import annotations

import re
import socket
import threading
import time

from harness import config, wait_for

ANOMALY_URL = "http://vigil_ml/v2/models/vigil-iforest/infer"
BEHAVIORAL_URL = "http://vigil_ml/v1/score"
BIG_BODY = b"x" * 40_000  # request_bytes = log2(40001) / 30 = 0.51
RULE = {"feature": 1, "above": 0.5, "score": 0.97}

TIMEOUT_MS, RETRIES = 200, 1
BUDGET_S = TIMEOUT_MS * (RETRIES + 1) / 1000
MARGIN_S = 0.35


def ml_config(**ml) -> dict:
    base = {"model_timeout_ms": TIMEOUT_MS, "model_retry_count": RETRIES}
    base.update(ml)
    # Rate limiting off: every decision here is the model's.
    return config(enable_ml_models=True, ml_model_config=base, rate_limit={"enabled": False})


def prom_value(text: str, name: str, **labels) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def vigil_records(stack, predicate, count: int = 1) -> list[dict]:
    """Access-log records whose Vigil record matches, once `count` of them exist."""
    def found():
        out = []
        for line in stack.access_log_lines():
            record = line.get("vigil")
            if record and record != "-":
                import json
                record = json.loads(record)
                if predicate(line, record):
                    out.append(record)
        return out if len(out) >= count else None
    return wait_for(found, timeout=15, what="access-log records")


def test_inline_model_blocks_the_anomalous_request_it_scores_high(stack_factory):
    stack = stack_factory(ml_config(mode="inline", anomaly_model_url=ANOMALY_URL))
    stack.ml_control(rule=RULE)
    for i in range(6):
        status, _, _ = stack.request(f"/users/{i}", headers={"x-user-id": "alice"})
        assert status == 200
    status, headers, body = stack.request("/upload", method="POST", headers={"x-user-id": "alice"}, body=BIG_BODY)
    assert status == 403, body
    assert b'"decision":"block"' in body

    benign = vigil_records(stack, lambda line, r: line["path"].startswith("/users/"), count=6)
    assert all(r["user_deviation_score"] is not None and r["user_deviation_score"] < 0.5 for r in benign), benign
    assert all(r["decision"] == "allow" and "ml=" in r["signals"] for r in benign)
    [blocked] = vigil_records(stack, lambda line, r: line["path"] == "/upload")
    assert blocked["user_deviation_score"] == 0.97
    assert blocked["decision"] == "block" and blocked["enforced"]
    assert any(d.startswith("ml: anomaly model scored 0.97") for d in blocked["threat_details"]), blocked

    # One call per request, all over OIP v2, each with Vigil's feature version.
    assert stack.ml_stats()["by_path"] == {"/v2/models/vigil-iforest/infer": 7}
    stack.settle()
    prom = stack.prometheus()
    assert prom_value(prom, "vigil_ml_calls_total", model="anomaly") == 7
    assert prom_value(prom, "vigil_ml_latency_ms_count", model="anomaly") == 7


def test_async_answer_reaches_the_identitys_next_requests_on_both_workers(stack_factory):
    stack = stack_factory(ml_config(mode="async", behavioral_model_url=BEHAVIORAL_URL))
    stack.ml_control(rule=RULE)
    for i in range(4):
        assert stack.request(f"/users/{i}", headers={"x-user-id": "mallory"})[0] == 200
    # Async: the anomalous request itself goes through, and the model's answer
    # lands in shared data a tick later.
    t0 = time.time()
    assert stack.request("/upload", method="POST", headers={"x-user-id": "mallory"}, body=BIG_BODY)[0] == 200
    wait_for(lambda: stack.request("/users/9", headers={"x-user-id": "mallory"})[0] == 403,
             timeout=5, what="the answer to reach mallory's next request")
    print(f"async answer applied {time.time() - t0:.2f} s after the anomalous request")
    # Every later request of mallory's is refused, whichever worker serves it
    # (each request is a new connection); other identities are not.
    assert [stack.request("/users/1", headers={"x-user-id": "mallory"})[0] for _ in range(10)] == [403] * 10
    assert stack.request("/users/1", headers={"x-user-id": "trent"})[0] == 200
    stack.settle()
    served = list(stack.connections_per_worker().values())
    assert len([n for n in served if n > 0]) == 2, f"both workers served: {served}"
    records = vigil_records(stack, lambda line, r: line["status"] == 403, count=11)
    assert all(r["user_deviation_score"] >= 0.9 and r["decision"] == "block" for r in records)
    assert any("recent request" in d for d in records[0]["threat_details"]), records[0]


def test_each_fault_fails_open_or_closed_within_the_budget(stack_factory):
    breaker = {"consecutive_failures": 1000, "open_seconds": 60}
    open_stack = stack_factory(ml_config(mode="inline", anomaly_model_url=ANOMALY_URL, circuit_breaker=breaker), name="open")
    closed_stack = stack_factory(
        ml_config(mode="inline", anomaly_model_url=ANOMALY_URL, circuit_breaker=breaker,
                  anomaly_model={"failure_mode": "deny"}), name="closed")
    expected_reason = {
        "slow": "timeout", "error": "http_status", "reset": "reset", "garbage": "malformed",
        "wrong_shape": "wrong_shape", "nan": "non_finite", "out_of_range": "out_of_range",
    }
    attempts = {"slow": 2, "error": 2, "reset": 2}  # transport failures are retried once
    slowest = 0.0
    for stack, refused in ((open_stack, False), (closed_stack, True)):
        for fault, reason in expected_reason.items():
            stack.ml_control(fault=fault, delay_ms=1000, reset_stats=True)
            for i in range(3):
                t = time.time()
                status, _, body = stack.request(f"/users/{i}", headers={"x-user-id": f"u{i}"})
                took = time.time() - t
                slowest = max(slowest, took)
                assert status == (403 if refused else 200), (fault, status, body)
                assert took < BUDGET_S + MARGIN_S, f"{fault}: {took:.3f} s"
            assert stack.ml_stats()["calls"] == 3 * attempts.get(fault, 1), fault
        stack.ml_control(fault="none")
        assert stack.request("/users/1", headers={"x-user-id": "ok"})[0] == 200, "a healthy model again: allowed"
        stack.settle()
        prom = stack.prometheus()
        for fault, reason in expected_reason.items():
            n = prom_value(prom, "vigil_ml_failures_total", model="anomaly", reason=reason)
            assert n == 3 * attempts.get(fault, 1), (fault, reason, n)
        assert prom_value(prom, "vigil_ml_fallbacks_total", model="anomaly") == 3 * len(expected_reason)
        assert prom_value(prom, "vigil_ml_retries_total", model="anomaly") == 3 * 3
    print(f"slowest faulty request {slowest * 1000:.0f} ms; budget {BUDGET_S * 1000:.0f} ms + {MARGIN_S * 1000:.0f} ms")
    closed = vigil_records(closed_stack, lambda line, r: line["status"] == 403, count=21)
    assert all("ml_unavailable=1.000" in r["signals"] for r in closed)
    assert any("failing closed" in d for d in closed[0]["threat_details"])


def test_the_breaker_opens_on_a_failing_model_and_recovers(stack_factory):
    stack = stack_factory(ml_config(mode="inline", anomaly_model_url=ANOMALY_URL, model_retry_count=0,
                                    circuit_breaker={"consecutive_failures": 3, "open_seconds": 2}))
    stack.ml_control(fault="error")
    # Each worker opens its own breaker after 3 failures; then calls stop.
    # One user re-reading its own record: a fresh identity walking 30 object
    # ids in a second is enumeration, and the detector may rightly throttle it.
    for _ in range(30):
        assert stack.request("/users/1", headers={"x-user-id": "b"})[0] == 200
    calls = stack.ml_stats()["calls"]
    assert 3 <= calls <= 6, calls
    stack.settle()
    prom = stack.prometheus()
    open_workers = prom_value(prom, "vigil_ml_breaker_open", model="anomaly")
    assert open_workers >= 1
    assert prom_value(prom, "vigil_ml_failures_total", model="anomaly", reason="breaker_open") == 30 - calls
    assert "circuit breaker open" in stack.envoy_log_text()

    # The model recovers; after open_seconds a probe closes each breaker.
    stack.ml_control(fault="none")
    time.sleep(2.2)
    for _ in range(20):
        assert stack.request("/users/1", headers={"x-user-id": "b"})[0] == 200
    assert stack.ml_stats()["calls"] > calls + 10, "calls flow again"
    stack.settle()
    assert prom_value(stack.prometheus(), "vigil_ml_breaker_open", model="anomaly") == 0
    assert "circuit breaker closed" in stack.envoy_log_text()


def test_a_request_that_ends_while_waiting_leaves_nothing_behind(stack_factory):
    stack = stack_factory(ml_config(mode="inline", anomaly_model_url=ANOMALY_URL, model_timeout_ms=3000,
                                    model_retry_count=0))
    stack.ml_control(fault="slow", delay_ms=2000)

    def hang_up():
        with socket.create_connection(("127.0.0.1", stack.port)) as s:
            s.sendall(b"GET /users/1 HTTP/1.1\r\nhost: x\r\nx-user-id: quitter\r\n\r\n")
            time.sleep(0.3)  # the request is now paused on the model

    threads = [threading.Thread(target=hang_up) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stack.settle()
    assert prom_value(stack.prometheus(), "vigil_ml_abandoned_total") == 5
    # The VMs are fine: a later request is served (the slow model still times out, fail-open).
    stack.ml_control(fault="none")
    assert stack.request("/users/1", headers={"x-user-id": "after"})[0] == 200
    time.sleep(2.5)  # the abandoned calls' answers would have arrived by now
    assert stack.request("/users/2", headers={"x-user-id": "after"})[0] == 200
    assert "panicked" not in stack.envoy_log_text()
