"""Benign: users adopting a new feature gradually.

The shop launched wishlists. Three customers start using them: from the
onset, the share of their clicks that go to /api/wishlist (view, add) grows
linearly from 3% to 35% over the rest of the run; everything else about
them stays as it was.
"""

import random

from lab import personas as P
from lab.scenario import Scenario, Window
from lab.sched import Actor


class FeatureAdoption(Scenario):
    name = "feature_adoption"
    kind = "benign"
    long = True
    summary = "3 customers take up /api/wishlist, 3% -> 35% of their clicks over the run"

    def warm(self, ctx, world, rng, w: Window):
        actors = []
        for k, (device, country) in enumerate([("chrome_win", "NL"), ("app_ios", "DE"), ("firefox_linux", "FR")]):
            acc = world.account(orders=rng.randrange(1, 6))
            client = world.user_client(acc, device, country, kind="mobile" if device.startswith("app") else "home")
            who = P.Who(ctx, client, f"{self.name}-{k}", self.name, "benign")
            actors.append(Actor(who.actor, P.shopper(who, acc, random.Random(rng.getrandbits(64)), ctx.end,
                                                     mobile=device.startswith("app"), action=self.action(w))))
        return actors

    @staticmethod
    def action(w: Window):
        def act(who, rng, acc, mobile=False):
            now = who.ctx.now()
            share = 0.0 if now < w.onset else 0.03 + 0.32 * min(1.0, (now - w.onset) / max(1.0, w.stop - w.onset))
            if rng.random() < share:
                if rng.random() < 0.6:
                    return who.get("/api/wishlist")
                return who.req("POST", "/api/wishlist/items", {"product_id": who.ctx.world.product()})
            return P.shop_action(who, rng, acc, mobile)
        return act
