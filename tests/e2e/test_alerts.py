"""Alerts and SIEM export, end to end in a real Envoy with two workers.

Two identities attack (past their rate ceiling, into blocks). A local
receiver takes the alert webhooks (generic JSON on one path, Slack on
another); a third webhook points at a port where nothing listens. Each
alert key must reach each live webhook exactly once per cooldown, within 30
seconds of the first block; the dead receiver must cost no request and be
counted. The CEF event of a blocked request is parsed with a reference CEF
parser written here from the specification, independent of Vigil's code.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import config, echoed, free_port, signals, wait_for
from test_ml import prom_value


class Receiver:
    """A webhook receiver on loopback that keeps what it was sent, and when."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/collector":  # a batch: one JSON object per line
                    received.append((time.time(), self.path,
                                     {"auth": self.headers.get("authorization"),
                                      "events": [json.loads(l) for l in body.decode().splitlines()]}))
                else:
                    received.append((time.time(), self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# --- a reference CEF parser (ArcSight CEF Implementation Standard) ---------
def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """Header fields (7, unescaped) and extension pairs of one CEF line."""
    assert line.startswith("CEF:"), line
    header, i, field = [], 4, []
    while len(header) < 7:
        c = line[i]
        if c == "\\" and line[i + 1] in "\\|":
            field.append(line[i + 1])
            i += 2
            continue
        if c == "|":
            header.append("".join(field))
            field = []
        else:
            field.append(c)
        i += 1
    ext = line[i:]
    # A key starts where an unescaped `=` is preceded by `key` after a space.
    starts = [m for m in re.finditer(r"(?:^| )([A-Za-z0-9_]+)=", ext) if not _escaped(ext, m.end() - 1)]
    pairs = {}
    for n, m in enumerate(starts):
        end = starts[n + 1].start() if n + 1 < len(starts) else len(ext)
        raw = ext[m.end():end]
        pairs[m.group(1)] = re.sub(r"\\(.)", lambda e: {"n": "\n", "r": "\r"}.get(e.group(1), e.group(1)), raw)
    return header, pairs


def _escaped(s: str, at: int) -> bool:
    backslashes = 0
    while at - 1 - backslashes >= 0 and s[at - 1 - backslashes] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def test_reference_cef_parser_handles_the_escapes():
    header, ext = parse_cef(r"CEF:0|Vigil|vigil|1|sig|a\|b\\c|9|rt=1 msg=x\=y\\z\nq cs1=a b c cs1Label=signals")
    assert header == ["0", "Vigil", "vigil", "1", "sig", "a|b\\c", "9"]
    assert ext == {"rt": "1", "msg": "x=y\\z\nq", "cs1": "a b c", "cs1Label": "signals"}


def test_an_attack_alerts_once_per_key_within_30_s_and_blocks_export_as_cef(stack_factory):
    receiver = Receiver()
    dead_port = free_port()  # nothing listens here
    rule = {"name": "identity-blocked", "on": "risk", "above": 0.95, "per": "identity",
            "severity": "warning", "cooldown_seconds": 120}
    stack = stack_factory(config(
        mode="enforce", rate_limit={"requests_per_window": 20, "window_seconds": 10},
        alerts={"rules": [rule], "webhooks": [
            {"url": "http://vigil_alerts/json"},
            {"url": "http://vigil_alerts/slack", "format": "slack"},
            {"url": "http://vigil_alerts_down/hook", "timeout_ms": 500, "retries": 1},
        ]},
        siem={"collector": {"url": "http://vigil_alerts/collector", "format": "hec", "batch_size": 20,
                            "headers": {"authorization": "Splunk test-token"}}},
    ), clusters={"vigil_alerts": receiver.port, "vigil_alerts_down": dead_port})
    try:
        onset = {}
        blocked_ids = {}
        statuses = []
        key = {}
        for attacker in ("mallory", "trudy"):
            for _ in range(45):  # past 1.75x the ceiling of 20: blocked
                status, _, body = stack.request("/orders", headers={"x-user-id": attacker})
                statuses.append(status)
                if status == 200 and attacker not in key:
                    # The upstream echo names the identity as Vigil keys it.
                    key[attacker] = "identity " + signals(echoed(body)["x-vigil-signals"])["identity"]
                if status == 403:
                    onset.setdefault(attacker, time.time())
                    blocked_ids.setdefault(attacker, json.loads(body)["request_id"])
        assert set(onset) == {"mallory", "trudy"}, statuses
        # A dead receiver costs no request: everything was answered, by Vigil or the upstream.
        assert set(statuses) <= {200, 429, 403}
        assert [stack.request("/orders", headers={"x-user-id": "alice"})[0] for _ in range(3)] == [200] * 3

        def per_key(path):
            return [b for (_, p, b) in receiver.received if p == path]
        wait_for(lambda: len(per_key("/json")) >= 2 and len(per_key("/slack")) >= 2, timeout=30,
                 what="an alert per attacker on both live webhooks")
        delays = {}
        for attacker in onset:
            arrival = min(t for (t, p, b) in receiver.received if p == "/json" and b["key"] == key[attacker])
            delays[attacker] = arrival - onset[attacker]
        print(f"detection to notification: {', '.join(f'{k} {v:.2f} s' for k, v in delays.items())}")
        assert all(d < 30 for d in delays.values()), delays

        # Keep attacking: the storm collapses into the one alert per key per cooldown.
        for _ in range(20):
            stack.request("/orders", headers={"x-user-id": "mallory"})
        time.sleep(3)
        json_alerts = per_key("/json")
        assert sorted(a["key"] for a in json_alerts) == sorted(key.values()), json_alerts
        assert all(a["rule"] == "identity-blocked" and a["severity"] == "warning" and a["value"] >= 0.95 for a in json_alerts)
        slack = per_key("/slack")
        assert len(slack) == 2 and all(s["text"].startswith(":warning: *[WARNING] Vigil* identity-blocked") for s in slack)

        # The dead receiver: retried, then counted as failed (and logged), never blocking.
        def failed():
            stack.settle()
            return prom_value(stack.prometheus(), "vigil_notifications_total", outcome="failed") >= 2
        wait_for(failed, timeout=20, what="failed deliveries counted")
        prom = stack.prometheus()
        assert prom_value(prom, "vigil_notifications_total", outcome="sent") == 4
        assert prom_value(prom, "vigil_notifications_total", outcome="retried") >= 2
        assert prom_value(prom, "vigil_alerts_total", severity="warning") == 2
        assert prom_value(prom, "vigil_alerts_suppressed_total") > 20
        assert prom_value(prom, "vigil_events_total", kind="decision") > 0
        assert prom_value(prom, "vigil_decision_reasons_total", reason="rate") > 0
        assert "delivery failed after 2 attempts" in stack.envoy_log_text()

        # The CEF event of a blocked request, parsed independently.
        request_id = blocked_ids["mallory"]
        lines = [l.split("vigil-event ", 1)[1] for l in stack.envoy_log_text().splitlines()
                 if "vigil-event CEF:" in l and f"externalId={request_id}" in l]
        assert lines, f"no CEF event for {request_id}"
        header, ext = parse_cef(lines[0])
        assert header[:2] == ["0", "Vigil"] and header[4] == "decision" and header[5] == "request blocked"
        assert header[6] == "9"
        assert ext["externalId"] == request_id
        assert ext["act"] == "block"
        assert re.fullmatch(r"user:[0-9a-f]{16}", ext["suser"]), ext
        assert ext["cfp1Label"] == "riskScore" and float(ext["cfp1"]) >= 0.95
        assert ext["reason"].startswith("rate: "), ext
        assert "rate=" in ext["cs1"] and ext["cs1Label"] == "signals"
        alert_lines = [l for l in stack.envoy_log_text().splitlines() if "vigil-event CEF:" in l and "|alert|" in l]
        assert len(alert_lines) == 2

        # The same events reached the collector in HEC batches, with its token.
        batches = per_key("/collector")
        assert batches and all(b["auth"] == "Splunk test-token" and 1 <= len(b["events"]) <= 20 for b in batches)
        hec = [e for b in batches for e in b["events"]]
        assert all(e["sourcetype"] == "vigil:event" and e["source"] == "vigil" for e in hec)
        mine = [e["event"] for e in hec if e["event"].get("request_id") == request_id]
        assert mine and mine[0]["action"] == "block" and mine[0]["risk_score"] >= 0.95, mine
        assert sum(e["event"]["kind"] == "alert" for e in hec) == 2
        decisions = [e for e in hec if e["event"]["kind"] == "decision"]
        assert len(decisions) == prom_value(prom, "vigil_events_total", kind="decision"), "every event, once"
    finally:
        receiver.stop()

