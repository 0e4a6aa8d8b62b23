"""A distributed tenfold burst on one route.

A botnet (about 150 residential addresses, no accounts) hammers search, the
shop's most expensive call, with ten times its usual volume: the lab
measures the route's rate over the minute before the onset and adds nine
times that, spread evenly over the bots, so each bot makes a request only
every several seconds: none of them looks busy on its own.
"""

import random

from lab import personas as P
from lab.client import Client
from lab.scenario import Scenario, Window
from lab.sched import Actor
from lab.world import BROWSERS, DEVICES

from .stuffing_many_ips import COUNTRIES

WORDS = ["iphone", "cheap", "gift", "sale", "tv", "laptop", "shoes", "watch", "ring", "bag", "promo", "deal"]


class DistributedBurst(Scenario):
    name = "distributed_burst"
    kind = "attack"
    summary = "~150 fresh addresses add 9x the usual volume of /api/search"
    bots = 150
    route = "/api/search"

    def actors(self, ctx, world, rng, w: Window):
        shared = {}
        actors = []
        for k in range(self.bots):
            place = world.place(rng.choice(COUNTRIES), "home")
            client = Client(f"ip:{place.ip}", DEVICES[rng.choice(BROWSERS)], place)
            who = P.Who(ctx, client, f"{self.name}-bot{k}", self.name, "attack")
            actors.append(Actor(who.actor, self.bot(who, shared, random.Random(rng.getrandbits(64)), w)))
        return actors

    def bot(self, who, shared, rng, w):
        yield w.onset - who.ctx.now()
        if "period" not in shared:  # the first bot measures the route's usual rate
            base = who.ctx.count(self.route, w.onset - 60, w.onset) / 60
            shared["base"] = base
            shared["period"] = self.bots / max(9 * base, 0.5)
        period = shared["period"]
        yield rng.uniform(0, period)
        while who.ctx.now() < w.stop:
            q = "+".join(rng.sample(WORDS, 2))
            yield who.get(f"{self.route}?q={q}&page={rng.randrange(1, 20)}")
            yield rng.uniform(0.7, 1.3) * period
