"""Benign: a page load that fans out 20 requests at once.

Three customers use the shop's dashboard page, which on every load fires 20
API calls at once (product tiles, cart, orders, account, notifications,
recommendations). They have always done so (it is how the page works):
every session of theirs starts with it, and in this slot each of them loads
the dashboard twice, a few seconds apart, between ordinary clicks.
"""

import random

from lab import personas as P
from lab.scenario import Scenario, Window
from lab.sched import Actor


def dashboard(who, acc, world, rng):
    paths = [f"/api/products/{world.product()}" for _ in range(12)]
    paths += ["/api/cart", "/api/orders?page=1", f"/api/users/{acc.uid}", "/api/notifications",
              "/api/recommendations", "/api/categories", "/api/products?page=1", "/api/search?q=new+arrivals"]
    return [who.get(p) for p in paths]


class PageFanout(Scenario):
    name = "page_fanout"
    kind = "benign"
    summary = "3 customers whose dashboard fires 20 calls at once, twice in the slot"

    def warm(self, ctx, world, rng, w: Window):
        actors = []
        for k, (device, country) in enumerate([("chrome_win", "DE"), ("safari_mac", "GB"), ("firefox_win", "US")]):
            acc = world.account(orders=rng.randrange(2, 8))
            client = world.user_client(acc, device, country)
            who = P.Who(ctx, client, f"{self.name}-{k}", self.name, "benign")
            actors.append(Actor(who.actor, self.life(who, acc, world, random.Random(rng.getrandbits(64)), w)))
        return actors

    def life(self, who, acc, world, rng, w):
        def sessions(until):
            yield rng.uniform(0, 10)
            while who.ctx.now() < until:
                yield from P.login(who, acc, rng)
                yield P.think(rng, 1.0, lo=0.3, hi=2)
                yield dashboard(who, acc, world, rng)
                for _ in range(rng.randrange(6, 16)):
                    yield P.think(rng)
                    yield P.shop_action(who, rng, acc)
                who.client.end_session()
                yield P.pause(rng)
        yield from P.until(who.ctx, sessions(w.onset), w.onset)
        # The slot: two dashboard loads, some clicks between, then life goes on.
        yield rng.uniform(0, 3)
        if who.client.session is None:
            yield from P.login(who, acc, rng, typo_rate=0)
        for _ in range(2):
            yield dashboard(who, acc, world, rng)
            for _ in range(rng.randrange(2, 4)):
                yield P.think(rng)
                yield P.shop_action(who, rng, acc)
        yield from sessions(who.ctx.end)
