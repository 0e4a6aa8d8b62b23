"""Account takeover, without geography.

The same attack on a deployment (or a caller) with no country or ASN
headers at all: the victim is an ordinary business buyer, and the attacker,
logged in with her stolen password from another device and address, walks
other customers' records (/api/users/{id}: 403), her data exports and the
admin area (403), faster than she ever does. The victim keeps buying
alongside under the same identity. Neither side sends x-geo-country or
x-geo-asn.
"""

import random

from lab import personas as P
from lab.client import Client
from lab.scenario import Scenario, Window
from lab.sched import Actor
from lab.world import DEVICES


class AtoNoGeo(Scenario):
    name = "ato_nogeo"
    kind = "attack"
    summary = "account takeover without geo headers: other users' records, exports, admin; victim alongside"

    def warm(self, ctx, world, rng, w: Window):
        self.victim = world.account(orders=12)
        client = world.user_client(self.victim, "safari_mac", "FR", geo=False)
        who = P.Who(ctx, client, f"{self.name}-victim", self.name, self.role_switch(w, "benign", "victim"))
        return [Actor(who.actor, P.shopper(who, self.victim, random.Random(rng.getrandbits(64)), ctx.end,
                                           action=P.account_action))]

    def actors(self, ctx, world, rng, w: Window):
        place = world.place("RU", "home", geo=False)
        client = Client(f"user:{self.victim.name}", DEVICES["chrome_win"], place, user=self.victim.name)
        who = P.Who(ctx, client, f"{self.name}-attacker", self.name, "attack")
        return [Actor(who.actor, self.walk(who, world, random.Random(rng.getrandbits(64)), w))]

    def walk(self, who, world, rng, w):
        yield w.onset - who.ctx.now()
        yield from P.login(who, self.victim, rng, typo_rate=0)
        others = [a for a in world.accounts.values() if a.name != self.victim.name]
        while who.ctx.now() < w.stop:
            yield rng.uniform(0.25, 0.8)
            x = rng.random()
            if x < 0.45:
                yield who.get(f"/api/users/{rng.choice(others).uid}")
            elif x < 0.60:
                yield who.get(f"/api/users/{self.victim.uid}/payment-methods")
            elif x < 0.75:
                yield who.get(rng.choice(["/api/export?type=orders&format=csv", "/api/export?type=invoices&format=csv",
                                          "/api/export?type=addresses&format=json"]))
            else:
                yield who.get(rng.choice(["/admin/users", "/admin/api-keys", "/admin/settings", "/admin/dashboard"]))
