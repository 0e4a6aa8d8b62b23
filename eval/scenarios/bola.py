"""Broken object-level authorisation (BOLA) probing by an established user.

A business buyer with a long, ordinary history of looking at her own orders
turns to /api/orders/{id} with other ids: she walks the ids around her own,
one after another, about 3 a second (an intercepting proxy's repeater),
from her usual device and place. Most answers are 403 (someone else's
order) or 404 (no such order); her own ids answer 200 when she passes them.
"""

import random

from lab import personas as P
from lab.scenario import Scenario, Window
from lab.sched import Actor


class Bola(Scenario):
    name = "bola"
    kind = "attack"
    summary = "established user walks /api/orders/{id} around her own ids (403/404), ~3 req/s"

    def warm(self, ctx, world, rng, w: Window):
        self.acc = world.account(orders=14)
        self.client = world.user_client(self.acc, "chrome_mac", "NL")
        # Her routine before the onset is her own; after it she is the attacker.
        who = P.Who(ctx, self.client, f"{self.name}-user", self.name, self.role_switch(w, "prep", "attack"))
        r = random.Random(rng.getrandbits(64))
        return [Actor(who.actor, self.life(who, world, r, w))]

    def life(self, who, world, rng, w):
        yield from P.until(who.ctx, P.shopper(who, self.acc, rng, w.onset, action=P.account_action), w.onset)
        if who.client.session is None:
            yield from P.login(who, self.acc, rng, typo_rate=0)
        oid = min(self.acc.orders) - 60
        while who.ctx.now() < w.stop:
            yield rng.uniform(0.2, 0.45)
            yield who.get(f"/api/orders/{oid}")
            oid += 1
