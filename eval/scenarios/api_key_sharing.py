"""API-key sharing: one partner key used at once from many places.

A partner's integration has a steady routine with its key from one server
in a US cloud. Then the key leaks (it is resold on a forum): from the
onset, 30 clients in 14 countries (home and hosting addresses, several
HTTP stacks) use it concurrently, each every 2-6 s, to read the catalogue
and orders. The owner's own integration keeps running alongside.
"""

import random

from lab import personas as P
from lab.client import Client
from lab.scenario import Scenario, Window
from lab.sched import Actor
from lab.world import DEVICES

COUNTRIES = ["BR", "IN", "VN", "ID", "RU", "TR", "UA", "NG", "DE", "FR", "PL", "IT", "ES", "US"]


class ApiKeySharing(Scenario):
    name = "api_key_sharing"
    kind = "attack"
    summary = "one partner API key used concurrently by 30 clients in 14 countries"
    clients = 30

    def warm(self, ctx, world, rng, w: Window):
        self.acc = world.account(orders=10, name="partner-9-feedsync")
        self.key = world.api_key(self.acc.name)
        place = world.place("US", "hosting", asn=16509)
        client = Client(f"key:{self.acc.name}", DEVICES["python_requests"], place, api_key=self.key)
        who = P.Who(ctx, client, f"{self.name}-owner", self.name, self.role_switch(w, "benign", "victim"))
        return [Actor(who.actor, P.integration(who, self.acc, random.Random(rng.getrandbits(64)), ctx.end))]

    def actors(self, ctx, world, rng, w: Window):
        actors = []
        for k in range(self.clients):
            country = COUNTRIES[k % len(COUNTRIES)]
            place = world.place(country, rng.choice(["home", "hosting"]))
            device = DEVICES[rng.choice(["python_requests", "go_http", "curl", "java_client"])]
            client = Client(f"key:{self.acc.name}", device, place, api_key=self.key)
            who = P.Who(ctx, client, f"{self.name}-leech{k}", self.name, "attack")
            actors.append(Actor(who.actor, self.leech(who, world, random.Random(rng.getrandbits(64)), w)))
        return actors

    def leech(self, who, world, rng, w):
        yield w.onset - who.ctx.now() + rng.uniform(0, 4)
        while who.ctx.now() < w.stop:
            x = rng.random()
            if x < 0.6:
                yield who.get(f"/api/products/{world.product()}")
            elif x < 0.85:
                yield who.get(f"/api/products?page={rng.randrange(1, 80)}&per_page=100")
            else:
                yield who.get("/api/orders?status=new")
            yield rng.uniform(2, 6)
