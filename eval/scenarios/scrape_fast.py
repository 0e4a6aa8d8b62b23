"""Fast scraping by a fresh identity.

A scraper nobody has seen before (no account: Vigil knows it by its client
address, a VPS at a hosting provider) copies the catalogue: it walks
/api/products/{id} in order from a random start, about 15 requests a second
(a few parallel workers of a scraping framework), with a browser's user
agent but its HTTP library's TLS fingerprint. Withdrawn ids answer 404.
"""

import random

from lab import personas as P
from lab.client import Client
from lab.scenario import Scenario, Window
from lab.sched import Actor
from lab.world import DEVICES, Device


class ScrapeFast(Scenario):
    name = "scrape_fast"
    kind = "attack"
    summary = "fresh client address walks /api/products/{id} in order at ~15 req/s"
    rate = 15.0
    workers = 4

    def client(self, world):
        place = world.place("US", "hosting", asn=14061)
        device = Device(DEVICES["chrome_win"].user_agent, DEVICES["python_requests"].ja4)
        return Client(f"ip:{place.ip}", device, place)

    def actors(self, ctx, world, rng, w: Window):
        client = self.client(world)
        start = rng.randrange(1, 4000)
        ids = iter(range(start, 10**9))
        actors = []
        for k in range(self.workers):
            who = P.Who(ctx, client, f"{self.name}-{k}", self.name, "attack")
            actors.append(Actor(who.actor, self.walk(who, ids, random.Random(rng.getrandbits(64)), w)))
        return actors

    def walk(self, who, ids, rng, w):
        yield w.onset - who.ctx.now() + rng.uniform(0, 0.2)
        period = self.workers / self.rate
        while who.ctx.now() < w.stop:
            yield who.get(f"/api/products/{next(ids)}")
            yield rng.uniform(0.6, 1.4) * period
