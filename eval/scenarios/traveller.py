"""Benign: a traveller.

Two customers fly: each stops using the shop (the flight: 100 s, the lab's
compressed hours; eval/vigil.json sets geo.impossible_travel_minutes to 1
for that reason, see eval/README.md), lands, and carries on with the same
laptop from a hotel network abroad (DE -> ES, US -> JP), with their usual
routine, for the rest of the run. The onset is the first request from the
new country.
"""

import random

from lab import personas as P
from lab.scenario import Scenario, Window
from lab.sched import Actor

FLIGHT = 100.0


class Traveller(Scenario):
    name = "traveller"
    kind = "benign"
    long = True
    summary = "2 customers change country once after a (compressed) flight, then stay"

    def warm(self, ctx, world, rng, w: Window):
        actors = []
        for k, (home, away, device) in enumerate([("DE", "ES", "chrome_mac"), ("US", "JP", "safari_mac")]):
            acc = world.account(orders=rng.randrange(2, 8))
            client = world.user_client(acc, device, home)
            who = P.Who(ctx, client, f"{self.name}-{k}", self.name, "benign")
            actors.append(Actor(who.actor, self.life(who, acc, world, away, random.Random(rng.getrandbits(64)), w)))
        return actors

    def life(self, who, acc, world, away, rng, w):
        takeoff = w.onset - FLIGHT
        yield from P.until(who.ctx, P.shopper(who, acc, rng, takeoff), takeoff)
        who.client.end_session()
        yield w.onset - who.ctx.now()
        who.client.place = world.place(away, "home")
        yield from P.shopper(who, acc, rng, who.ctx.end, start_delay=0)
