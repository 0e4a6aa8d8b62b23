"""Operator feedback through Vigil's admin API, end to end in a real Envoy
with two workers: feedback given once reaches requests on both, because it
lives in shared data; calls without the token change nothing; the public
listener never serves the API."""

from __future__ import annotations

import hashlib
import re
import time

from harness import config, echoed, signals, wait_for

TOKEN = "e2e-admin-token"


def feedback_config() -> dict:
    return config(
        mode="monitor",
        rate_limit={"requests_per_window": 100000, "window_seconds": 60},
        behavioral_profiling={
            "enable_user_profiling": True,
            "min_observations": 20,
            "geo": {"country_header": "x-geo-country"},
        },
        admin={"token_sha256": [hashlib.sha256(TOKEN.encode()).hexdigest()], "port": 1, "requests_per_minute": 120},
    )


def decided(stack, path, country):
    """One request of dave's on a fresh connection: (decision, signals, request
    id) as the upstream saw them. Envoy, the edge here, sets the request id;
    every response carries it, and that is what an operator quotes."""
    status, headers, body = stack.request(path, headers={"x-user-id": "dave", "x-geo-country": country})
    assert status == 200, (status, body[:200])
    seen = echoed(body)
    assert seen["x-request-id"] == headers["x-request-id"]
    return seen["x-vigil-decision"], signals(seen["x-vigil-signals"]), headers["x-request-id"]


def test_a_false_positive_marked_once_stops_the_pattern_on_both_workers(stack_factory):
    stack = stack_factory(feedback_config())
    # dave's routine, from the US, learned by both workers (fresh connections):
    # a few invoices of his own, again and again (walking invoice ids in
    # sequence would be enumeration, which Vigil flags).
    for i in range(80):
        invoice = [17, 42, 1003, 8][i % 4]
        decision, _, _ = decided(stack, ["/api/invoices", "/api/account", f"/api/invoices/{invoice}"][i % 3], "US")
        assert i < 40 or decision == "allow", (i, decision)
        time.sleep(0.05)
    time.sleep(1.5)  # one sync: every worker reads the merged profile

    # A business trip: the quarterly export, from Canada. Unusual, benign.
    trip = ("/api/reports/export", "CA")
    first, sig, request_id = decided(stack, *trip)
    assert first in ("flag", "throttle", "block"), sig
    assert "risk_interval" in sig, sig
    low, high = (float(x) for x in sig["risk_interval"].split(".."))
    assert 0 <= low <= high <= 1

    # Without the token, with a wrong one, or on the public listener: nothing changes.
    fp = f"/vigil/admin/feedback?request_id={request_id}&verdict=false_positive&note=quarterly+export"
    assert stack.vigil_admin("POST", fp)[0] == 401
    status, body = stack.vigil_admin("POST", fp, token="not-the-token")
    assert (status, body["error"]) == (401, "unauthorized"), body
    status, body = stack.vigil_admin("POST", fp, token=TOKEN, port=stack.port)
    assert body.get("status") != "recorded", "the public listener must not serve the admin API"
    status, thresholds = stack.vigil_admin("GET", "/vigil/admin/thresholds", token=TOKEN)
    assert status == 200 and thresholds["groups"][0]["false_positives"] == 0, thresholds
    second, sig, _ = decided(stack, *trip)
    assert second != "allow", ("still flagged before any feedback", sig)

    # The operator marks the first one a false positive, once.
    status, body = stack.vigil_admin("POST", fp, token=TOKEN)
    assert status == 200, body
    assert body["status"] == "recorded" and body["pattern_kept"] is True, body
    time.sleep(2.5)  # the profiles' sync: within about a second on every worker

    # The same pattern, on fresh connections to both workers: no longer flagged.
    before = list(stack.connections_per_worker().values())
    after_feedback = [decided(stack, *trip) for _ in range(12)]
    assert [d for d, _, _ in after_feedback] == ["allow"] * 12, after_feedback
    stack.settle()
    served = [b - a for a, b in zip(before, stack.connections_per_worker().values())]
    assert len([n for n in served if n > 0]) == 2, f"both workers served the pattern after the feedback: {served}"

    # What the API tells about dave now.
    status, who = stack.vigil_admin("GET", "/vigil/admin/identities/user=dave", token=TOKEN)
    assert status == 200, who
    assert who["feedback"]["false_positives"] == 1
    assert who["feedback"]["patterns"][0]["verdict"] == "false_positive"
    assert len(who["risk"]["history"]) == 8
    status, models = stack.vigil_admin("GET", "/vigil/admin/models", token=TOKEN)
    behavior = next(d for d in models["detectors"] if d["name"] == "behavior")
    assert behavior["false_positives"] == 1 and behavior["precision"] == 0.0, models

    # Audit lines, the SIEM event and the metrics.
    def log_with_event():
        text = stack.envoy_log_text()
        return text if "|feedback|" in text else None
    log = wait_for(log_with_event, what="the feedback event")
    assert len(re.findall(r"vigil-audit admin call method=POST path=/vigil/admin/feedback status=401", log)) == 2
    assert "vigil-audit admin call method=POST path=/vigil/admin/feedback status=200 outcome=ok" in log
    assert "token=" + hashlib.sha256(TOKEN.encode()).hexdigest()[:8] in log
    assert TOKEN not in log
    assert stack.counter("wasmcustom.vigil_feedback_total.verdict.false_positive.target.request") == 1
    assert stack.counter("wasmcustom.vigil_admin_calls_total.outcome.unauthorized") == 2


def test_malformed_and_unknown_admin_calls_get_json_errors(stack_factory):
    stack = stack_factory(feedback_config())
    for path, expected in [
        ("/vigil/admin/feedback?verdict=maybe&route=/x", 400),
        ("/vigil/admin/feedback?route=/x", 400),
        ("/vigil/admin/feedback?request_id=nobody-flagged-this&verdict=false_positive", 404),
        ("/vigil/admin/identities/user=nobody", 404),
        ("/vigil/admin/nothing-here", 404),
    ]:
        status, body = stack.vigil_admin("POST" if "feedback" in path else "GET", path, token=TOKEN)
        assert status == expected and "error" in body and "message" in body, (path, status, body)
    status, body = stack.vigil_admin("GET", "/vigil/admin/thresholds", token=TOKEN)
    assert status == 200 and body["groups"][0]["name"] == "default" and body["groups"][0]["offset"] == 0, body
