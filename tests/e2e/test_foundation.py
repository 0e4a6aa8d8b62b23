"""The foundation slice, end to end in a real Envoy with two workers."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import config, echoed, signals, wait_for


def test_benign_request_reaches_upstream_with_vigil_headers(stack_factory):
    stack = stack_factory()
    status, headers, body = stack.request("/users/42", headers={"x-user-id": "alice"})
    assert status == 200
    seen = echoed(body)
    assert seen["x-vigil-decision"] == "allow"
    assert float(seen["x-vigil-risk-score"]) == 0.0
    sig = signals(seen["x-vigil-signals"])
    assert sig["rate"] == "0.000"
    assert sig["rate_count"] == "1"
    assert sig["identity"].startswith("user:") and "alice" not in sig["identity"]


def test_clients_cannot_forge_vigil_headers(stack_factory):
    stack = stack_factory(config(mode="enforce"))
    forged = {"x-user-id": "forger", "x-vigil-decision": "allow-me", "x-vigil-risk-score": "-1"}
    _, _, body = stack.request("/", headers=forged)
    seen = echoed(body)
    assert seen["x-vigil-decision"] == "allow"
    assert seen["x-vigil-risk-score"] == "0.000"

    quiet = stack_factory(config(upstream_headers=False), name="quiet")
    _, _, body = quiet.request("/", headers=forged)
    assert not any(k.startswith("x-vigil-") for k in echoed(body)), echoed(body)


def test_rate_count_is_exact_across_workers_and_connections(stack_factory):
    stack = stack_factory(config(rate_limit={"requests_per_window": 100000, "window_seconds": 600}))
    n = 240

    def one(_):
        status, _, body = stack.request("/items/7", headers={"x-user-id": "counted"})
        assert status == 200
        return int(signals(echoed(body)["x-vigil-signals"])["rate_count"])

    with ThreadPoolExecutor(max_workers=16) as pool:
        counts = sorted(pool.map(one, range(n)))
    # Every increment was atomic: each count from 1 to n was handed out once.
    assert counts == list(range(1, n + 1))

    per_worker = stack.connections_per_worker()
    assert len(per_worker) == 2, per_worker
    assert all(v > 0 for v in per_worker.values()), f"one worker served nothing: {per_worker}"
    print(f"\nconnections per worker: {per_worker}; counts 1..{n} each seen once")


def run_burst(stack, user: str, n: int) -> list[tuple[int, dict, bytes]]:
    return [stack.request("/orders", headers={"x-user-id": user}) for _ in range(n)]


def test_enforce_mode_throttles_then_blocks_past_the_ceiling(stack_factory):
    stack = stack_factory(config(mode="enforce", rate_limit={"requests_per_window": 10, "window_seconds": 60}))
    results = run_burst(stack, "mallory", 25)
    statuses = [r[0] for r in results]
    assert statuses[:10] == [200] * 10, statuses
    assert statuses[10] == 429, statuses
    assert statuses[-1] == 403, statuses

    status, headers, body = results[10]
    reply = json.loads(body)
    assert reply["decision"] == "throttle"
    assert reply["request_id"] == headers["x-request-id"]
    assert int(headers["retry-after"]) >= 1
    assert headers["content-type"] == "application/json"
    assert json.loads(results[-1][2])["decision"] == "block"

    # Another identity is untouched.
    assert stack.request("/orders", headers={"x-user-id": "bystander"})[0] == 200


def test_monitor_mode_scores_but_never_refuses(stack_factory):
    stack = stack_factory(config(mode="monitor", rate_limit={"requests_per_window": 10, "window_seconds": 60}))
    results = run_burst(stack, "mallory", 25)
    assert [r[0] for r in results] == [200] * 25
    decisions = [echoed(r[2])["x-vigil-decision"] for r in results]
    assert decisions[10] == "throttle" and decisions[-1] == "block", decisions
    stack.settle()
    assert stack.counter("wasmcustom.vigil_enforced_total") == 0
    assert stack.counter("wasmcustom.vigil_decisions_total.decision.block") >= 1


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"mode": "enforce", "rate_limits": {}}, "rate_limits"),
        ({"ml_scoring_weights": {"user_anomaly": 1.5}}, "ml_scoring_weights.user_anomaly"),
        ({"behavioral_profiling": {"deviation_threshold": "high"}}, "behavioral_profiling.deviation_threshold"),
    ],
)
def test_invalid_config_is_refused_naming_the_field(stack_factory, bad, field):
    stack = stack_factory(bad, name="bad", expect_ready=False)
    code = stack.wait_exit(timeout=30)
    log = stack.envoy_log_text()
    assert code != 0, "Envoy accepted an invalid Vigil configuration"
    assert "invalid vigil configuration" in log, log[-2000:]
    assert field in log, log[-2000:]


def test_access_log_and_metrics_follow_the_traffic(stack_factory):
    stack = stack_factory(config(mode="enforce", rate_limit={"requests_per_window": 5, "window_seconds": 60}))
    before = stack.counter("wasmcustom.vigil_requests_total")
    results = run_burst(stack, "logged", 12)
    stack.settle()
    assert stack.counter("wasmcustom.vigil_requests_total") - before == 12
    throttled = stack.counter("wasmcustom.vigil_decisions_total.decision.throttle")
    blocked = stack.counter("wasmcustom.vigil_decisions_total.decision.block")
    refused = sum(1 for r in results if r[0] in (429, 403))
    assert throttled + blocked == refused > 0
    assert stack.counter("wasmcustom.vigil_enforced_total") == refused

    lines = wait_for(lambda: len(stack.access_log_lines()) >= 12 and stack.access_log_lines(), what="access log")
    by_id = {l["request_id"]: l for l in lines}
    for status, headers, _ in results:
        line = by_id[headers["x-request-id"]]
        record = json.loads(line["vigil"])
        assert line["status"] == status
        assert record["request_id"] == headers["x-request-id"]
        assert record["decision"] == line["vigil_decision"]
        assert record["risk_score"] == pytest.approx(float(line["vigil_risk_score"]), abs=1e-3)
        assert "rate_count=" in line["vigil_signals"]
        if status == 429:
            assert record["decision"] == "throttle" and record["enforced"] is True
            assert any("ceiling of 5" in d for d in record["threat_details"])

    # Prometheus view: labelled decisions and the processing-time histogram
    # (histograms reach the admin endpoint at the next stats flush).
    prom = wait_for(lambda: (p := stack.prometheus()) and re.search(r"vigil_processing_time_us_count\{\} [1-9]", p) and p,
                    what="processing time histogram")
    assert re.search(r'vigil_decisions_total\{decision="throttle"\} [1-9]', prom), prom
    assert re.search(r"vigil_requests_total\{\} 12", prom)


def test_identity_flood_stays_within_the_slot_bound(stack_factory):
    slots = 64
    stack = stack_factory(config(rate_limit={"requests_per_window": 1000, "window_seconds": 60, "max_identities": slots}))
    mem_before = json.loads(stack.admin("GET", "/memory")[1])["allocated"]

    def one(i):
        return stack.request("/", headers={"x-user-id": f"flood-{i}"})[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(2000)))
    assert statuses.count(200) == 2000
    stack.settle()
    used = stack.counter("wasmcustom.vigil_store_slots_used.table.rate")
    evictions = stack.counter("wasmcustom.vigil_store_evictions_total.table.rate")
    mem_after = json.loads(stack.admin("GET", "/memory")[1])["allocated"]
    print(f"\nslots used {used}/{slots}, evictions {evictions}, "
          f"Envoy allocated {int(mem_before)/1e6:.1f} MB -> {int(mem_after)/1e6:.1f} MB")
    assert 0 < used <= slots
    assert evictions >= 2000 - slots - 50  # nearly every new identity recycled a slot
    assert stack.counter("wasmcustom.vigil_store_errors_total") == 0


def test_hostile_input_never_breaks_the_vm(stack_factory):
    stack = stack_factory(config(mode="enforce"))
    hostile = [
        {"x-user-id": "\xff\xfe\x80binary"},
        {"x-user-id": "u" * 20000},
        {"authorization": "Bearer a.b"},
        {"authorization": "Bearer " + "A" * 10000 + ".e30.x"},
        {"authorization": "Bearer eyJ.eyJzdWIiOnt9fQ.x"},
        {"x-forwarded-for": ", , ::::, 999.1.1.1"},
        {"x-request-id": 'a"b\\c|d=e'},
        {"content-length": "0", "x-api-key": " "},
    ]
    for h in hostile:
        status, _, _ = stack.request("/a/" + "9" * 300 + "/%ff%00/..", headers=h)
        assert status == 200, h
    for path in ["/", "/?" + "q" * 5000, "/" + "/".join(["x"] * 200), "/users/%F0%9F%92%A9"]:
        assert stack.request(path, headers={"x-user-id": "p"})[0] == 200, path
    stack.settle()
    log = stack.envoy_log_text()
    assert "panicked" not in log and "Function: proxy_on" not in log, log[-2000:]
    assert stack.counter("wasmcustom.vigil_requests_total") == len(hostile) + 4


def test_client_ip_identity_cannot_be_forged_through_x_forwarded_for(stack_factory):
    direct = stack_factory(config(identity={"sources": [{"type": "client_ip", "trusted_proxy_hops": 0}],
                                            "hash_secret": "t"}), name="direct")
    counts = [signals(echoed(direct.request("/", headers={"x-forwarded-for": f"198.51.100.{i}"})[2])["x-vigil-signals"])
              for i in range(3)]
    assert [c["rate_count"] for c in counts] == ["1", "2", "3"], "a forged XFF minted a new identity"
    assert len({c["identity"] for c in counts}) == 1

    behind_lb = stack_factory(config(identity={"sources": [{"type": "client_ip", "trusted_proxy_hops": 1}],
                                               "hash_secret": "t"}), name="lb")
    seen = [signals(echoed(behind_lb.request("/", headers={"x-forwarded-for": xff})[2])["x-vigil-signals"])
            for xff in ["6.6.6.6, 203.0.113.9", "7.7.7.7, 203.0.113.9", "203.0.113.10"]]
    assert seen[0]["identity"] == seen[1]["identity"] != seen[2]["identity"]
    assert [s["rate_count"] for s in seen] == ["1", "2", "1"]


def test_default_log_record_covers_only_requests_not_simply_allowed(stack_factory):
    c = config(mode="monitor", rate_limit={"requests_per_window": 10, "window_seconds": 60})
    del c["log_record"]  # the default: flagged
    stack = stack_factory(c)
    run_burst(stack, "audited", 20)
    lines = wait_for(lambda: len(stack.access_log_lines()) >= 20 and stack.access_log_lines(), what="access log")
    for line in lines:
        has_record = line["vigil"] not in (None, "-", "")
        assert has_record == (line["vigil_decision"] != "allow"), line
    assert sum(1 for l in lines if l["vigil_decision"] != "allow") >= 10


def test_response_side_features_are_read_without_disturbing_responses(stack_factory):
    # Profiling/traffic analysis read status and latency from every response.
    stack = stack_factory(config(time_series_analysis={"enable_traffic_analysis": True},
                                 behavioral_profiling={"enable_user_profiling": True}))
    for path, want in [("/status/503", 503), ("/status/404", 404), ("/slow/50", 200), ("/", 200)]:
        assert stack.request(path, headers={"x-user-id": "resp"})[0] == want, path
    stack.settle()
    assert stack.counter("wasmcustom.vigil_requests_total") == 4
    # Every response, failed or slow, reached the traffic analysis (once a second, a second late).
    wait_for(lambda: stack.counter("wasmcustom.vigil_traffic_requests_total") == 4, what="4 requests analysed")
    log = stack.envoy_log_text()
    assert "panicked" not in log and "Function: proxy_on" not in log, log[-2000:]
