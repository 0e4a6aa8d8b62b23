"""Account takeover, with geography.

The victim is a support agent (admin role) in Germany with an established
routine: tickets, customer look-ups, the admin dashboard. At the onset an
attacker who bought her password logs in from a new device in another
country (residential proxy in Vietnam) and walks what an admin account is
worth: user records, API keys, settings, the audit log, full exports, at
about 2 requests a second (a person clicking fast, or a script that pauses),
while the victim keeps working from Germany under the same identity.
"""

import random

from lab import personas as P
from lab.client import Client
from lab.scenario import Scenario, Window
from lab.sched import Actor
from lab.world import DEVICES


class AtoGeo(Scenario):
    name = "ato_geo"
    kind = "attack"
    summary = "account takeover from a new country, faster, on admin endpoints; victim active alongside"
    country, geo = "VN", True

    def warm(self, ctx, world, rng, w: Window):
        self.victim = world.account(admin=True)
        client = world.user_client(self.victim, "chrome_win", "DE", geo=self.geo)
        who = P.Who(ctx, client, f"{self.name}-victim", self.name, self.role_switch(w, "benign", "victim"))
        return [Actor(who.actor, P.worker(who, self.victim, random.Random(rng.getrandbits(64)), ctx.end,
                                          P.support_action, median=4.0))]

    def actors(self, ctx, world, rng, w: Window):
        place = world.place(self.country, "home", geo=self.geo)
        client = Client(f"user:{self.victim.name}", DEVICES["firefox_linux"], place, user=self.victim.name)
        who = P.Who(ctx, client, f"{self.name}-attacker", self.name, "attack")
        return [Actor(who.actor, self.walk(who, world, random.Random(rng.getrandbits(64)), w))]

    def walk(self, who, world, rng, w):
        yield w.onset - who.ctx.now()
        yield from P.login(who, self.victim, rng, typo_rate=0)
        customers = [a for a in world.accounts.values() if not a.admin]
        targets = ["/admin/users?page={p}", "/admin/users/{uid}", "/admin/users/{uid}", "/api/users/{uid}",
                   "/api/users/{uid}/payment-methods", "/admin/api-keys", "/admin/settings", "/admin/audit-log?page={p}",
                   "/api/export?type=users&format=csv", "/api/export?type=orders&format=csv"]
        page = 1
        while who.ctx.now() < w.stop:
            yield rng.uniform(0.25, 0.8)
            c = rng.choice(customers)
            path = rng.choice(targets).format(p=page, uid=c.uid)
            page += path.startswith("/admin/users?") or path.startswith("/admin/audit")
            yield who.get(path)
