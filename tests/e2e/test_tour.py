"""The README's 5-minute tour, behaviour part, as a test: dana's takeover from
a new country is refused and stays refused (the profile does not learn the
attacker), the refusal's request id is what feedback takes, and once an
operator marks it a false positive the same request goes through."""

from __future__ import annotations

import json
import time

from harness import config

TOKEN = "vigil-demo-admin-token"


def dana(stack, path, country):
    return stack.request(path, headers={"x-user-id": "dana", "x-geo-country": country})


def test_the_tours_takeover_stays_refused_until_an_operator_says_otherwise(stack_factory):
    stack = stack_factory(config())  # envoy/envoy.yaml's own filter configuration
    # dana's routine (one endpoint, from Germany), at the tour's pace.
    for _ in range(25):
        assert dana(stack, "/api/orders", "DE")[0] == 200
        time.sleep(0.6)
    # Refused: blocked, or throttled when the rate signal (18 of 20) and the
    # pace of the moment leave the deviation just under the block threshold.
    status, _, body = dana(stack, "/admin/export", "KP")
    assert status in (403, 429), body
    # Ten seconds later (the tour's `sleep 10`) the same request is still refused:
    # the first refusal taught the profile nothing, and the episode holds.
    time.sleep(10)
    status, _, body = dana(stack, "/admin/export", "KP")
    assert status in (403, 429), body
    request_id = json.loads(body)["request_id"]
    assert request_id
    stack.settle()
    assert stack.counter("wasmcustom.vigil_profile_episodes_total") >= 1
    status, answer = stack.vigil_admin(
        "POST", f"/vigil/admin/feedback?request_id={request_id}&verdict=false_positive", token=TOKEN)
    assert status == 200 and answer["status"] == "recorded" and answer["pattern_kept"] is True, answer
    time.sleep(2)
    for _ in range(4):  # fresh connections: either worker
        assert dana(stack, "/admin/export", "KP")[0] == 200
