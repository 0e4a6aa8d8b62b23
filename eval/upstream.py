#!/usr/bin/env python3
"""The lab's recording upstream: a small shop API behind Envoy.

It wraps examples/demo_upstream.py (same echo body, same JSON answers; that
file is imported, not changed) and adds what an attack lab needs:

- answers that depend on who is asking, as a real API's would: objects the
  caller does not own are 403, objects that do not exist 404, a login with a
  wrong password 401, /admin/ without the admin role 403, an unknown path 404;
- a record of every request that reached it, with the Vigil verdict it
  carried, so the lab counts what the upstream saw (not what the client
  thought it sent).

Who is asking: `x-user-id` (set by the authenticating gateway the lab plays)
or the owner of `x-api-key`. The world (users, passwords, objects, keys) is
loaded by the lab at start:

  POST /_lab/world    {"users": {name: {"uid", "password", "admin"}}, "orders": {id: owner},
                       "invoices": {id: owner}, "tickets": {id: owner}, "api_keys": {key: owner},
                       "products": N, "missing_products": [...]}
  GET  /_lab/records?since=N   the records from index N on
  GET  /_lab/stats              {"records": N}

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
sys.path.insert(0, HERE)

import demo_upstream  # noqa: E402  (the demo upstream, reused as is)
from lab.verdict import verdict  # noqa: E402


class World:
    """Who owns what. Replaced as a whole by POST /_lab/world; signups add users."""

    def __init__(self):
        self.lock = threading.Lock()
        self.users: dict[str, dict] = {}
        self.uids: dict[int, str] = {}
        self.owners: dict[str, dict[int, str]] = {"orders": {}, "invoices": {}, "tickets": {}}
        self.api_keys: dict[str, str] = {}
        self.products = 0
        self.missing_products: set[int] = set()

    def load(self, doc: dict) -> None:
        with self.lock:
            self.users = {name: dict(u) for name, u in doc.get("users", {}).items()}
            self.uids = {int(u["uid"]): name for name, u in self.users.items()}
            for kind in self.owners:
                self.owners[kind] = {int(k): v for k, v in doc.get(kind, {}).items()}
            self.api_keys = dict(doc.get("api_keys", {}))
            self.products = int(doc.get("products", 0))
            self.missing_products = set(int(i) for i in doc.get("missing_products", []))

    def caller(self, headers: dict) -> str | None:
        user = headers.get("x-user-id", "").strip()
        if user:
            return user
        return self.api_keys.get(headers.get("x-api-key", "").strip())

    def is_admin(self, who: str | None) -> bool:
        return bool(who and self.users.get(who, {}).get("admin"))


# (method set or None for any, compiled pattern, handler name)
ROUTES = [
    ({"POST"}, r"/api/login", "login"),
    ({"POST"}, r"/api/signup", "signup"),
    ({"POST"}, r"/api/logout", "ok"),
    (None, r"/api/products", "ok"),
    (None, r"/api/products/(\d+)", "product"),
    (None, r"/api/products/(\d+)/reviews", "product"),
    (None, r"/api/(search|recommendations|categories|feed|notifications|cart|cart/items)", "ok"),
    (None, r"/api/cart/items/(\d+)", "ok"),
    (None, r"/api/(wishlist|wishlist/items)", "authenticated"),
    (None, r"/api/orders", "authenticated"),
    (None, r"/api/orders/(\d+)", "orders"),
    (None, r"/api/invoices/(\d+)", "invoices"),
    (None, r"/api/tickets", "authenticated"),
    (None, r"/api/tickets/(\d+)", "tickets"),
    (None, r"/api/users/(\d+)", "user"),
    (None, r"/api/users/(\d+)/(payment-methods|addresses|sessions)", "user"),
    (None, r"/api/export", "authenticated"),
    (None, r"/api/inventory/(\d+)", "authenticated"),
    (None, r"/api/v2/.*", "authenticated_or_catalog"),
    (None, r"/admin(/.*)?", "admin"),
]
ROUTES = [(m, re.compile(p + r"/?"), h) for m, p, h in ROUTES]


class Handler(demo_upstream.Handler):
    server_version = "vigil-lab-upstream/1"

    def handle_any(self):
        try:
            body = demo_upstream.read_body(self)
        except ValueError:
            self.close_connection = True
            self.send_json(400, {"error": "malformed request body framing"})
            return
        url = urlsplit(self.path)
        if url.path.startswith("/_lab/"):
            self.handle_lab(url, body)
            return
        headers = self.lowered_headers()
        status = self.decide(url.path, headers, body)
        self.record(headers, status)
        self.send_json(status, {
            "service": demo_upstream.SERVICE, "method": self.command, "path": self.path,
            "headers": headers, "body_bytes": len(body),
        })

    # --- the API's own answers ----------------------------------------------
    def decide(self, path: str, headers: dict, body: bytes) -> int:
        world: World = self.server.world
        for methods, pattern, name in ROUTES:
            m = pattern.fullmatch(path)
            if m and (methods is None or self.command in methods):
                return getattr(self, "route_" + name)(world, world.caller(headers), m, body)
        return 404

    def route_ok(self, world, who, m, body):
        return 200

    def route_authenticated(self, world, who, m, body):
        return 200 if who else 401

    def route_authenticated_or_catalog(self, world, who, m, body):
        return 200 if who or "/catalog" in m.group(0) else 401

    def route_login(self, world, who, m, body):
        try:
            creds = json.loads(body or b"{}")
        except ValueError:
            return 400
        with world.lock:
            user = world.users.get(str(creds.get("username", "")))
        return 200 if user and user.get("password") == creds.get("password") else 401

    def route_signup(self, world, who, m, body):
        try:
            doc = json.loads(body or b"{}")
            name, password = str(doc["username"]), str(doc["password"])
        except (ValueError, KeyError):
            return 400
        with world.lock:
            if name in world.users:
                return 409
            uid = max(world.uids, default=100000) + 1
            world.users[name] = {"uid": uid, "password": password, "admin": False}
            world.uids[uid] = name
        return 201

    def route_product(self, world, who, m, body):
        pid = int(m.group(1))
        if pid < 1 or pid > world.products or pid in world.missing_products:
            return 404
        return 200

    def _owned(self, world, who, kind, oid):
        owner = world.owners[kind].get(oid)
        if owner is None:
            return 404
        if not who:
            return 401
        return 200 if owner == who or world.is_admin(who) else 403

    def route_orders(self, world, who, m, body):
        return self._owned(world, who, "orders", int(m.group(1)))

    def route_invoices(self, world, who, m, body):
        return self._owned(world, who, "invoices", int(m.group(1)))

    def route_tickets(self, world, who, m, body):
        return self._owned(world, who, "tickets", int(m.group(1)))

    def route_user(self, world, who, m, body):
        owner = world.uids.get(int(m.group(1)))
        if owner is None:
            return 404
        if not who:
            return 401
        return 200 if owner == who or world.is_admin(who) else 403

    def route_admin(self, world, who, m, body):
        if not who:
            return 401
        return 200 if world.is_admin(who) else 403

    # --- what reached the upstream --------------------------------------------
    def record(self, headers: dict, status: int) -> None:
        v = verdict(headers) or {}
        entry = {"rid": headers.get("x-lab-rid"), "request_id": headers.get("x-request-id"),
                 "method": self.command, "path": self.path, "status": status,
                 "decision": v.get("decision"), "risk": v.get("risk"), "signals": v.get("signals"),
                 "shape": v.get("shape")}
        with self.server.records_lock:
            self.server.records.append(entry)

    def handle_lab(self, url, body: bytes) -> None:
        if url.path == "/_lab/world" and self.command == "POST":
            try:
                self.server.world.load(json.loads(body))
            except (ValueError, KeyError, TypeError) as err:
                self.send_json(400, {"error": str(err)})
                return
            self.send_json(200, {"users": len(self.server.world.users)})
        elif url.path == "/_lab/records":
            since = int(parse_qs(url.query).get("since", ["0"])[0])
            with self.server.records_lock:
                chunk = self.server.records[since:]
            self.send_json(200, {"since": since, "records": chunk})
        elif url.path == "/_lab/stats":
            with self.server.records_lock:
                self.send_json(200, {"records": len(self.server.records)})
        else:
            self.send_json(404, {"error": "unknown lab control"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    server = demo_upstream.Server((args.host, args.port), Handler)
    # The demo's fault knobs stay (all off): the base handler's helpers expect them.
    server.settings = demo_upstream.Settings(0.0, 0)
    server.verbose = args.verbose
    server.world = World()
    server.records, server.records_lock = [], threading.Lock()
    demo_upstream.serve_until_signalled(server, args.host)


if __name__ == "__main__":
    main()
