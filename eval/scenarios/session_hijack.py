"""Session hijacking (one of the lab's own).

An infostealer lifted a buyer's session cookie. The attacker replays that
very session (same cookie, so no login, the same identity) from another
device and ISP in the same country, at about one request a second, and
goes for what a session is worth: the account, its payment methods and
addresses, an email change, the order history and an export. Every answer
is 200: it is her own data. The victim keeps using the same session.
"""

import random

from lab import personas as P
from lab.client import Client
from lab.scenario import Scenario, Window
from lab.sched import Actor
from lab.world import DEVICES


class SessionHijack(Scenario):
    name = "session_hijack"
    kind = "attack"
    summary = "stolen session cookie replayed from a new device and ISP, same country; her own data"

    def warm(self, ctx, world, rng, w: Window):
        self.acc = world.account(orders=9)
        self.victim = world.user_client(self.acc, "chrome_win", "DE", kind="home")
        who = P.Who(ctx, self.victim, f"{self.name}-victim", self.name, self.role_switch(w, "benign", "victim"))
        return [Actor(who.actor, P.shopper(who, self.acc, random.Random(rng.getrandbits(64)), ctx.end,
                                           action=P.account_action))]

    def actors(self, ctx, world, rng, w: Window):
        place = world.place("DE", "mobile")
        client = Client(f"user:{self.acc.name}", DEVICES["chrome_mac"], place, user=self.acc.name)
        who = P.Who(ctx, client, f"{self.name}-attacker", self.name, "attack")
        return [Actor(who.actor, self.replay(who, random.Random(rng.getrandbits(64)), w))]

    def replay(self, who, rng, w):
        yield w.onset - who.ctx.now()
        uid = self.acc.uid
        steps = [("GET", f"/api/users/{uid}"), ("GET", f"/api/users/{uid}/payment-methods"),
                 ("GET", f"/api/users/{uid}/addresses"), ("GET", f"/api/users/{uid}/sessions"),
                 ("PATCH", f"/api/users/{uid}"), ("GET", "/api/orders?page=1"), ("GET", "/api/orders?page=2"),
                 ("GET", "/api/export?type=orders&format=csv"), ("GET", "/api/export?type=addresses&format=json")]
        steps += [("GET", f"/api/orders/{o}") for o in self.acc.orders]
        steps += [("GET", f"/api/invoices/{i}") for i in self.acc.invoices]
        while who.ctx.now() < w.stop:
            # The stolen cookie: whatever session the victim holds now.
            who.client.session = self.victim.session or who.client.session or "stolen"
            method, path = rng.choice(steps)
            body = {"email": "recovery-desk@protonmail.example"} if method == "PATCH" else None
            yield who.req(method, path, body)
            yield rng.uniform(0.6, 1.6)
