"""Benign routines: how real users of the shop API behave.

A routine is a generator for the scheduler (see sched.py). Pace: a person
waits 1-10 s between requests (log-normal think time around 3 s), works in
sessions of 6-22 actions that start with a login and a page load (a few
requests at once, as a single-page app does), and takes a break between
sessions (15-60 s here: the lab compresses the hours between them). Machines
(API integrations) keep a steady cadence.
"""

from __future__ import annotations

import math
import random
from typing import Callable

from .client import Client, Req
from .world import Account, World


class Ctx:
    """What a routine may ask: the clock, the world, the lab's results so far."""

    def __init__(self, clock, world: World, end: float, results: list):
        self.clock, self.world, self.end, self.results = clock, world, end, results

    def now(self) -> float:
        return self.clock.now()

    def count(self, path_prefix: str, since: float, until: float | None = None) -> int:
        """Requests the lab sent to a path (prefix) in [since, until): routines that
        scale to the current traffic (a tenfold burst) measure it here."""
        until = self.now() if until is None else until
        return sum(1 for r in list(self.results) if since <= r.t < until and r.req.path.startswith(path_prefix))


class Who:
    """One actor's voice: its client, its name, its scenario and the role of
    each request it sends (which may change at an onset)."""

    def __init__(self, ctx: Ctx, client: Client, actor: str, scenario: str = "background",
                 role: Callable[[float], str] | str = "benign"):
        self.ctx, self.client, self.actor, self.scenario = ctx, client, actor, scenario
        self.role = role if callable(role) else (lambda t, r=role: r)

    def req(self, method: str, path: str, body=None, user: str | None = None) -> Req:
        return self.client.req(method, path, actor=self.actor, scenario=self.scenario,
                               role=self.role(self.ctx.now()), body=body, user=user)

    def get(self, path: str) -> Req:
        return self.req("GET", path)


def think(rng: random.Random, median: float = 3.0, sigma: float = 0.55, lo: float = 1.0, hi: float = 10.0) -> float:
    return min(hi, max(lo, rng.lognormvariate(math.log(median), sigma)))


def pause(rng: random.Random) -> float:
    """A break between sessions."""
    return rng.uniform(15, 60)


def login(who: Who, acc: Account, rng: random.Random, typo_rate: float = 0.04):
    """A login; now and then a mistyped password first (one 401, as people do)."""
    who.client.new_session()
    if rng.random() < typo_rate:
        yield who.req("POST", "/api/login", {"username": acc.name, "password": acc.password[:-1] + "x"})
        yield think(rng, 2.5)
    yield who.req("POST", "/api/login", {"username": acc.name, "password": acc.password})


def landing(who: Who, rng: random.Random, mobile: bool = False):
    """The first page load of a session: a handful of calls at once."""
    w = who.ctx.world
    paths = (["/api/feed", "/api/notifications", "/api/cart"] if mobile else
             ["/api/products?page=1", "/api/cart", "/api/notifications", "/api/recommendations"])
    if rng.random() < 0.5:
        paths.append(f"/api/products/{w.product()}")
    yield [who.get(p) for p in paths]


def shop_action(who: Who, rng: random.Random, acc: Account | None, mobile: bool = False) -> list[Req] | Req:
    """One shopper's click: mostly products, some search, cart and orders."""
    w = who.ctx.world
    x = rng.random()
    pid = w.product()
    if x < 0.40:
        return who.get(f"/api/products/{pid}")
    if x < 0.52:
        return who.get(f"/api/products/{pid}/reviews")
    if x < 0.67:
        q = rng.choice(["shoes", "jacket", "usb-c cable", "lamp", "coffee", "desk", "backpack", "headphones"])
        return who.get(f"/api/search?q={q.replace(' ', '+')}&page={rng.randrange(1, 3)}")
    if x < 0.75:
        return who.get(f"/api/products?category={rng.choice(['home', 'outdoor', 'tech', 'fashion'])}"
                       f"&page={rng.randrange(1, 6)}")
    if x < 0.83:
        return who.req("POST", "/api/cart/items", {"product_id": pid, "qty": rng.randrange(1, 3)})
    if x < 0.89:
        return who.get("/api/feed" if mobile else "/api/cart")
    if x < 0.93 and acc:
        return who.get("/api/orders")
    if x < 0.96 and acc and acc.orders:
        return who.get(f"/api/orders/{rng.choice(acc.orders)}")
    if x < 0.98:
        return who.get("/api/notifications")
    if acc:
        return who.req("POST", "/api/orders", {"cart": "current", "payment": "card_on_file",
                                                "note": "x" * rng.randrange(0, 120)})
    return who.get("/api/categories")


