"""Slow scraping (enumeration) by a fresh identity.

A freshly registered account, from a residential address, walks
/api/products/{id} over sequential ids at about 2 requests a second: slow
enough to stay far under any per-identity ceiling, and steady as a machine.
"""

import random

from lab import personas as P
from lab.scenario import Scenario, Window
from lab.sched import Actor


class ScrapeSlow(Scenario):
    name = "scrape_slow"
    kind = "attack"
    summary = "fresh account walks sequential /api/products/{id} at ~2 req/s"

    def actors(self, ctx, world, rng, w: Window):
        acc = world.account()
        client = world.user_client(acc, "chrome_win", "PL")
        who = P.Who(ctx, client, f"{self.name}-scraper", self.name, "attack")
        return [Actor(who.actor, self.walk(who, acc, random.Random(rng.getrandbits(64)), w))]

    def walk(self, who, acc, rng, w):
        yield w.onset - who.ctx.now()
        pid = rng.randrange(1, 5000)
        while who.ctx.now() < w.stop:
            yield who.get(f"/api/products/{pid}")
            pid += 1
            yield rng.uniform(0.35, 0.65)
