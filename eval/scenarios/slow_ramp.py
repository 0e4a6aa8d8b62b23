"""A slow ramp: an attacker who trains its own profile.

An account that behaves like an ordinary shopper from the start of the run
(its preparation) begins, at the onset, to drift towards what it is after,
slowly enough to hope the profile follows: over the rest of the run the
share of its requests that enumerate other users (/api/users/{id}, mostly
403) and pull exports grows linearly from 0 to 90%, and its think time
shrinks from a person's (~3 s) to ~0.5 s. Every request after the onset
counts as an attack request, including the early ones that still look
benign: that is what a slow ramp is.
"""

import random

from lab import personas as P
from lab.scenario import Scenario, Window
from lab.sched import Actor


class SlowRamp(Scenario):
    name = "slow_ramp"
    kind = "attack"
    long = True
    summary = "shopper account drifts over minutes to user enumeration and exports, 6x faster"

    def warm(self, ctx, world, rng, w: Window):
        self.acc = world.account(orders=4)
        client = world.user_client(self.acc, "chrome_win", "GB")
        who = P.Who(ctx, client, f"{self.name}-attacker", self.name, self.role_switch(w, "prep", "attack"))
        return [Actor(who.actor, self.life(who, world, random.Random(rng.getrandbits(64)), w))]

    def life(self, who, world, rng, w):
        yield from P.until(who.ctx, P.shopper(who, self.acc, rng, w.onset), w.onset)
        if who.client.session is None:
            yield from P.login(who, self.acc, rng, typo_rate=0)
        others = [a for a in world.accounts.values() if a.name != self.acc.name]
        span = max(1.0, w.stop - w.onset)
        while who.ctx.now() < w.stop:
            p = min(1.0, (who.ctx.now() - w.onset) / span)
            yield P.think(rng, 3.0 * (1 - p) + 0.5 * p, lo=0.3)
            if rng.random() < 0.9 * p:
                if rng.random() < 0.8:
                    yield who.get(f"/api/users/{rng.choice(others).uid}")
                else:
                    yield who.get("/api/export?type=orders&format=csv")
            else:
                yield P.shop_action(who, rng, self.acc)