def shopper(who: Who, acc: Account | None, rng: random.Random, until: float, *, mobile: bool = False,
            action=shop_action, start_delay: float | None = None):
    """A customer on the web shop (or the app): sessions of browsing and buying."""
    yield rng.uniform(0, 12) if start_delay is None else start_delay
    while who.ctx.now() < until:
        if acc:
            yield from login(who, acc, rng)
        else:
            who.client.new_session()  # the shop sets a cookie for anonymous carts too
        yield think(rng, 1.5, lo=0.3, hi=3)
        yield from landing(who, rng, mobile)
        for _ in range(rng.randrange(6, 23)):
            if who.ctx.now() >= until:
                return
            yield think(rng)
            yield action(who, rng, acc, mobile)
        if acc and rng.random() < 0.5:
            yield think(rng)
            yield who.req("POST", "/api/logout")
        who.client.end_session()
        yield pause(rng)


def account_action(who: Who, rng: random.Random, acc: Account, mobile: bool = False):
    """A business buyer: orders, invoices, the account, now and then an export."""
    x = rng.random()
    if x < 0.22:
        return who.get("/api/orders?page=1")
    if x < 0.45 and acc.orders:
        return who.get(f"/api/orders/{rng.choice(acc.orders)}")
    if x < 0.60 and acc.invoices:
        return who.get(f"/api/invoices/{rng.choice(acc.invoices)}")
    if x < 0.68:
        return who.get(f"/api/users/{acc.uid}")
    if x < 0.72:
        return who.get(f"/api/users/{acc.uid}/addresses")
    if x < 0.75:
        return who.get("/api/export?type=invoices&format=csv")
    if x < 0.80:
        return who.req("POST", "/api/orders", {"items": [who.ctx.world.product() for _ in range(rng.randrange(1, 6))]})
    return shop_action(who, rng, acc)


def support_action(who: Who, rng: random.Random, acc: Account, mobile: bool = False):
    """A support agent (admin role): tickets, looking customers and orders up."""
    w = who.ctx.world
    customers = [a for a in w.accounts.values() if not a.admin]
    c = rng.choice(customers)
    x = rng.random()
    if x < 0.25:
        return who.get("/api/tickets?status=open")
    if x < 0.45:
        tickets = [t for a in customers for t in a.tickets] or [1]
        return who.get(f"/api/tickets/{rng.choice(tickets)}")
    if x < 0.65:
        return who.get(f"/admin/users/{c.uid}")
    if x < 0.80 and c.orders:
        return who.get(f"/api/orders/{rng.choice(c.orders)}")
    if x < 0.88:
        return who.get("/admin/dashboard")
    tickets = [t for a in customers for t in a.tickets] or [1]
    return who.req("PATCH", f"/api/tickets/{rng.choice(tickets)}", {"status": rng.choice(["pending", "solved"]),
                                                                    "reply": "y" * rng.randrange(40, 400)})


def merch_action(who: Who, rng: random.Random, acc: Account, mobile: bool = False):
    """A merchandiser (admin role) editing the catalogue."""
    w = who.ctx.world
    pid = w.product()
    x = rng.random()
    if x < 0.45:
        return who.get(f"/api/products/{pid}")
    if x < 0.70:
        return who.req("PATCH", f"/api/products/{pid}", {"price": round(rng.uniform(5, 300), 2),
                                                         "stock": rng.randrange(0, 500)})
    if x < 0.85:
        return who.get(f"/api/search?q=sku-{rng.randrange(1000, 9999)}")
    return who.get(f"/admin/catalog?page={rng.randrange(1, 40)}")


def worker(who: Who, acc: Account, rng: random.Random, until: float, action, median: float = 3.0,
           lo: float = 1.0, hi: float = 10.0, session_len=(15, 40)):
    """Staff at work: long sessions of one kind of task."""
    yield rng.uniform(0, 8)
    while who.ctx.now() < until:
        yield from login(who, acc, rng, typo_rate=0.02)
        for _ in range(rng.randrange(*session_len)):
            if who.ctx.now() >= until:
                return
            yield think(rng, median, lo=lo, hi=hi)
            yield action(who, rng, acc)
        who.client.end_session()
        yield rng.uniform(10, 30)


def integration(who: Who, acc: Account, rng: random.Random, until: float, period: tuple[float, float] = (2, 6)):
    """A partner's ERP syncing stock and orders with its API key: a steady cadence."""
    w = who.ctx.world
    page = rng.randrange(1, 50)
    yield rng.uniform(0, 5)
    while who.ctx.now() < until:
        x = rng.random()
        if x < 0.45:
            page = page % 80 + 1
            yield who.get(f"/api/products?page={page}&per_page=100&updated_since=2024-05-01T00:00:00Z")
        elif x < 0.80:
            yield who.req("PUT", f"/api/inventory/{w.product()}", {"stock": rng.randrange(0, 900), "warehouse": "w1"})
        else:
            yield who.get("/api/orders?status=new")
        yield rng.uniform(*period)


def until(ctx: Ctx, gen, deadline: float):
    """Runs a routine up to a deadline, cutting its last wait short: a user
    who changes behaviour at an onset does so at the onset, not at the end of
    whatever break it was taking."""
    value = None
    while True:
        try:
            item = gen.send(value)
        except StopIteration:
            return
        if isinstance(item, (int, float)) and ctx.now() + item >= deadline:
            gen.close()
            yield max(0.0, deadline - ctx.now())
            return
        value = yield item
