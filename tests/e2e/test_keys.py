"""Secondary keys, end to end in a real Envoy with two workers.

Clients are told apart by address through a trusted proxy hop: each request
carries `x-forwarded-for: <client>`, Envoy (use_remote_address) appends the
peer, and Vigil's `client_ip` key takes the entry before it
(`trusted_proxy_hops: 1`). Ordinary traffic first (60 home users, each on a
/24 of its own, and an office NAT: one /24, 30 staff), long enough for the
population of /24s to be known; then credential stuffing: 150 fresh
identities, three failed logins (401) each, from four addresses of one /24.
The stuffing must be flagged through its /24 within 10 s; the office, whose
/24 carries as many identities but behaves like everyone else, never.
"""

from __future__ import annotations

import json
import threading
import time

from harness import config, echoed, signals, wait_for

CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0"
WARMUP_S = 25
ATTACK_S = 12


def keys_config() -> dict:
    return config(
        mode="monitor",
        rate_limit={"enabled": False},
        identity={"sources": [{"type": "header", "name": "x-user-id"}], "hash_secret": "e2e"},
        behavioral_profiling={"enable_user_profiling": True, "min_observations": 20},
        secondary_keys={
            "enabled": True,
            "window_seconds": 20,
            "baseline_minutes": 5,
            "min_population": 20,
            "sync_interval_ms": 500,
            "keys": [
                {"type": "client_ip", "prefix_v4": 24, "trusted_proxy_hops": 1},
                {"type": "header", "name": "user-agent"},
            ],
        },
    )


class Group(threading.Thread):
    """One kind of client at a steady pace: `make(n)` gives the n-th request
    (user, client address, path, user agent); every request on a fresh
    connection, so both workers serve each group."""

    def __init__(self, stack, name, rate, make, stop):
        super().__init__(daemon=True)
        self.stack, self.name_, self.rate, self.make, self.stop = stack, name, rate, make, stop
        self.results: list[tuple[float, str, float | None, list[str]]] = []
        self.errors = 0

    def run(self):
        n, start = 0, time.monotonic()
        while not self.stop.is_set():
            due = start + n / self.rate
            now = time.monotonic()
            if due > now:
                time.sleep(min(due - now, 0.05))
                continue
            user, client, path, ua = self.make(n)
            n += 1
            try:
                status, _, body = self.stack.request(path, method="POST" if "401" in path else "GET",
                                                     headers={"x-user-id": user, "x-forwarded-for": client,
                                                              "user-agent": ua})
                seen = echoed(body)
            except (OSError, ValueError, KeyError):
                self.errors += 1
                continue
            sig = signals(seen.get("x-vigil-signals", ""))
            keys = float(sig["keys"]) if "keys" in sig else None
            self.results.append((time.monotonic(), seen.get("x-vigil-decision", "?"), keys, [status]))


def home(n):
    i = n % 60
    ua = CHROME if i % 4 else f"Mozilla/5.0 Firefox/{110 + i % 12}"
    return f"home-{i}", f"10.{20 + i // 200}.{i % 200}.5", ["/api/orders", "/api/cart", "/api/items"][n % 3], ua


def office(n):
    j = n % 30
    path = "/status/404" if n % 40 == 0 else ["/api/orders", "/api/reports", "/api/items"][n % 3]
    return f"staff-{j}", f"192.0.2.{10 + j}", path, CHROME


def stuffing(n):
    return f"victim-{n // 3 % 150}", f"198.51.100.{1 + n % 4}", "/status/401", "Mozilla/5.0 (X11) Firefox/118"


def test_credential_stuffing_from_few_addresses_is_flagged_within_10_s_and_an_office_nat_is_not(stack_factory):
    stack = stack_factory(keys_config())
    stop = threading.Event()
    groups = {"home": Group(stack, "home", 30, home, stop), "office": Group(stack, "office", 20, office, stop)}
    for g in groups.values():
        g.start()
    try:
        time.sleep(WARMUP_S)
        attack = Group(stack, "stuffing", 40, stuffing, stop)
        onset = time.monotonic()
        attack.start()
        time.sleep(ATTACK_S)
    finally:
        stop.set()
        for g in [*groups.values(), attack]:
            g.join(timeout=10)

    flagged = [t - onset for t, decision, keys, _ in attack.results if decision != "allow" and (keys or 0) >= 0.5]
    assert flagged, f"stuffing never flagged: {attack.results[-5:]}"
    delay = flagged[0]
    print(f"\nstuffing: {len(attack.results)} requests, first flagged {delay:.1f} s after onset, "
          f"{len(flagged)} flagged")
    assert delay <= 10, f"first flagged {delay:.1f} s after onset"
    late = [r for r in attack.results if r[0] - onset >= delay + 2]
    share = sum(1 for _, d, k, _ in late if d != "allow" and (k or 0) >= 0.5) / max(1, len(late))
    assert share >= 0.9, f"only {share:.0%} of the stuffing after detection flagged"

    # The office NAT's 30 staff, and the homes, stay quiet all along.
    for name in ("office", "home"):
        g = groups[name]
        assert len(g.results) > 300, (name, len(g.results), g.errors)
        loud = [r for r in g.results if r[1] != "allow" or (r[2] or 0) >= 0.5]
        assert not loud, (name, loud[:5])
    office_scores = [k for _, _, k, _ in groups["office"].results if k is not None]
    assert office_scores, "the office was scored (and scored low)"
    print(f"office: {len(groups['office'].results)} requests, keys score max {max(office_scores):.3f}")

    # A flagged stuffing request says which key and why, never the address.
    def record():
        for line in stack.access_log_lines():
            v = json.loads(line["vigil"]) if isinstance(line.get("vigil"), str) and line["vigil"] not in ("", "-") else None
            if v and v["decision"] != "allow" and any(d.startswith("keys: client /24 carries") for d in v["threat_details"]):
                return v
        return None

    v = wait_for(record, what="a flagged stuffing record in the access log")
    detail = next(d for d in v["threat_details"] if d.startswith("keys: "))
    assert "% failed" in detail and "198.51.100" not in detail, detail
    print(f"detail: {detail}")

    stack.settle()
    stats = stack.stats()
    assert int(stats["wasmcustom.vigil_keys_flagged_total.key.client_prefix_24"]) > 0
    assert int(stats["wasmcustom.vigil_keys_flagged_total.key.user_agent"]) == 0
    assert int(stats["wasmcustom.vigil_keys_population.key.client_prefix_24"]) >= 20
    assert 'vigil_keys_flagged_total{key="client_prefix_24"}' in stack.prometheus()
    log = stack.envoy_log_text()
    assert "panicked" not in log and "Function: proxy_on" not in log, log[-2000:]
