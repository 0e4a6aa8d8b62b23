"""Who sends a request and how it looks on the wire.

A `Client` is one caller as the edge sees it: an identity (a user id the
gateway authenticated, an API key, or nothing), a device (user agent and TLS
fingerprint) and a place (client address, country, ASN). Every request it
makes carries the headers a production edge would hand Envoy:

  x-forwarded-for  the client address, as the one trusted load balancer in front
                   of Envoy appends it (Vigil reads it with trusted_proxy_hops 1;
                   Envoy appends the TCP peer after it)
  user-agent, x-ja4, x-geo-country, x-geo-asn   (geo omitted when the place has none)
  cookie: session=...                           while a session is open
  x-lab-rid        the lab's own request id, so the upstream's record joins it
"""

from __future__ import annotations

import http.client
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field

from .verdict import verdict

_rid = itertools.count(1)
_rid_lock = threading.Lock()


def next_rid() -> str:
    with _rid_lock:
        return f"L{next(_rid):07d}"


@dataclass
class Device:
    user_agent: str
    ja4: str


@dataclass
class Place:
    ip: str
    country: str | None  # None: the deployment has no geo headers for this caller
    asn: int | None


@dataclass
class Req:
    method: str
    path: str
    headers: dict
    body: bytes | None
    actor: str
    identity: str   # the lab's name for the identity Vigil should resolve
    scenario: str   # "background" or the scenario the actor belongs to
    role: str       # benign | attack | victim | prep
    rid: str = field(default_factory=next_rid)


@dataclass
class Result:
    req: Req
    t: float            # seconds since the run started, when it was sent
    status: int
    decision: str | None
    risk: float | None
    signals: str
    latency_ms: float


class Client:
    def __init__(self, identity: str, device: Device, place: Place, *, user: str | None = None,
                 api_key: str | None = None):
        self.identity = identity  # e.g. "user:anna.k", "key:acme-erp", "ip:84.150.3.9"
        self.user, self.api_key = user, api_key
        self.device, self.place = device, place
        self.session: str | None = None

    def new_session(self) -> str:
        self.session = secrets.token_urlsafe(18)
        return self.session

    def end_session(self) -> None:
        self.session = None

    def req(self, method: str, path: str, *, actor: str, scenario: str, role: str,
            body: dict | bytes | None = None, user: str | None = None) -> Req:
        """`user` overrides the identity header for one request (a login
        attempt is made in the name of the account tried)."""
        headers = {
            "user-agent": self.device.user_agent,
            "x-ja4": self.device.ja4,
            "x-forwarded-for": self.place.ip,
            "accept": "application/json",
        }
        if self.place.country:
            headers["x-geo-country"] = self.place.country
        if self.place.asn:
            headers["x-geo-asn"] = f"AS{self.place.asn}"
        who = user or self.user
        if who:
            headers["x-user-id"] = who
        if self.api_key:
            headers["x-api-key"] = self.api_key
        if self.session:
            headers["cookie"] = f"session={self.session}"
        raw = None
        if body is not None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["content-type"] = "application/json"
        identity = f"user:{user}" if user else self.identity
        r = Req(method, path, headers, raw, actor, identity, scenario, role)
        headers["x-lab-rid"] = r.rid
        return r


def send(port: int, req: Req, t0: float) -> Result:
    """One request on a fresh connection (Envoy then spreads them over its
    workers), timed from the lab's clock. The verdict is read from the echo of
    the headers the upstream received; the upstream's own record is joined
    later and wins when both exist."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    status, decision, risk, signals = 0, None, None, ""
    try:
        conn.request(req.method, req.path, body=req.body, headers=req.headers)
        resp = conn.getresponse()
        status, data = resp.status, resp.read()
        try:
            doc = json.loads(data)
        except ValueError:
            doc = {}
        v = verdict(doc.get("headers", {})) if isinstance(doc.get("headers"), dict) else None
        if v:
            decision, risk, signals = v["decision"], v["risk"], v["signals"]
        elif isinstance(doc.get("decision"), str):  # Vigil answered itself (enforce mode)
            decision = doc["decision"]
    except (OSError, http.client.HTTPException):
        status = -1
    finally:
        conn.close()
    return Result(req, started - t0, status, decision, risk, signals, (time.monotonic() - started) * 1000)
