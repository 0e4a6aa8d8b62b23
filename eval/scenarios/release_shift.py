"""Benign: a traffic shift after a release.

Version 6 of the shop's app moves to a new API: twelve app users update
within a few seconds of each other at the onset (the release goes out
to them together) and from then on call /api/v2/... routes instead of the
old ones, with the new version in their user agent. Same people, same
phones, same places, same pace.
"""

import random

from lab import personas as P
from lab.client import Device
from lab.scenario import Scenario, Window
from lab.sched import Actor
from lab.world import DEVICES

V1_TO_V2 = [("/api/feed", "/api/v2/feed"), ("/api/products/", "/api/v2/catalog/items/"),
            ("/api/products?", "/api/v2/catalog?"), ("/api/search", "/api/v2/catalog/search"),
            ("/api/cart/items", "/api/v2/basket/lines"), ("/api/cart", "/api/v2/basket"),
            ("/api/notifications", "/api/v2/inbox"), ("/api/orders", "/api/v2/me/orders"),
            ("/api/login", "/api/v2/auth/session"), ("/api/logout", "/api/v2/auth/logout"),
            ("/api/categories", "/api/v2/catalog/categories"), ("/api/recommendations", "/api/v2/feed/for-you")]


def to_v2(path: str) -> str:
    for old, new in V1_TO_V2:
        if path.startswith(old):
            return new + path[len(old):]
    return path


class ReleaseShift(Scenario):
    name = "release_shift"
    kind = "benign"
    long = True
    summary = "12 app users move to /api/v2/... together after an app release"

    def warm(self, ctx, world, rng, w: Window):
        actors = []
        countries = ["DE", "DE", "FR", "GB", "US", "US", "NL", "ES", "IT", "PL", "BR", "DE"]
        for k, country in enumerate(countries):
            acc = world.account(orders=rng.randrange(0, 5))
            device = rng.choice(["app_ios", "app_android"])
            client = world.user_client(acc, device, country, kind="mobile")
            who = P.Who(ctx, client, f"{self.name}-{k}", self.name, "benign")
            switch = w.onset + rng.uniform(0, 6)
            actors.append(Actor(who.actor, self.life(who, acc, device, switch, random.Random(rng.getrandbits(64)))))
        return actors

    def life(self, who, acc, device, switch, rng):
        yield from P.until(who.ctx, P.shopper(who, acc, rng, switch, mobile=True), switch)
        old = DEVICES[device]
        who.client.device = Device(old.user_agent.replace("ShopApp/5.2.1", "ShopApp/6.0.0"), old.ja4)
        make = who.req

        def v2_req(method, path, body=None, user=None):
            return make(method, to_v2(path), body, user)
        who.req = v2_req  # every request of this user now goes to the new API
        who.get = lambda path: v2_req("GET", path)
        yield from P.shopper(who, acc, rng, who.ctx.end, mobile=True, start_delay=0)
