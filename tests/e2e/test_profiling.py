"""Behavioural profiling, end to end in a real Envoy with two workers."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from harness import config, echoed, signals, wait_for

FLOOD_LUA = Path(__file__).with_name("flood.lua")


def profiling(**overrides) -> dict:
    p = {
        "enable_user_profiling": True,
        "min_observations": 20,
        "deviation_threshold": 0.7,
        "max_profiles": 4096,
        "geo": {"country_header": "x-geo-country", "asn_header": "x-geo-asn"},
    }
    p.update(overrides)
    return p


def behaviour(stack, path, user, country, method="GET", asn="3320"):
    """One request; returns (behavior score or None, signals) as the upstream saw them."""
    status, _, body = stack.request(path, method=method,
                                    headers={"x-user-id": user, "x-geo-country": country, "x-geo-asn": asn})
    assert status == 200, (status, body[:200])
    sig = signals(echoed(body)["x-vigil-signals"])
    return (float(sig["behavior"]) if "behavior" in sig else None), sig


ROUTINES = {
    # user: (country, [(method, path template, share)])
    "alice": ("DE", [("GET", "/api/orders", 0.5), ("GET", "/api/orders/{id}", 0.3), ("POST", "/api/cart", 0.2)]),
    "bob": ("FR", [("GET", "/api/catalog", 0.6), ("GET", "/api/catalog/{id}", 0.4)]),
    "carol": ("US", [("GET", "/api/invoices", 0.7), ("GET", "/api/account", 0.3)]),
}


def routine_request(rng, user):
    country, mix = ROUTINES[user]
    r, acc = rng.random(), 0.0
    for method, path, share in mix:
        acc += share
        if r <= acc:
            break
    return method, path.replace("{id}", str(rng.randint(1, 5000))), country


# A user's usual pace: a request every ~130 ms (three users' requests and this
# pause), each worker seeing about half of them. The script that takes over
# alice's account goes as fast as it can: twenty times faster and more.
PACE_S = 0.12


def test_an_established_user_who_suddenly_deviates_scores_high_and_others_stay_low(stack_factory):
    # Monitor mode: the filter decides but forwards, so the upstream echo shows every score.
    stack = stack_factory(config(mode="monitor", rate_limit={"requests_per_window": 100000, "window_seconds": 60},
                                 behavioral_profiling=profiling()))
    rng = random.Random(4)

    # Hundreds of requests per user over a stable mix, interleaved, on fresh
    # connections (so both workers learn every profile).
    for i in range(150):
        for user in ROUTINES:
            method, path, country = routine_request(rng, user)
            behaviour(stack, path, user, country, method)
        time.sleep(PACE_S)
    time.sleep(1.5)  # one sync tick: every worker now reads the merged profiles

    # alice's credentials now walk sensitive endpoints from a new country, as
    # fast as a script goes, one request after another (requests in flight
    # together can reach a profile out of order, and only in-order ones show
    # the pace).
    attack = ["/admin/users", "/admin/users/1/keys", "/internal/debug/vars", "/admin/export",
              "/admin/users/2/keys", "/internal/config", "/admin/audit", "/admin/users/3/keys"]
    results = [behaviour(stack, path, "alice", "KP", asn="64512") for path in attack * 2]
    for _, sig in results:
        assert sig["profile"].startswith("warm:"), sig
    scores = [score for score, _ in results]

    # The others carry on as usual.
    others = {"bob": [], "carol": []}
    for _ in range(40):
        for user in others:
            method, path, country = routine_request(rng, user)
            score, sig = behaviour(stack, path, user, country, method)
            assert score is not None, sig
            others[user].append(score)
        time.sleep(PACE_S)

    print(f"\nalice under attack: behavioral_score min {min(scores):.3f} median {statistics.median(scores):.3f}; "
          + "; ".join(f"{u}: median {statistics.median(s):.3f} max {max(s):.3f}" for u, s in others.items()))
    assert min(scores) >= 0.7, scores
    assert statistics.median(scores) >= 0.85, scores
    for user, s in others.items():
        assert statistics.median(s) < 0.2, (user, s)
        assert max(s) < 0.7, (user, s)

    # The access log names why.
    def attack_records():
        records = [json.loads(line["vigil"]) for line in stack.access_log_lines() if line.get("vigil")]
        return [r for r in records if r["route"].startswith(("/admin", "/internal"))]
    records = wait_for(lambda: len(attack_records()) >= len(attack) * 2 and attack_records(), what="attack records")
    why = " | ".join(d for r in records for d in r["threat_details"])
    for expected in ["new endpoint /admin", "new country KP", "DE -> KP", "faster than usual"]:
        assert expected in why, (expected, why[:2000])
    assert all(r["behavioral_score"] >= 0.7 for r in records)

    stack.settle()
    deviations = stack.counter("wasmcustom.vigil_profile_deviations_total")
    assert deviations >= len(attack) * 2
    assert stack.counter("wasmcustom.vigil_profile_cache_hits_total") > 0
    assert stack.counter("wasmcustom.vigil_store_slots_used.table.profile") == 3
    prom = stack.prometheus()
    assert 'vigil_store_slots_used{table="profile"} 3' in prom, prom


def stat_int(stack, name):
    value = stack.stats().get(name, "0")
    return int(value) if value.lstrip("-").isdigit() else 0


def test_profiles_survive_a_flood_of_100k_fresh_identities_within_the_bound(stack_factory):
    max_profiles = 2048
    stack = stack_factory(config(
        mode="monitor",
        rate_limit={"requests_per_window": 100000, "window_seconds": 60, "max_identities": 2048},
        behavioral_profiling=profiling(max_profiles=max_profiles, cache_entries=256),
    ))
    established = [f"regular-{i}" for i in range(20)]
    for _ in range(30):
        for user in established:
            behaviour(stack, "/api/orders", user, "DE")
    stack.settle()

    def memory():
        return {
            "shared_data_bytes": stat_int(stack, "wasmcustom.vigil_shared_data_bytes"),
            "profile_bytes": stat_int(stack, "wasmcustom.vigil_store_bytes.table.profile"),
            "profiles_in_use": stat_int(stack, "wasmcustom.vigil_store_slots_used.table.profile"),
            "envoy_allocated": stat_int(stack, "server.memory_allocated"),
            "envoy_heap": stat_int(stack, "server.memory_heap_size"),
        }

    before = memory()
    requests_before = stat_int(stack, "http.public.downstream_rq_total")
    wrk = shutil.which("wrk")
    assert wrk, "wrk is installed by `make e2e`"
    deadline = time.time() + 120
    while stat_int(stack, "http.public.downstream_rq_total") - requests_before < 100_000:
        assert time.time() < deadline, "could not send 100k requests in 2 minutes"
        subprocess.run([wrk, "-t2", "-c32", "-d5s", "-s", str(FLOOD_LUA), f"http://127.0.0.1:{stack.port}"],
                       check=True, capture_output=True)
    flood = stat_int(stack, "http.public.downstream_rq_total") - requests_before
    stack.settle(timeout=20)
    after = memory()

    print(f"\nflood of {flood} fresh identities against max_profiles {max_profiles}:")
    for k in before:
        print(f"  {k:18} {before[k]:>12,} -> {after[k]:>12,}")
    print(f"  evicted {stat_int(stack, 'wasmcustom.vigil_store_evictions_total.table.profile'):,}, "
          f"not admitted {stat_int(stack, 'wasmcustom.vigil_store_not_admitted_total.table.profile'):,}, "
          f"cache misses {stat_int(stack, 'wasmcustom.vigil_profile_cache_misses_total'):,}")

    assert flood >= 100_000
    assert 0 < after["profiles_in_use"] <= max_profiles
    # At most 1 KiB per profile slot (key included), whatever the number of identities.
    assert after["profile_bytes"] <= max_profiles * 1024
    assert after["shared_data_bytes"] - before["shared_data_bytes"] <= max_profiles * 1024
    assert stat_int(stack, "wasmcustom.vigil_store_errors_total") == 0

    # Every established profile is still there, with its history.
    for user in established:
        _, sig = behaviour(stack, "/api/orders", user, "DE")
        state, _, n = sig["profile"].partition(":")
        assert state == "warm" and int(n) >= 31, (user, sig)
